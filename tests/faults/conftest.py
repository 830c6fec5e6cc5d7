"""Collects one row per fault case and prints the matrix at the end of the session.

``make test-slow`` shows, for example::

    ========================= fault matrix =========================
    case                                runs kills faults total lost dups
    drop_after_final_dot                   2     0      2    30    0    2
    ...
    fault matrix: 17 cases, 0 lost, duplicates per kill: max 1 (10 kills), ...
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest


@dataclass
class CaseRow:
    case: str
    runs: int  # cxsmtp processes started (killed ones included)
    kills: int  # SIGKILLs that hit a running sender
    faults: int  # connections the server broke (drop, hang, 421): each may cost one duplicate
    total: int  # messages in the spool
    lost: int  # messages found nowhere (queue, deferred/, sent/, failed/, in flight)
    duplicates: int  # copies the server received beyond the first
    max_per_kill: int  # the most duplicates one kill caused (0 without kills)
    note: str = ""


RESULTS: list[CaseRow] = []


@pytest.fixture
def matrix(request: pytest.FixtureRequest) -> Callable[..., CaseRow]:
    """``matrix(runs=…, total=…, lost=…, duplicates=…)``: add this test's row."""

    def record(**figures: Any) -> CaseRow:
        figures.setdefault("kills", 0)
        figures.setdefault("faults", 0)
        figures.setdefault("max_per_kill", 0)
        case = request.node.name.removeprefix("test_")
        row = CaseRow(case=figures.pop("case", case), **figures)
        RESULTS.append(row)
        return row

    return record


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if not RESULTS:
        return
    write = terminalreporter.write_line
    terminalreporter.section("fault matrix")
    write(
        f"{'case':<52} {'runs':>4} {'kills':>5} {'faults':>6} {'total':>6} {'lost':>4} {'dups':>4}"
    )
    for r in RESULTS:
        write(
            f"{r.case[:52]:<52} {r.runs:>4} {r.kills:>5} {r.faults:>6} {r.total:>6} "
            f"{r.lost:>4} {r.duplicates:>4}" + (f"  {r.note}" if r.note else "")
        )
    line = summary_line(RESULTS)
    failed = [r for r in terminalreporter.stats.get("failed", []) if "tests/faults/" in r.nodeid]
    if failed:  # a case that failed before its row was added is not in the table
        line += f"; {len(failed)} case(s) FAILED"
    write(line)


def summary_line(rows: list[CaseRow]) -> str:
    kills = sum(r.kills for r in rows)
    faults = sum(r.faults for r in rows)
    per_kill = max((r.max_per_kill for r in rows if r.kills), default=0)
    per_fault = max(
        (r.duplicates / r.faults for r in rows if r.faults and not r.kills), default=0.0
    )
    return (
        f"fault matrix: {len(rows)} cases, {sum(r.lost for r in rows)} lost, "
        f"duplicates per kill: max {per_kill} ({kills} kills), "
        f"duplicates per broken connection: max {per_fault:g} ({faults} broken), "
        f"{sum(r.duplicates for r in rows)} duplicates in all"
    )
