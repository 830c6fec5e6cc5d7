"""The ``cxsmtp`` console script and ``python -m carerix_smtp``: as ``sendmail`` or
``mailq`` (argv[0]) or ``cxsmtp sendmail`` it runs cli/sendmail_cmd.py without
importing typer (the Typer app alone costs as much as ``cxsmtp --version``, and
applications call sendmail once per message); anything else is cli/app.py.

Both end in :func:`exit_now`: once the command is done, the process leaves
without the interpreter's teardown of every module and object (20-40 ms after a
send run, paid by every cron run and every message handed to sendmail).
"""

from __future__ import annotations

import atexit
import os
import sys
import threading


def main() -> None:
    try:
        from carerix_smtp.cli.sendmail_cmd import run_if_sendmail

        run_if_sendmail(sys.argv)  # exits when it ran as sendmail
        from carerix_smtp.cli.app import main as app_main

        app_main()
    except SystemExit as exc:
        exit_now(exc.code)
        raise
    exit_now(0)


def exit_now(code: object) -> None:
    """End the process with ``code`` (a SystemExit's) after what a normal exit does
    that matters -- the atexit handlers (logging's flush among them) and flushing
    stdout and stderr -- but without tearing down modules and objects one by one.
    Returns (the caller exits normally) when another non-daemon thread still runs,
    which a normal exit would wait for, or when ``code`` is not a number."""
    if code is None:
        code = 0
    if not isinstance(code, int):
        return  # SystemExit("message"): the interpreter prints it
    main_thread = threading.main_thread()
    if any(t is not main_thread and not t.daemon and t.is_alive() for t in threading.enumerate()):
        return
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            if stream is not None:
                stream.flush()
        except (OSError, ValueError):
            code = code or 120  # as the interpreter does when stdout cannot be flushed
    os._exit(code & 0xFF)
