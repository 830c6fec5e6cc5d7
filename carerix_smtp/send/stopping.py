"""How a send run stops: ``stop_on_signals`` (SIGTERM/SIGINT: finish the message
in flight; a second signal on the wire abandons it), the marks of the network
phases a second signal may cut, the exceptions that end a pass early
(``Stopping``: a stop was asked for; ``Stop``: authentication or policy refused),
and ``cleanup``: closing what a pass opened, also after an error (a full disk).
"""

from __future__ import annotations

import contextlib
import logging
import signal
import threading
from collections.abc import Callable, Iterator
from types import FrameType

from carerix_smtp.errors import Interrupted, SmtpAuthError, SmtpError, SmtpPolicyError

log = logging.getLogger(__name__)


class _Mark:
    """A flag with threading.Event's set/clear/is_set, for one thread and its signal
    handler: nobody waits on it, and set/clear come a few times per message, where
    an Event's lock and notify_all cost more than the rest of the step."""

    __slots__ = ("_on",)

    def __init__(self) -> None:
        self._on = False

    def set(self) -> None:
        self._on = True

    def clear(self) -> None:
        self._on = False

    def is_set(self) -> bool:
        return self._on


# Set while the run's own thread may be interrupted by a second signal: on the wire
# itself (one connection), or waiting for the connections' threads (several).  Only
# the dispatching thread sets it; the handler runs in that thread too.
in_network = _Mark()
# A second signal came while that was not so: the dispatcher raises on its next wait.
abort_requested: list[str] = []  # the signal's name


@contextlib.contextmanager
def stop_on_signals(stop: threading.Event) -> Iterator[None]:
    """SIGTERM/SIGINT set ``stop``: the run finishes the message in flight, QUITs,
    puts back what it holds and ends (exit 75).  A second signal while a message is
    on the wire abandons it at once (Interrupted); it goes back to the queue.

    Python's default SIGTERM action skips ``finally`` blocks; this handler does not.
    Only usable in the main thread (the CLI); a no-op elsewhere.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    logging_notice = False
    abort_pending = False

    def abort(name: str) -> Interrupted:
        return Interrupted(f"{name} received twice: stopped in the middle of a message")

    def handler(signum: int, frame: FrameType | None) -> None:
        nonlocal logging_notice, abort_pending
        name = signal.Signals(signum).name
        if stop.is_set():
            if not abort_requested:
                abort_requested.append(name)
            if not in_network.is_set():
                return  # between messages: the run is stopping anyway
            if logging_notice:
                # Raised inside logging's emit() it would be swallowed (handleError):
                # let the first handler raise it once its log call has returned.
                abort_pending = True
                return
            raise abort(name)
        stop.set()
        logging_notice = True
        try:
            log.warning("%s received: finishing the message in flight, then stopping", name)
        finally:
            logging_notice = False
        if abort_pending and in_network.is_set():
            raise abort(name)

    abort_requested.clear()
    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)
        abort_requested.clear()


class Stopping(Exception):
    """A stop was asked for before a network phase (or during a sleep): do not go on."""


class Stop(Exception):
    """The run must end now, touching nothing more: ``status`` says why."""

    def __init__(self, status: str, error: SmtpError) -> None:
        super().__init__(str(error))
        self.status = status
        self.error = error


def stop_for(error: SmtpAuthError | SmtpPolicyError) -> Stop:
    return Stop("auth-failed" if isinstance(error, SmtpAuthError) else "config-error", error)


def close_all(*steps: Callable[[], object]) -> None:
    """Run every step, even when one fails; then raise the first failure."""
    first: Exception | None = None
    for step in steps:
        try:
            step()
        except Exception as exc:
            if first is None:
                first = exc
            else:
                log.info("also while closing: %s", exc)
    if first is not None:
        raise first


def quietly(*steps: Callable[[], object]) -> None:
    """Clean up after a failure: run every step; their own errors are only logged.
    The first failure is the one to report (one line, its exit code), and what a
    step leaves undone (a claim not put back...) the next run's recovery redoes."""
    for step in steps:
        try:
            step()
        except Exception as exc:
            log.info("while stopping after an error: %s", exc)


class cleanup:  # lower case: used like a function, ``with cleanup(conn.close):``
    """Run ``steps`` when the block ends: ``close_all`` after success, ``quietly``
    after a failure (the block's error is the one that propagates).  A class, not
    a generator: it runs once per message."""

    __slots__ = ("steps",)

    def __init__(self, *steps: Callable[[], object]) -> None:
        self.steps = steps

    def __enter__(self) -> None:
        return None

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        if exc_type is None:
            close_all(*self.steps)
        else:
            quietly(*self.steps)
