"""The fault scripts at run time: which fail/drop/hang rule fires at a phase, with
the counters behind ``after_n`` and ``times``.

Faults (``fail``, ``drop``, ``hang``)
    Phases: ``connect`` (the greeting), ``ehlo`` (EHLO/HELO), ``mail``, ``rcpt``,
    ``data`` (the DATA command, instead of 354), ``eod`` (end of data, after the
    final ".").  ``after_n`` makes a rule fire only once the sink has accepted N
    messages (counted over the sink's life, all connections); ``times`` limits
    how often it fires.  A message that meets a fault at ``eod`` is not stored.
    Drop rules are checked first, then hang rules, then fail rules; the first
    that applies wins.  A ``pattern`` (``fnmatch``, case-insensitive) restricts
    a ``mail`` or ``rcpt`` rule to matching addresses.  CLI syntax, see
    :func:`carerix_smtp.sink.config.parse_fail_rule` and
    :func:`carerix_smtp.sink.config.parse_phase_rule`::

        eod:451               every message refused 451 4.3.0 at end of data
        rcpt:550:pattern=*@bad.example
        mail:421:after=3      421 (and close) once 3 messages were accepted
        eod:451:times=1       only the first message is deferred
        drop eod:3            close without a reply, from the 4th message on
        hang data             never answer DATA (client timeout tests)
"""

from __future__ import annotations

import fnmatch
import logging
from collections.abc import Sequence

from carerix_smtp.sink.config import FailRule, PhaseRule, SinkConfig

log = logging.getLogger(__name__)

DROP = "\x00cxsmtp-drop"  # returned by hooks instead of a reply; handled in push()
HANG = "\x00cxsmtp-hang"


class FaultScript:
    """The rules of one sink and how often each fired; used from the loop thread only."""

    def __init__(self, config: SinkConfig) -> None:
        self.config = config
        # Loop-thread state: fault counters and messages accepted (for after_n).
        self.accepted = 0
        self.fired: dict[tuple[str, int], int] = {}

    def fault(self, phase: str, address: str | None = None) -> str | None:
        """The scripted reply (or drop/hang marker) for ``phase``, or None."""
        config = self.config
        kinds: tuple[tuple[str, Sequence[FailRule | PhaseRule]], ...] = (
            ("drop", config.drop),
            ("hang", config.hang),
            ("fail", config.fail),
        )
        for kind, rules in kinds:
            for index, rule in enumerate(rules):
                if rule.phase != phase or self.accepted < rule.after_n:
                    continue
                if isinstance(rule, FailRule) and not _matches(rule.pattern, address):
                    continue
                key = (kind, index)
                if rule.times is not None and self.fired.get(key, 0) >= rule.times:
                    continue
                self.fired[key] = self.fired.get(key, 0) + 1
                log.debug("sink: scripted %s at %s", kind, phase)
                if kind == "drop":
                    return DROP
                if kind == "hang":
                    return HANG
                assert isinstance(rule, FailRule)
                return rule.reply
        return None


def _matches(pattern: str | None, address: str | None) -> bool:
    """Case-insensitive fnmatch; a rule without a pattern matches everything."""
    if pattern is None:
        return True
    return address is not None and fnmatch.fnmatchcase(address.lower(), pattern.lower())
