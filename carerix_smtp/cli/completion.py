"""Shell completion of server names (``cxsmtp server show <TAB>``).

The shell runs ``cxsmtp`` for every <TAB>, so this reads only the configuration's
``[servers]`` table, without validating the file or touching the keyring, and it
never fails: a missing or broken config completes nothing (the command itself
reports what is wrong when it runs).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib


def server_names(config_path: Path) -> list[str]:
    """The server names in ``config_path``, sorted; [] when it cannot be read."""
    try:
        data = tomllib.loads(config_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError):
        return []
    servers = data.get("servers")
    return sorted(str(name) for name in servers) if isinstance(servers, dict) else []


def _config_path(ctx: Any) -> Path:
    """--config (given before or after the command), else CXSMTP_CONFIG, else the
    default; the root context holds what was parsed so far."""
    from carerix_smtp.config.file import resolve_config_path

    root = ctx.find_root() if ctx is not None else None
    explicit = (getattr(root, "params", None) or {}).get("config")
    return resolve_config_path(explicit)


def complete_server_name(ctx: Any, incomplete: str) -> list[str]:
    """Autocompletion for NAME arguments and ``--server``: the configured names."""
    try:
        path = _config_path(ctx)
    except Exception:  # completion must not print a traceback into the shell
        return []
    return [name for name in server_names(path) if name.startswith(incomplete)]
