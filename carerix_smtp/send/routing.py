"""Which server each message of a pass goes to (``Router``): ``--server``, else
the From's per-user choice, else the default -- or the fallback that took that
server's messages in this pass (``instead``, see send/fallback.py); and the sizes
of a server's next due messages, for its batch gate.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from typing import TYPE_CHECKING

from carerix_smtp.errors import ConfigError, MessageError
from carerix_smtp.spool.message import read_message

if TYPE_CHECKING:
    from carerix_smtp.config.file import Config, ServerEntry
    from carerix_smtp.send.report import SendOptions, Totals
    from carerix_smtp.spool.listing import Candidate
    from carerix_smtp.spool.message import Message
    from carerix_smtp.spool.spool import Spool


class Router:
    """Routes the due messages of one pass (``candidates``, from ``pos`` on) to servers."""

    def __init__(self, spool: Spool, config: Config, options: SendOptions, totals: Totals) -> None:
        self.spool = spool
        self.config = config
        self.options = options
        self.totals = totals
        self.candidates: Sequence[Candidate] = []
        self.pos = 0
        self.routes: dict[tuple[str, str], str | None] = {}
        # server -> the fallback that takes its messages in this pass (issue 14)
        self.instead: dict[str, str] = {}
        # fallbacks tried for another server that could not be used; none of their own
        # messages met that yet (their failure is no failure of the run, see run.py)
        self.passed_over: dict[str, str] = {}
        self._fixed: ServerEntry | None = None
        self._fixed_known = False

    def server_for(self, message: Message) -> ServerEntry:
        """The server chosen for ``message`` (before any fallback)."""
        if self.options.server:
            return self.config.server(self.options.server)
        return self.config.server_for_sender(message.from_address)

    def fixed_server(self) -> ServerEntry | None:
        """The server every message goes to, when known without reading any."""
        if not self._fixed_known:
            self._fixed_known = True
            if self.options.server:
                self._fixed = self.config.server(self.options.server)
            elif len(self.config.servers) == 1 or not self.config.users:
                # [users] can only name this one / no per-user choice: the default
                with contextlib.suppress(ConfigError):
                    self._fixed = self.config.default()
        return self._fixed

    def possible_servers(self) -> set[str]:
        """Every server a message of this pass can go to."""
        fixed = self.fixed_server()
        if fixed is not None:
            return {self.instead.get(fixed.name, fixed.name)}
        names = {n for n in self.config.users.values() if n in self.config.servers}
        with contextlib.suppress(ConfigError):
            names.add(self.config.default().name)
        return {self.instead.get(n, n) for n in names or self.config.servers}

    def route(self, candidate: Candidate) -> str | None:
        """The server ``candidate`` goes to (a fallback's name once it took over),
        reading its header if need be (cached); None when that cannot be told (the
        claim will fail it with the reason)."""
        fixed = self.fixed_server()
        if fixed is not None:
            return self.instead.get(fixed.name, fixed.name)
        key = (candidate.kind, candidate.name)
        if key not in self.routes:
            name: str | None = None
            if candidate.file_type == "file" and candidate.size > 0:
                directory = self.spool.dir("deferred") if candidate.kind == "deferred" else None
                try:
                    message = read_message((directory or self.spool.path) / candidate.name)
                    name = self.server_for(message).name
                except (MessageError, ConfigError):
                    name = None
            self.routes[key] = name
        name = self.routes[key]
        return self.instead.get(name, name) if name is not None else None

    def queued_sizes(self, server: str, count: int) -> list[int]:
        """Sizes of the next ``count`` due messages of ``server``, from the current one on."""
        if self.options.max_messages is not None:
            count = min(count, max(1, self.options.max_messages - self.totals.admitted))
        sizes: list[int] = []
        # The spool's CandidateList holds a bounded window of the queue; ``ahead``
        # goes on past it (listing the next windows), so that a batch the limits
        # allow is never cut at the window's end (issue 12: runs stopped at 10,000).
        ahead = getattr(self.candidates, "ahead", None)
        upcoming = (
            ahead(self.pos, count) if ahead is not None else iter(self.candidates[self.pos :])
        )
        for offset, candidate in enumerate(upcoming):
            if len(sizes) >= count:
                break
            # The current message (maybe claimed already) is the one the gate is asked about.
            if offset == 0 or self.route(candidate) == server:
                sizes.append(candidate.size)
        return sizes
