"""What every command gets from the global options (``ctx.obj``)."""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from rich.console import Console

    from carerix_smtp.config.file import Config


@dataclass
class CliContext:
    config_path: Path
    state_dir: Path
    debug: bool = False
    env: Mapping[str, str] = field(default_factory=lambda: os.environ)

    def load_config(self) -> Config:
        from carerix_smtp.config.file import load_config

        return load_config(self.config_path)

    @cached_property
    def console(self) -> Console:
        from rich.console import Console

        return Console(highlight=False, soft_wrap=True)

    @cached_property
    def err_console(self) -> Console:
        from rich.console import Console

        return Console(stderr=True, highlight=False, soft_wrap=True)

    @property
    def stdout_is_terminal(self) -> bool:
        return sys.stdout.isatty()


def get_context(ctx: object) -> CliContext:
    """``ctx.obj`` with a type; works for the root context and subcommands."""
    obj = getattr(ctx, "obj", None)
    if not isinstance(obj, CliContext):  # pragma: no cover - the callback always sets it
        raise RuntimeError("cxsmtp CLI context missing")
    return obj
