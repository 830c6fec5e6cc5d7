"""The sending limits: the pure admission rule and the rate ledger that feeds it.

- ``rule``: the policy as pure functions (Limits, rolling windows, batch sizing,
  the timing model, :func:`~carerix_smtp.limits.rule.next_batch` and its proof);
- ``schedule``: the rule played forward (ETA, ``--dry-run``);
- ``ledger``: the ledger's interface (the ``LedgerStore`` protocol, ``BatchGrant``,
  ``Wait``, ``Usage``) and the semantics any store must keep;
- ``owner``: who holds a batch reservation and whether it can still send;
- ``sqlite`` (``Ledger``), ``sqlite_connection``, ``sqlite_reservations``,
  ``sqlite_state``: the SQLite store, ``STATE_DIR/ledger.sqlite3``;
  ``sqlite_files``: its files (never through a symlink) and its errors;
- ``hourly``: messages sent per hour over the last day (``cxsmtp status``'s chart);
- ``repair``: checking a ledger and rebuilding a damaged one from known sends
  (the core of ``cxsmtp doctor``);
- ``open``: the one place that opens the configured ledger (SQLite, or the shared
  PostgreSQL one; fail closed, the clock check); ``accounts``: usage per account
  (``cxsmtp ledger show``).

May import config/ (for :meth:`Limits.from_entry`, at type-checking time only;
``open`` reads config/ledger_url.py and runs a ledger password command through
config/passwords.py) and errors; nothing from smtp/, spool/, send/ or cli/.
"""
