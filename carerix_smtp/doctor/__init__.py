"""``cxsmtp doctor``: a health check of everything a cron run depends on, and the
repair of a damaged rate ledger.

Owns the checks (one :class:`~carerix_smtp.doctor.report.Check` per line: ``ok``,
``warn`` or ``fail``, a name and a detail, never a password) and the decision to
rebuild the ledger from the spools' delivery logs; the ledger file itself is
moved aside and rebuilt by :mod:`carerix_smtp.limits.repair`.  Read-only except
for that repair and a temporary probe file in the state dir: it never recovers a
spool, never takes a lock away from a live holder.

- ``report``  Check, DoctorReport: the lines and the exit code they add up to
- ``setup``   the configuration file and each server's password source
- ``state``   the state dir, the ledger's health and its repair
- ``spools``  one spool: layout (owners, modes, symlinks), lock, pending replay, queue
- ``history`` accepted sends read back from a spool's delivery log
- ``run``     run_doctor: all of it in order

May import ``carerix_smtp.config``, ``spool``, ``limits`` and ``errors`` (it sits
at the level of send/, probe/ and sink/); never typer or rich.  Used by ``cli/``.
"""
