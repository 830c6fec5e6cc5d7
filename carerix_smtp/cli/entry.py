"""The ``cxsmtp`` console script and ``python -m carerix_smtp``: as ``sendmail`` or
``mailq`` (argv[0]) or ``cxsmtp sendmail`` it runs cli/sendmail_cmd.py without
importing typer (the Typer app alone costs as much as ``cxsmtp --version``, and
applications call sendmail once per message); anything else is cli/app.py."""

from __future__ import annotations

import sys


def main() -> None:
    from carerix_smtp.cli.sendmail_cmd import run_if_sendmail

    run_if_sendmail(sys.argv)  # exits when it ran as sendmail
    from carerix_smtp.cli.app import main as app_main

    app_main()
