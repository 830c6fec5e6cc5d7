"""Shared helpers for the benchmarks: timing, medians, ratio lines."""

from __future__ import annotations

import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VENV_BIN = Path(sys.executable).parent


def cxsmtp() -> list[str]:
    script = VENV_BIN / "cxsmtp"
    return [str(script)] if script.exists() else [sys.executable, "-m", "carerix_smtp"]


def median_seconds(func: Callable[[], object], runs: int = 10) -> float:
    samples = []
    for _ in range(runs):
        start = time.perf_counter()
        func()
        samples.append(time.perf_counter() - start)
    return statistics.median(samples)


def run_quiet(argv: Sequence[str]) -> None:
    subprocess.run(argv, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def report(name: str, value: str, verdict: bool | None = None) -> None:
    mark = "" if verdict is None else ("  PASS" if verdict else "  FAIL")
    print(f"  {name:<48} {value}{mark}")
