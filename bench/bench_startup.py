"""`cxsmtp --help` starts fast: heavy modules are imported lazily.

Reference, measured in the same run: `python -c pass` and `python -c "import typer"`
(the least any Typer CLI can cost), and `import typer, rich.console` (what a Typer CLI
that renders with rich costs).  Targets: none of the heavy modules (ssl, email, dns,
sqlite3, aiosmtpd, rich) is imported for --help, and --help is no slower than 1.5x
`import typer, rich` (the rest is Typer building the commands); median of HELP_RUNS
interleaved runs.

And what every cron run pays (issue 12): ``cxsmtp send EMPTY_SPOOL``, with a config
that names a server, at most 2x ``python -c "import typer, rich"``; both timed as
subprocesses, median of SEND_RUNS interleaved runs.

And what an application pays per message (issue 13): ``cxsmtp sendmail -t -i``
queuing one message, at most 1.5x ``cxsmtp --version``.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from _common import (
    add_server,
    cxsmtp,
    cxsmtp_env,
    free_port,
    interleaved,
    report,
    run_checked,
    run_quiet,
    scratch_dir,
    target,
)

HEAVY = ("ssl", "email", "dns", "sqlite3", "aiosmtpd", "rich", "keyring", "trustme")
SEND_RUNS = 7
HELP_RUNS = 10
SEND_MAX = 2.0  # x `python -c "import typer, rich"`
PROBE = (
    f"import sys, carerix_smtp.cli.app; print(' '.join(m for m in {HEAVY!r} if m in sys.modules))"
)


def timed_quiet(argv: list[str]) -> Callable[[], float]:
    def run() -> float:
        start = time.perf_counter()
        run_quiet(argv)
        return time.perf_counter() - start

    return run


def main() -> int:
    py = sys.executable
    # Interleaved: the machine's speed drifts within seconds here, and a block of ten
    # runs of one command after the other measured --help at 109 ms in one CI run and
    # 179 ms in the next, against a --version in between.
    figures = interleaved(
        HELP_RUNS,
        {
            "bare": timed_quiet([py, "-c", "pass"]),
            "typer": timed_quiet([py, "-c", "import typer"]),
            "typer_rich": timed_quiet([py, "-c", "import typer, rich.console"]),
            "help": timed_quiet([*cxsmtp(), "--help"]),
            "version": timed_quiet([*cxsmtp(), "--version"]),
        },
    )
    bare, typer_only, typer_rich = figures["bare"], figures["typer"], figures["typer_rich"]
    help_, version = figures["help"], figures["version"]
    print(f"startup (median of {HELP_RUNS} interleaved runs)")
    report("python -c pass", f"{bare * 1000:7.1f} ms")
    report("python -c 'import typer'", f"{typer_only * 1000:7.1f} ms")
    report("python -c 'import typer, rich.console'", f"{typer_rich * 1000:7.1f} ms")
    report("cxsmtp --version", f"{version * 1000:7.1f} ms")
    heavy = subprocess.run(
        [py, "-c", PROBE], capture_output=True, text=True, check=True
    ).stdout.split()
    light = target("heavy modules imported by the CLI", " ".join(heavy) or "none", not heavy)
    ratio = f"{help_ / typer_only:.2f}x import typer, {help_ / typer_rich:.2f}x import typer+rich"
    fast = help_ <= typer_rich * 1.5
    ok = target(
        "cxsmtp --help", f"{help_ * 1000:7.1f} ms = {ratio} (target <= 1.5x typer+rich)", fast
    )
    ok = light and ok
    ok = empty_send() and ok
    return 0 if sendmail_call() and ok else 1


def empty_send() -> bool:
    """`cxsmtp send` on an empty spool against `python -c "import typer, rich"`."""
    py = sys.executable
    with scratch_dir("cxsmtp-bench-startup-") as tmp:
        env = cxsmtp_env(Path(tmp))
        add_server(env, "cron", free_port())  # nothing listens: an empty spool connects to nothing
        empty = Path(tmp) / "spool"
        empty.mkdir()
        send = [*cxsmtp(), "send", str(empty)]
        run_checked(send, env)  # exits 0; also the first run, which creates the state dir

        def timed(argv: list[str], environment: dict[str, str] | None = None) -> float:
            start = time.perf_counter()
            subprocess.run(argv, env=environment, check=True, capture_output=True)
            return time.perf_counter() - start

        figures = interleaved(
            SEND_RUNS,
            {
                "typer": lambda: timed([py, "-c", "import typer, rich"]),
                "send": lambda: timed(send, env),
            },
        )
    reference, ours = figures["typer"], figures["send"]
    print(f"cron's cost (median of {SEND_RUNS} interleaved runs)")
    report("python -c 'import typer, rich'", f"{reference * 1000:7.1f} ms")
    return target(
        "cxsmtp send EMPTY_SPOOL",
        f"{ours * 1000:7.1f} ms = {ours / reference:.2f}x import typer, rich "
        f"(target <= {SEND_MAX}x)",
        ours <= reference * SEND_MAX,
    )


SENDMAIL_MAX = 1.5  # x `cxsmtp --version` (issue 13)
SENDMAIL_MESSAGE = b"From: app@example.com\nTo: you@example.org\nSubject: bench\n\nhello\n"


def sendmail_call() -> bool:
    """What an application pays per message: ``cxsmtp sendmail -t -i`` queuing one
    message (durably) in the default spool, against ``cxsmtp --version``."""
    with scratch_dir("cxsmtp-bench-sendmail-") as tmp:
        env = cxsmtp_env(Path(tmp))
        env["CXSMTP_SPOOL"] = str(Path(tmp) / "spool")
        (Path(tmp) / "spool").mkdir()
        call = [*cxsmtp(), "sendmail", "-t", "-i"]

        def timed(argv: list[str], data: bytes | None = None) -> float:
            start = time.perf_counter()
            subprocess.run(argv, env=env, input=data, check=True, capture_output=True)
            return time.perf_counter() - start

        timed(call, SENDMAIL_MESSAGE)  # warm-up; fails loudly if sendmail does
        figures = interleaved(
            SEND_RUNS,
            {
                "version": lambda: timed([*cxsmtp(), "--version"]),
                "sendmail": lambda: timed(call, SENDMAIL_MESSAGE),
            },
        )
    reference, ours = figures["version"], figures["sendmail"]
    print(f"an application's sendmail call (median of {SEND_RUNS} interleaved runs)")
    report("cxsmtp --version", f"{reference * 1000:7.1f} ms")
    return target(
        f"sendmail queue call <= {SENDMAIL_MAX}x cxsmtp --version",
        f"{ours * 1000:7.1f} ms = {ours / reference:.2f}x cxsmtp --version",
        ours <= reference * SENDMAIL_MAX,
    )


if __name__ == "__main__":
    sys.exit(main())
