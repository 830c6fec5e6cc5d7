"""Sending the spool: ``cxsmtp send`` (one pass over the due messages, or ``--loop``),
``--dry-run`` and the limits part of ``cxsmtp status``.

Modules, from the entry points down:

- ``run``: ``run_send`` -- the spool lock, recovery, the passes of a run and the
  waits between them (the overview of how a run works is its docstring);
- ``dispatch``: one pass (``Pass``): claim, read, route and admit each message in
  order and send it, pipelined on one connection or handed to a pool;
- ``routing`` (which server a message goes to), ``servers`` (each server's
  connection, gate and pool in a pass), ``delivery`` (one message on its
  connection, and its outcome booked in the spool and the summary);
- ``pool``: the threaded connections of a server with ``connections`` > 1 (beside
  its first one, which the dispatching thread drives);
- ``spread``: which of those connections takes a message (the first one unless the
  server keeps it waiting);
- ``connection``: one SMTP connection turning a message into an ``Attempt``;
- ``outcome``: replies -> accepted / deferred / failed, and the message's state;
- ``gates``: batch gates (``CountGate``, ``LedgerGate`` from the rate ledger);
- ``report``: ``SendOptions``, ``ProgressEvent``, ``BatchReport``, ``RunSummary``;
- ``plan``: ``plan_send`` (dry run) and ``limits_status``;
- ``status``: ``collect_status``, what ``cxsmtp status`` shows (spool, limits,
  sends per hour, the run history);
- ``stopping``: ``stop_on_signals`` and how a pass stops early.

Inside the package a module imports only the ones below it (no circle, not even
under TYPE_CHECKING): report, outcome, stopping -> gates -> connection, routing ->
pool -> servers -> spread -> delivery -> dispatch -> run (plan: gates and report; status:
plan and history).  A pool
calls back its pass through the protocol ``pool.Dispatcher``.

May import ``carerix_smtp.smtp``, ``spool``, ``limits``, ``config`` and ``errors``
(the SMTP session lazily); never typer or rich.  Used by ``cli/``, the tests and
bench/.
"""
