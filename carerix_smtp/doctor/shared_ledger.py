"""The shared rate ledger (PostgreSQL, issue 16): is it reachable, is its schema one
this cxsmtp knows, and do this host's clock and the database's agree.

With a shared ledger the state dir's SQLite file is not used, so it is neither
checked nor repaired; a shared ledger is never rebuilt by the doctor (the other
hosts' sends are in it, not in this host's spools).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from carerix_smtp.config.file import Settings
from carerix_smtp.doctor.report import Check, fail, ok, warn
from carerix_smtp.errors import CxsmtpError


def shared_ledger_checks(
    settings: Settings | None, state_dir: Path, env: Mapping[str, str]
) -> list[Check] | None:
    """The ledger's lines when a shared ledger is configured; None for SQLite."""
    from carerix_smtp.limits.open import SKEW_WARNING, ledger_choice, open_ledger

    settings = settings or Settings()
    try:
        choice = ledger_choice(settings, env)
    except CxsmtpError as exc:
        return [fail("ledger", str(exc), exc.exit_code)]
    if not choice.shared:
        return None
    try:
        store = open_ledger(settings, state_dir, env)
        assert store is not None
        try:
            host, database = store.clock_skew()  # type: ignore[attr-defined]
        finally:
            store.close()
    except CxsmtpError as exc:
        return [fail("ledger", str(exc), exc.exit_code)]
    lines = [ok("ledger", f"{choice.shown} reachable (from {choice.source})")]
    skew = host - database
    if abs(skew) > SKEW_WARNING:
        lines.append(
            warn(
                "ledger clock",
                f"this host's clock differs from the database's by {skew:+.1f} s: "
                "hosts sharing the ledger count the windows unevenly; synchronise them (NTP)",
            )
        )
    return lines
