"""What ``cxsmtp test`` returns to the CLI: one ``PhaseResult`` per phase in a
``ProbeReport``, and the ``ProbeOptions`` a probe runs with."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

PHASE_SIZE = "size"
PHASE_SPF = "spf"
PHASE_DKIM = "dkim"  # issue 15
PHASE_DMARC = "dmarc"

DEFAULT_TIMEOUT = 30.0  # per phase, like swaks; `--timeout` changes it

OK, FAILED, SKIPPED = "ok", "failed", "skipped"


@dataclass
class PhaseResult:
    name: str
    status: str  # ok | failed | skipped
    ms: float | None = None
    detail: dict[str, Any] = field(default_factory=dict)
    summary: str = ""  # the facts on one line, for humans
    error: str | None = None
    hint: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "status": self.status,
            "ms": None if self.ms is None else round(self.ms, 1),
            "detail": self.detail,
            "error": self.error,
            "hint": self.hint,
        }


@dataclass
class ProbeReport:
    server: str
    host: str
    port: int
    phases: list[PhaseResult] = field(default_factory=list)
    hint: str | None = None
    error: str | None = None
    exit_code: int = 0
    attempts: int = 1

    @property
    def passed(self) -> bool:
        return self.exit_code == 0

    @property
    def failed_phase(self) -> PhaseResult | None:
        return next((p for p in self.phases if p.status == FAILED), None)

    def to_dict(self) -> dict[str, Any]:
        return {
            "server": self.server,
            "host": self.host,
            "port": self.port,
            "ok": self.passed,
            "passed": self.passed,
            "exit_code": self.exit_code,
            "error": self.error,
            "hint": self.hint,
            "attempts": self.attempts,
            "phases": [p.to_dict() for p in self.phases],
        }


@dataclass
class ProbeOptions:
    to: str | None = None
    mail_from: str | None = None
    timeout: float | None = DEFAULT_TIMEOUT
    spool: Path | None = None
    local_hostname: str | None = None
