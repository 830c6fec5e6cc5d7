"""`cxsmtp --help` starts fast: heavy modules are imported lazily.

Reference, measured in the same run: `python -c pass` and `python -c "import typer"`
(the least any Typer CLI can cost), and `import typer, rich.console` (what a Typer CLI
that renders with rich costs).  Target: --help no slower than 1.2x `import typer, rich`.
"""

from __future__ import annotations

import sys

from _common import cxsmtp, median_seconds, report, run_quiet


def main() -> int:
    py = sys.executable
    bare = median_seconds(lambda: run_quiet([py, "-c", "pass"]))
    typer_only = median_seconds(lambda: run_quiet([py, "-c", "import typer"]))
    typer_rich = median_seconds(lambda: run_quiet([py, "-c", "import typer, rich.console"]))
    help_ = median_seconds(lambda: run_quiet([*cxsmtp(), "--help"]))
    version = median_seconds(lambda: run_quiet([*cxsmtp(), "--version"]))
    print("startup (median of 10 runs)")
    report("python -c pass", f"{bare * 1000:7.1f} ms")
    report("python -c 'import typer'", f"{typer_only * 1000:7.1f} ms")
    report("python -c 'import typer, rich.console'", f"{typer_rich * 1000:7.1f} ms")
    report("cxsmtp --version", f"{version * 1000:7.1f} ms")
    ok = help_ <= typer_rich * 1.2
    ratio = f"{help_ / typer_only:.2f}x import typer, {help_ / typer_rich:.2f}x import typer+rich"
    report("cxsmtp --help", f"{help_ * 1000:7.1f} ms = {ratio}", ok)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
