"""The doctor's lines (:class:`Check`) and the exit code they add up to."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from carerix_smtp.errors import ExitCode

Status = Literal["ok", "warn", "fail"]


@dataclass(frozen=True)
class Check:
    """One line: ``ok``/``warn``/``fail``, what was checked, what was found.

    ``exit_code`` is what a ``fail`` line makes the command exit with (warnings
    never change the exit code).
    """

    status: Status
    name: str
    detail: str
    exit_code: ExitCode = ExitCode.OK

    def to_json(self) -> dict[str, Any]:
        return {"status": self.status, "name": self.name, "detail": self.detail}


def ok(name: str, detail: str) -> Check:
    return Check("ok", name, detail)


def warn(name: str, detail: str) -> Check:
    return Check("warn", name, detail)


def fail(name: str, detail: str, exit_code: ExitCode) -> Check:
    return Check("fail", name, detail, exit_code)


@dataclass
class DoctorReport:
    checks: list[Check] = field(default_factory=list)
    repaired: bool = False  # the ledger was moved aside and rebuilt

    @property
    def exit_code(self) -> ExitCode:
        """The first failing line decides (config and servers come first, then the
        state dir and ledger, then the spools); 0 when nothing failed."""
        for check in self.checks:
            if check.status == "fail":
                return check.exit_code
        return ExitCode.OK

    def to_json(self) -> list[dict[str, Any]]:
        return [check.to_json() for check in self.checks]
