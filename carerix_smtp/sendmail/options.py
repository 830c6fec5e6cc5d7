"""sendmail's command line, parsed by hand (no argparse: it cannot do ``-fADDR``,
``-oi`` or ``-B 8BITMIME`` the way sendmail does, and it costs start-up time).

Accepted: ``-t -i -oi -v -bm -bp -q``, ``-f ADDR``/``-fADDR``/``-r ADDR`` (envelope
sender, ``<>`` for the null one), ``-F NAME``.  Accepted and ignored (harmless for a
queue): ``-B TYPE -N DSN -R RET -X LOG -O OPT=VAL -L TAG -V ENVID``, ``-m -n -U``,
and the ``-o`` forms ``-oe?`` (error mode), ``-od?`` (delivery mode: we always queue),
``-oQ…`` (queue dir), ``-om``, ``-oo``, ``-oL…``.  Flags may be grouped (``-ti``);
``--`` ends the options; every other word is a recipient.  Anything else is a
UsageError naming the option (exit 64).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from carerix_smtp.errors import UsageError

Mode = Literal["deliver", "list", "run-queue"]

_FLAGS = frozenset("tiv")
_IGNORED_FLAGS = frozenset("mnU")  # -m me too, -n no aliasing, -U initial submission
_WITH_VALUE = frozenset("frFBNRXOLV")
_IGNORED_VALUES = frozenset("BNRXOLV")
# -o forms ignored: the first letters after "-o" (eXXX error mode, dX delivery mode,
# QDIR queue dir, m me too, o old headers, LN log level).
_IGNORED_O = ("e", "d", "Q", "m", "o", "L")


@dataclass
class SendmailOptions:
    mode: Mode = "deliver"
    extract: bool = False  # -t
    sender: str | None = None  # -f / -r; "" = the null reverse-path
    full_name: str | None = None  # -F
    dot_ends: bool = True  # False with -i / -oi
    verbose: bool = False
    recipients: list[str] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)


def parse_options(argv: list[str]) -> SendmailOptions:
    """``argv`` without the program name -> options; UsageError naming a bad option."""
    opts = SendmailOptions()
    i = 0
    while i < len(argv):
        arg = argv[i]
        i += 1
        if arg == "--":
            opts.recipients.extend(a for a in argv[i:] if a)
            break
        if not arg.startswith("-") or arg == "-":
            if arg.strip():
                opts.recipients.extend(_split_recipients(arg))
            continue
        i = _option(opts, arg, argv, i)
    return opts


def _split_recipients(arg: str) -> list[str]:
    """sendmail accepts "a@x, b@y" as one argument."""
    return [part.strip() for part in arg.split(",") if part.strip()]


def _option(opts: SendmailOptions, arg: str, argv: list[str], i: int) -> int:
    """One option word (a group like ``-ti`` too); returns the index of the next word."""
    letter = arg[1]
    if letter == "o":
        _o_option(opts, arg)
        return i
    if letter == "b":
        modes: dict[str, Mode] = {"-bm": "deliver", "-bp": "list"}
        if arg not in modes:
            raise _unknown(arg)
        opts.mode = modes[arg]
        return i
    if letter == "q":
        if arg != "-q":
            raise _unknown(arg, " (only -q: a single send run; schedule runs with cron)")
        opts.mode = "run-queue"
        return i
    for pos in range(1, len(arg)):
        letter = arg[pos]
        if letter in _FLAGS:
            _flag(opts, letter)
        elif letter in _IGNORED_FLAGS:
            opts.ignored.append(f"-{letter}")
        elif letter in _WITH_VALUE:
            value = arg[pos + 1 :]
            if not value:
                if i >= len(argv):
                    raise UsageError(f"sendmail: option -{letter} needs a value")
                value, i = argv[i], i + 1
            _valued(opts, letter, value)
            return i
        else:
            raise _unknown(arg if pos == 1 else f"-{letter} (in {arg})")
    return i


def _flag(opts: SendmailOptions, letter: str) -> None:
    if letter == "t":
        opts.extract = True
    elif letter == "i":
        opts.dot_ends = False
    else:
        opts.verbose = True


def _valued(opts: SendmailOptions, letter: str, value: str) -> None:
    if letter in _IGNORED_VALUES:
        opts.ignored.append(f"-{letter} {value}")
    elif letter == "F":
        opts.full_name = value
    else:  # -f, -r
        value = value.strip()
        if value in ("<>", ""):
            opts.sender = ""
        else:
            opts.sender = value[1:-1] if value.startswith("<") and value.endswith(">") else value


def _o_option(opts: SendmailOptions, arg: str) -> None:
    rest = arg[2:]
    if rest == "i":
        opts.dot_ends = False
    elif rest.startswith(_IGNORED_O):
        opts.ignored.append(arg)
    else:
        raise _unknown(arg)


def _unknown(arg: str, more: str = "") -> UsageError:
    return UsageError(
        f"sendmail: unknown option {arg}{more}; accepted: -t -i -oi -f ADDR -r ADDR -F NAME "
        "-bm -bp -q -v (ignored: -B -N -R -X -O -L -V -m -n -U -oe* -od* -oQ* -om -oo -oL*)"
    )
