"""Which spool a command uses when it names none.

The SPOOL argument, else ``CXSMTP_SPOOL``, else the ``spool`` setting
(``cxsmtp settings set spool /var/spool/cxsmtp``), else :class:`NoSpoolError` (exit 78).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from carerix_smtp.config.file import Config
from carerix_smtp.errors import NoSpoolError

SPOOL_ENV = "CXSMTP_SPOOL"
NO_SPOOL_MESSAGE = (
    "no spool given and none configured; name one (cxsmtp send SPOOL) or set it: "
    "cxsmtp settings set spool /var/spool/cxsmtp (or CXSMTP_SPOOL)"
)


def resolve_spool(given: Path | None, config: Config, env: Mapping[str, str]) -> Path:
    """The spool directory to use; raises NoSpoolError when nothing names one."""
    if given is not None and str(given):
        return Path(given).expanduser()
    from_env = env.get(SPOOL_ENV, "").strip()
    if from_env:
        return Path(from_env).expanduser()
    if config.settings.spool:
        return Path(config.settings.spool).expanduser()
    raise NoSpoolError(NO_SPOOL_MESSAGE)
