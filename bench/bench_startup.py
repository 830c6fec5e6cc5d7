"""`cxsmtp --help` starts fast: heavy modules are imported lazily.

Reference, measured in the same run: `python -c pass` and `python -c "import typer"`
(the least any Typer CLI can cost), and `import typer, rich.console` (what a Typer CLI
that renders with rich costs).  Targets: none of the heavy modules (ssl, email, dns,
sqlite3, aiosmtpd, rich) is imported for --help, and --help is no slower than 1.5x
`import typer, rich` (the rest is Typer building the commands).
"""

from __future__ import annotations

import subprocess
import sys

from _common import cxsmtp, median_seconds, report, run_quiet

HEAVY = ("ssl", "email", "dns", "sqlite3", "aiosmtpd", "rich", "keyring", "trustme")
PROBE = (
    f"import sys, carerix_smtp.cli.app; print(' '.join(m for m in {HEAVY!r} if m in sys.modules))"
)


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
    heavy = subprocess.run(
        [py, "-c", PROBE], capture_output=True, text=True, check=True
    ).stdout.split()
    report("heavy modules imported by the CLI", " ".join(heavy) or "none", not heavy)
    ok = help_ <= typer_rich * 1.5 and not heavy
    ratio = f"{help_ / typer_only:.2f}x import typer, {help_ / typer_rich:.2f}x import typer+rich"
    report("cxsmtp --help", f"{help_ * 1000:7.1f} ms = {ratio}", ok)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
