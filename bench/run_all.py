"""`make bench`: run every bench/bench_*.py, print its report, fail if any fails."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def main() -> int:
    only = sys.argv[1:]
    failed = []
    for script in sorted(HERE.glob("bench_*.py")):
        if only and script.stem not in only:
            continue
        print(f"== {script.stem}", flush=True)
        start = time.perf_counter()
        result = subprocess.run([sys.executable, str(script)], cwd=HERE, check=False)
        print(f"   ({time.perf_counter() - start:.1f} s, exit {result.returncode})\n", flush=True)
        if result.returncode != 0:
            failed.append(script.stem)
    if failed:
        print(f"FAILED: {', '.join(failed)}")
        return 1
    print("all benchmarks passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
