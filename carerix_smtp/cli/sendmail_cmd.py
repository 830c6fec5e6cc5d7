"""``cxsmtp sendmail`` / ``sendmail`` / ``mailq`` / ``cxsmtp-sendmail``: the
sendmail-compatible entry point (issue 13).

``main()`` is the ``cxsmtp-sendmail`` console script; cli/entry.py calls ``run`` before
Typer when argv[0] is ``sendmail`` or ``mailq`` or the command is ``sendmail``.  The
queue path imports neither typer nor rich nor the send machinery (applications call
sendmail once per message); errors go through cli/errors.py, imported when needed.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from carerix_smtp.config.file import Config
    from carerix_smtp.sendmail.options import SendmailOptions

USAGE = """\
Usage: cxsmtp sendmail [OPTIONS] [--] [RECIPIENT...]
       sendmail [OPTIONS] [RECIPIENT...]     (cxsmtp linked as sendmail)
       mailq                                 (cxsmtp linked as mailq: sendmail -bp)

Read a message on standard input and queue it in the default spool (setting
`spool` or CXSMTP_SPOOL), as sendmail(8) does.  With the setting
sendmail_mode = "send" a send run follows at once, within the limits.

Options:
  -t            recipients from To, Cc and Bcc, minus those named as arguments
  -f ADDR, -fADDR, -r ADDR
                envelope sender (MAIL FROM); -f '<>' for the null sender
  -F NAME       full name for the From field added when the message has none
  -i, -oi       a line with a single "." does not end the message
  -bm           read and queue a message (the default)
  -bp           list the queue (as `cxsmtp queue list`; mailq)
  -q            one send run on the spool (as `cxsmtp send`)
  -v            say what was queued
  --            end of options
Accepted and ignored: -B TYPE, -N DSN, -R RET, -X FILE, -O OPT, -L TAG, -V ENVID,
  -m, -n, -U, -oe*, -od*, -oQ*, -om, -oo, -oL*.  Any other option: exit 64.

Added when missing: From (-F, -f, else user@host), Date, Message-ID.  Bcc is
removed from the delivered copy.

Exit codes (sysexits): 0 queued, 64 bad option or no recipient, 65 bad message,
73/74/75 the spool cannot be written, 78 no spool configured or configuration error.

Install:  ln -s "$(command -v cxsmtp)" /usr/sbin/sendmail   (packagers: the
cxsmtp-sendmail console script is the same program)

Example:  printf 'Subject: hi\\n\\nhello\\n' | cxsmtp sendmail -f me@example.com you@example.org
"""


def main(argv: list[str] | None = None) -> None:
    """The ``cxsmtp-sendmail`` console script."""
    args = sys.argv[1:] if argv is None else argv
    code = run(args)
    if argv is None:  # the process's own command line: leave as cxsmtp does
        from carerix_smtp.cli.leave import exit_now

        exit_now(code)
    sys.exit(code)


def run_if_sendmail(argv: list[str]) -> None:
    """Run as sendmail and exit when cxsmtp is invoked as ``sendmail`` or ``mailq``
    (a link: argv[0] decides) or as ``cxsmtp sendmail …``; else return."""
    program = os.path.basename(argv[0]) if argv else ""
    if program in ("sendmail", "mailq"):
        sys.exit(run(argv[1:], list_only=program == "mailq"))
    if len(argv) > 1 and argv[1] == "sendmail":
        sys.exit(run(argv[2:]))


def run(args: list[str], *, list_only: bool = False) -> int:
    """sendmail with ``args`` (no program name); returns the exit code.  ``list_only``:
    invoked as ``mailq``."""
    from carerix_smtp.errors import CxsmtpError

    debug = "--debug" in args
    try:
        return _run(args, list_only)
    except CxsmtpError as exc:
        from carerix_smtp.cli.errors import report_error

        report_error(exc, debug)
        return int(exc.exit_code)
    except KeyboardInterrupt:
        return 130
    except Exception as exc:
        from carerix_smtp.cli.errors import report_unexpected

        return report_unexpected(exc, debug)


def _run(args: list[str], list_only: bool) -> int:
    if "--help" in args:
        print(USAGE, end="")
        return 0
    from carerix_smtp.config.file import load_config, resolve_config_path, resolve_state_dir
    from carerix_smtp.sendmail.options import parse_options

    opts = parse_options([a for a in args if a != "--debug"])
    if list_only:
        opts.mode = "list"
    env = os.environ
    config = load_config(resolve_config_path(None, env))
    if opts.mode == "list":
        return _list(config)
    if opts.mode == "run-queue":
        return _run_queue(config, resolve_state_dir(None, env))
    return _queue(opts, config, resolve_state_dir(None, env))


def _queue(opts: SendmailOptions, config: Config, state_dir: Path) -> int:
    from carerix_smtp.sendmail.run import queue_message

    data = sys.stdin.buffer.read()
    queued = queue_message(data, opts, config, os.environ, state_dir=state_dir)
    if opts.verbose:
        print(f"cxsmtp: queued {queued.path}", file=sys.stderr)
    if queued.send_error is not None:
        from carerix_smtp.cli.errors import warn

        warn(f"queued, but the send run did not happen: {queued.send_error}")
    elif queued.summary is not None and opts.verbose:
        _render(queued.summary, queued.path.parent)
    return 0


def _list(config: Config) -> int:
    from carerix_smtp.cli.queue_cmds import print_queue
    from carerix_smtp.config.spool_path import resolve_spool

    return print_queue(resolve_spool(None, config, os.environ), "pending", False)


def _run_queue(config: Config, state_dir: Path) -> int:
    from carerix_smtp.config.spool_path import resolve_spool
    from carerix_smtp.sendmail.run import send_run

    spool = resolve_spool(None, config, os.environ)
    summary = send_run(spool, config, state_dir)
    _render(summary, spool)
    return int(summary.exit_code)


def _render(summary: Any, spool: Path) -> None:
    from carerix_smtp.cli.spool_cmds import render_summary

    render_summary(summary, spool, json_out=False, quiet=False, terminal=sys.stdout.isatty())


def register(app: Any) -> None:
    """The ``sendmail`` command in the Typer app (for ``cxsmtp --help``; a call of
    ``cxsmtp sendmail …`` normally takes the fast path in cli/app.py)."""
    import typer

    def sendmail(ctx: typer.Context) -> None:
        """Queue a message from stdin like sendmail(8): -t -i -f ADDR -F NAME -bp -q.

        Run `cxsmtp sendmail --help` for every option and exit code.  Link it:
        ln -s "$(command -v cxsmtp)" /usr/sbin/sendmail

        Example:  printf 'Subject: hi\\n\\nhello\\n' | cxsmtp sendmail you@example.org
        """
        raise typer.Exit(run(list(ctx.args)))

    sendmail.__annotations__ = {"ctx": typer.Context, "return": None}  # resolved here, not lazily

    settings = {"ignore_unknown_options": True, "allow_extra_args": True, "help_option_names": []}
    app.command("sendmail", context_settings=settings, add_help_option=False)(sendmail)
