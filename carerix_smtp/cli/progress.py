"""``cxsmtp send``'s progress bar on a terminal, fed by the sender's ProgressEvents:
the server(s) and batch, messages per second, sent/deferred/failed and the ETA.

The bar appears with the first message of a batch: a run the limits hold back
entirely (nothing allowed now) shows no bar, only its summary line."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from carerix_smtp.cli.status_view import clock

if TYPE_CHECKING:
    from rich.console import Console, RenderableType
    from rich.progress import Progress

    from carerix_smtp.send.report import ProgressEvent


class SendProgress:
    """``with SendProgress(console) as update:`` -- ``update`` is None when disabled."""

    def __init__(self, console: Console, enabled: bool = True) -> None:
        self.console = console
        self.enabled = enabled
        self.bar: Progress | None = None
        self.task: Any = None
        self.batch = 0  # passes of the run (--loop): each sends a batch per server
        self.total = 0  # the current batch's messages (a bar per batch)
        self.servers: list[str] = []
        self.counts = {"sent": 0, "deferred": 0, "failed": 0}  # the whole run
        self.started = 0.0
        self.clock: Callable[[], float] = time.monotonic

    def __enter__(self) -> Callable[[ProgressEvent], None] | None:
        return self.update if self.enabled else None

    def __exit__(self, *exc: object) -> None:
        self._hide()

    def update(self, event: ProgressEvent) -> None:
        if event.kind == "start":
            self._hide()  # the bar of the next batch appears with its first message
            self.batch += 1
            self.total, self.servers = event.total, []
        elif event.kind == "message":
            self._message(event)
        elif event.kind == "wait" and event.until is not None:
            self._hide()  # nothing is allowed until then: no bar
            why = f" ({event.reason})" if event.reason else ""
            self.console.print(f"waiting until {clock(event.until)} for the next window{why}")

    def _message(self, event: ProgressEvent) -> None:
        if self.bar is None:
            self._show()
        assert self.bar is not None
        if event.server and event.server not in self.servers:
            self.servers.append(event.server)
        if event.outcome in self.counts:
            self.counts[event.outcome] += 1
        elapsed = max(self.clock() - self.started, 1e-6)
        self.bar.update(
            self.task,
            completed=event.done,
            total=max(self.total, event.done),
            description=self.label(),
            rate=f"{event.done / elapsed:.1f} msg/s",
            counts=self.counter_text(),
        )

    def label(self) -> str:
        """ "xs4all, batch 2": the servers of this batch so far, and which batch."""
        return f"{', '.join(self.servers) or 'sending'}, batch {self.batch}"

    def counter_text(self) -> str:
        c = self.counts
        return (
            f"[green]sent {c['sent']}[/] [yellow]deferred {c['deferred']}[/] "
            f"[red]failed {c['failed']}[/]"
        )

    def renderable(self) -> RenderableType | None:
        """What the bar shows now (None: no bar)."""
        return None if self.bar is None else self.bar.get_renderable()

    def _show(self) -> None:
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeRemainingColumn,
        )

        self.bar = Progress(
            TextColumn("{task.description}", markup=False),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[rate]}"),
            TextColumn("{task.fields[counts]}"),
            TextColumn("ETA"),
            TimeRemainingColumn(),
            console=self.console,
            transient=True,
        )
        self.started = self.clock()
        self.task = self.bar.add_task(
            self.label(), total=self.total, rate="", counts=self.counter_text()
        )
        self.bar.start()

    def _hide(self) -> None:
        if self.bar is not None:
            self.bar.stop()
            self.bar, self.task = None, None
