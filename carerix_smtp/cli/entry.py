"""The ``cxsmtp`` console script and ``python -m carerix_smtp``: as ``sendmail`` or
``mailq`` (argv[0]) or ``cxsmtp sendmail`` it runs cli/sendmail_cmd.py without
importing typer (the Typer app alone costs as much as ``cxsmtp --version``, and
applications call sendmail once per message); anything else is cli/app.py.

Both end in cli/leave.exit_now: once the command is done, the process leaves
without the interpreter's teardown of every module and object.
"""

from __future__ import annotations

import sys

from carerix_smtp.cli.leave import exit_now


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
