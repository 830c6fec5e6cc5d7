"""Retention of sent mail (setting ``retain_sent``, ``queue purge --older-than``):
sent/ grew without bound before issue 13.  Call under the spool lock.

What goes, when older than the cutoff (now - retain_sent):

- ``sent/NAME.eml`` by its mtime (the time it was queued, or last deferred: the
  spool keeps that time when the message moves to sent/);
- earlier versions' ``sent/NAME.eml.json`` records, by their mtime;
- the day files of sent records, ``sent/records-YYYY-MM-DD.jsonl``, whole, when
  the whole UTC day lies before the cutoff (so with ``retain_sent = 0`` today's
  records stay until the day is over).

Bounded work during ``send`` runs: at most RUN_LIMIT removals per run, and the
scan of sent/ at most once per SCAN_INTERVAL (the stamp ``.cxsmtp/retention``
says when the last complete one was): a cron run every 5 minutes does not list a
300,000-file sent/ every time.  A run that hit the limit leaves the stamp alone, so
the next one goes on.  ``queue purge`` has no limit.
"""

from __future__ import annotations

import calendar
import logging
import os
import time
from dataclasses import dataclass

from carerix_smtp.spool.layout import RECORD_SUFFIX, STATE_DIR, SUFFIX, SpoolLayout, storage
from carerix_smtp.spool.records import is_day_file

log = logging.getLogger(__name__)

RUN_LIMIT = 10_000  # removals per send run (about 0.1-0.2 s of unlinks)
SCAN_INTERVAL = 3600.0  # a send run scans sent/ at most once an hour
STAMP = "retention"  # .cxsmtp/retention: its mtime is the last complete scan


@dataclass
class PurgeReport:
    messages: int = 0
    records: int = 0  # legacy NAME.eml.json files and whole day files
    complete: bool = True  # False: the limit stopped it; the rest goes next time

    def to_json(self) -> dict[str, object]:
        return {"messages": self.messages, "records": self.records, "complete": self.complete}


def purge_sent(layout: SpoolLayout, cutoff: float, *, limit: int | None = None) -> PurgeReport:
    """Remove what sent/ holds from before ``cutoff`` (see the module docstring), at
    most ``limit`` files."""
    report = PurgeReport()
    for entry in layout.scandir("sent"):
        if limit is not None and report.messages + report.records >= limit:
            report.complete = False
            break
        name = entry.name
        if name.startswith("."):
            continue
        if is_day_file(name):
            if _day_end(name) <= cutoff:
                layout.remove("sent", name)
                report.records += 1
            continue
        if not (name.endswith(SUFFIX) or name.endswith(SUFFIX + RECORD_SUFFIX)):
            continue
        try:
            st = entry.stat(follow_symlinks=False)
        except FileNotFoundError:
            continue
        if st.st_mtime >= cutoff:
            continue
        layout.remove("sent", name)
        if name.endswith(SUFFIX):
            report.messages += 1
        else:
            report.records += 1
    if report.messages or report.records:
        layout.fsync_dir("sent")
    return report


def retain(layout: SpoolLayout, retain_sent: float, now: float) -> PurgeReport | None:
    """A send run's share of retention: None when sent/ was scanned less than
    SCAN_INTERVAL ago; else purge_sent with RUN_LIMIT, and the stamp renewed when
    it finished."""
    stamp = layout.lstat(STATE_DIR, STAMP)
    if stamp is not None and 0 <= now - stamp.st_mtime < SCAN_INTERVAL:
        return None
    report = purge_sent(layout, now - max(0.0, retain_sent), limit=RUN_LIMIT)
    if report.complete:
        fd = layout.open_file(STATE_DIR, STAMP, os.O_WRONLY | os.O_CREAT)
        try:
            with storage("write", layout.where(STATE_DIR, STAMP)):
                os.utime(fd, (now, now))
        finally:
            os.close(fd)
    if report.messages or report.records:
        log.info(
            "retention: removed %d sent message(s) and %d record file(s) older than %.0f s%s",
            report.messages,
            report.records,
            retain_sent,
            "" if report.complete else " (limit reached: the rest next run)",
        )
    return report


def _day_end(name: str) -> float:
    """The end of the UTC day of ``records-YYYY-MM-DD.jsonl`` (epoch seconds)."""
    day = time.strptime(name[len("records-") : -len(".jsonl")], "%Y-%m-%d")
    return calendar.timegm(day) + 86400.0
