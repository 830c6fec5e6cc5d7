"""`make bench`: run every bench/bench_*.py, then list each target with its verdict.

Each script prints its own report and records every target it checks (name, figure,
PASS/FAIL/SKIP; INFO for a figure that explains one, ``_common.noted``) through
``_common.target`` in the file named by CXSMTP_BENCH_RESULTS.
The summary at the end lists them all; the exit status is 1 when any target was
missed or any script failed without saying which target (a crash, a timeout).
``python bench/run_all.py bench_spool bench_startup`` runs only those scripts.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import RESULTS_ENV

HERE = Path(__file__).resolve().parent


def run_scripts(only: list[str], results: Path) -> dict[str, int]:
    """Exit status per script, in the order run."""
    env = {**os.environ, RESULTS_ENV: str(results)}
    statuses = {}
    for script in sorted(HERE.glob("bench_*.py")):
        if only and script.stem not in only:
            continue
        print(f"== {script.stem}", flush=True)
        start = time.perf_counter()
        result = subprocess.run([sys.executable, str(script)], cwd=HERE, env=env, check=False)
        elapsed = time.perf_counter() - start
        print(f"   ({elapsed:.1f} s, exit {result.returncode})\n", flush=True)
        statuses[script.stem] = result.returncode
    return statuses


def summary(statuses: dict[str, int], results: Path) -> bool:
    """Print one line per target; True when nothing was missed."""
    entries = [json.loads(line) for line in results.read_text().splitlines() if line.strip()]
    ok = True
    print("summary (each target, measured against its reference in the same run):")
    for script, status in statuses.items():
        mine = [entry for entry in entries if entry["script"] == script]
        for entry in mine:
            ok = ok and entry["verdict"] != "FAIL"
            print(f"  {entry['verdict']:<4}  {script}: {entry['target']}: {entry['value'].strip()}")
        if status != 0 and not any(entry["verdict"] == "FAIL" for entry in mine):
            ok = False  # failed without naming a target (a crash, an error)
            print(f"  FAIL  {script}: exited {status} (see its output above)")
        elif not mine:
            print(f"  PASS  {script}: exit 0 (no target of its own)")
    return ok


def main() -> int:
    only = sys.argv[1:]
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="cxsmtp-bench-results-") as tmp:
        results = Path(tmp) / "results.jsonl"
        results.touch()
        statuses = run_scripts(only, results)
        ok = summary(statuses, results) and all(status == 0 for status in statuses.values())
    print(
        f"\n{'all targets met' if ok else 'FAILED: a target was missed'} "
        f"({time.perf_counter() - start:.0f} s in all)"
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
