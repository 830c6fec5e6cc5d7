"""Fallback relays in a pass (issue 14): which server takes the messages routed to
an entry with ``fallback = [...]``.

The decision is made once per pass, on the entry's first message (for a
single-server run: before anything is claimed), before that message is admitted
by any gate: the entry's batch is asked for, then it is connected to.  When it
cannot be used -- the name does not resolve, the connection is refused or times
out, no greeting, TLS fails, 421 at the greeting, authentication refused, or
cxsmtp refuses to go on (a password would travel unencrypted) -- its fallbacks
are tried the same way, in order, and the first usable one takes the entry's
messages for the rest of the pass (its own gate, so its own limits count them).
A fallback's own fallbacks are not followed: the entry's list says, in order,
where its mail may go.  Limits are no reason to fall back: an entry whose limits
allow no batch now keeps its messages queued, as without fallbacks -- but a
*fallback* whose limits allow nothing now is passed over for the next one.

Once a server was used, losing it later in the pass is handled as before (its
rest waits for the next run); a 4xx/5xx to a message or a recipient is that
message's outcome.  Nothing here touches the spool: claims and the journal stay
as they are (the caller puts a claimed message back when ``choose`` raises).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from carerix_smtp.errors import SmtpAuthError, SmtpPolicyError
from carerix_smtp.send.connection import ServerUnusable
from carerix_smtp.send.stopping import Stopping, stop_for

if TYPE_CHECKING:
    from carerix_smtp.config.file import ServerEntry
    from carerix_smtp.send.connection import Connection
    from carerix_smtp.send.servers import Servers

log = logging.getLogger(__name__)


class Fallbacks:
    """The fallback decisions of one pass (the substitutions live in ``router.instead``)."""

    def __init__(self, servers: Servers) -> None:
        self.servers = servers
        self.decided: set[str] = set()  # entries with fallbacks tried in this pass

    def choose(self, entry: ServerEntry) -> ServerEntry:
        """The server that takes ``entry``'s messages in this pass.  May connect (the
        first time for an entry with fallbacks).  Raises Stop when no server could be
        used and ``entry`` itself refused the login (exit 77) or was refused by cxsmtp's
        policy (exit 78).  When the run is being stopped, ``entry`` (the caller's next
        network step sees the stop)."""
        router = self.servers.router
        instead = router.instead.get(entry.name)
        if instead is not None:
            return self.servers.config.server(instead)
        reason = router.passed_over.pop(entry.name, None)
        if reason is not None:  # its own message now: its failure is the run's failure
            self.servers.note_unusable(self.servers.connection(entry), reason)
        if not entry.fallback or entry.name in self.decided:
            return entry
        self.decided.add(entry.name)
        try:
            return self._decide(entry)
        except Stopping:
            router.instead.pop(entry.name, None)
            return entry

    def _decide(self, primary: ServerEntry) -> ServerEntry:
        servers = self.servers
        conn = servers.connection(primary)
        if not servers.prepare(primary):
            return primary  # its limits hold its messages back: no reason to fall back
        reason = self._open(conn)
        if reason is None:
            return primary
        # Its batch's slots go back now: they count in email-send-limit (all servers).
        servers.gates[primary.name].close()
        tried: list[Connection] = [conn]
        for name in primary.fallback:
            other = servers.config.server(name)
            servers.router.instead[primary.name] = name  # its gate sizes the batch with them
            other_conn = servers.connection(other)
            if servers.server_done(name):
                log.info("fallback %s not used: %s", name, other_conn.unusable or "its limits")
                continue
            if not servers.prepare(other):
                log.info("fallback %s not used: its limits allow no batch now", name)
                continue
            why = self._open(other_conn)
            if why is None:
                self._note(primary.name, reason, name)
                return other
            tried.append(other_conn)
            servers.router.passed_over[name] = why
        del servers.router.instead[primary.name]
        self._note(primary.name, reason, None)
        for failed in tried[1:]:
            servers.router.passed_over.pop(failed.entry.name, None)
            servers.note_unusable(failed, failed.unusable or reason)
        if isinstance(conn.failure, SmtpAuthError | SmtpPolicyError):
            raise stop_for(conn.failure)  # as without fallbacks: the primary's error decides
        servers.note_unusable(conn, reason)
        return primary  # unusable: its messages stay queued (exit 75)

    def _open(self, conn: Connection) -> str | None:
        """Open ``conn``; None when it is open, else why the server cannot be used
        (then ``conn.unusable`` says so too).  Raises Stopping."""
        try:
            with self.servers.network():
                conn.ensure_open()
        except ServerUnusable as exc:
            return str(exc)
        except (SmtpAuthError, SmtpPolicyError) as exc:
            conn.unusable = f"server {conn.entry.name}: {exc}"
            return conn.unusable
        return None

    def _note(self, primary: str, reason: str, fallback: str | None) -> None:
        servers = self.servers
        with servers.lock:
            use = servers.summary.server_use(primary)
            use.skipped_reason = reason.removeprefix(f"server {primary}: ")
            use.fallback = fallback
            if fallback is not None:
                used = servers.summary.server_use(fallback)
                if primary not in used.used_for:
                    used.used_for.append(primary)
        if fallback is not None:
            log.warning("%s; its messages go through fallback %s", reason, fallback)
