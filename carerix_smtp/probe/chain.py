"""``cxsmtp test NAME --all`` (issue 14): the entry and its fallback relays, in the
order a send run would try them (the entry's own list; a fallback's fallbacks are
not followed, as in a send run).

The exit code is 0 only when every server of the chain passed; otherwise it is
the exit code of the first one that failed, in order -- the primary's when it
failed.  A broken fallback is worth an alarm even while the primary works: it
is found before the day it is needed.  ``usable`` says which server a send run
would use now (the first that passed), or None.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from carerix_smtp.probe.probe import ProbeRequest, probe_server

if TYPE_CHECKING:
    from carerix_smtp.config.file import Config
    from carerix_smtp.probe.report import ProbeReport


@dataclass
class ChainReport:
    """The reports of an entry and its fallbacks, in order."""

    server: str
    reports: list[ProbeReport] = field(default_factory=list)

    @property
    def exit_code(self) -> int:
        return next((r.exit_code for r in self.reports if not r.passed), 0)

    @property
    def usable(self) -> str | None:
        return next((r.server for r in self.reports if r.passed), None)

    def to_dict(self) -> dict[str, Any]:
        return {
            "server": self.server,
            "passed": self.exit_code == 0,
            "exit_code": self.exit_code,
            "usable": self.usable,
            "servers": [r.to_dict() for r in self.reports],
        }


def probe_chain(
    request: ProbeRequest,
    load_config: Callable[[], Config],
    env: Mapping[str, str],
    *,
    on_retry: Callable[[ProbeReport, float], None] | None = None,
    on_report: Callable[[ProbeReport], None] | None = None,
) -> ChainReport:
    """Probe ``request``'s entry, then each of its fallbacks (``on_report`` after each)."""
    config = load_config()
    entry = config.server(request.name) if request.name else config.default()
    chain = ChainReport(entry.name)
    for name in [entry.name, *entry.fallback]:
        one = dataclasses.replace(request, name=name)
        report = probe_server(one, lambda: config, env, on_retry=on_retry)
        chain.reports.append(report)
        if on_report is not None:
            on_report(report)
    return chain
