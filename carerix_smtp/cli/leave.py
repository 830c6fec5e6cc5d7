"""How the console scripts end (cli/entry.py, ``cxsmtp-sendmail``): once the command
is done, the process leaves without the interpreter's teardown of every module and
object -- 20-40 ms after a send run, paid by every cron run and by every message an
application hands to sendmail."""

from __future__ import annotations

import atexit
import os
import sys
import threading


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
