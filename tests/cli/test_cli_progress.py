"""The progress bar of ``cxsmtp send`` on a terminal (issue 11): server and batch as
its label (no file name), msg/s, sent/deferred/failed and the ETA; no bar when the
limits allow nothing now."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

from rich.console import Console
from servers import entry_for, make_spool, names
from test_cli_status import ANSI, on_a_terminal

from carerix_smtp.cli.progress import SendProgress
from carerix_smtp.config.file import Config, save_config
from carerix_smtp.send.report import ProgressEvent


def shown(progress: SendProgress) -> str:
    out = io.StringIO()
    console = Console(file=out, force_terminal=True, width=160, color_system=None)
    renderable = progress.renderable()
    if renderable is not None:
        console.print(renderable)
    return out.getvalue()


def test_label_counters_rate_and_eta() -> None:
    console = Console(file=io.StringIO(), force_terminal=True, width=160)
    progress = SendProgress(console)
    long_name = "20240501-120000-a-very-long-file-name-of-the-producer-0001.eml"
    with progress as update:
        assert update is not None
        update(ProgressEvent("start", total=4))
        assert shown(progress) == ""  # nothing sent yet: no bar
        for done, outcome in enumerate(("sent", "sent", "deferred"), 1):
            update(ProgressEvent("message", 4, done, long_name, outcome, 100, server="xs4all"))
        text = shown(progress)
        assert text.startswith("xs4all, batch 1 ")
        assert "3/4" in text and "msg/s" in text and "ETA" in text
        assert "sent 2 deferred 1 failed 0" in text
        assert "a-very-long" not in text
        update(ProgressEvent("start", total=2))  # the next batch of --loop
        update(ProgressEvent("message", 2, 1, long_name, "failed", 100, server="xs4all"))
        assert shown(progress).startswith("xs4all, batch 2 ")
        assert "1/2" in shown(progress) and "sent 2 deferred 1 failed 1" in shown(progress)
    assert progress.renderable() is None  # gone at the end


def test_disabled_progress_gives_no_callback() -> None:
    with SendProgress(Console(file=io.StringIO()), enabled=False) as update:
        assert update is None


def test_no_bar_when_the_limits_allow_nothing_now(
    tmp_path: Path, isolated: Any, sink_factory: Any, cxsmtp: Any
) -> None:
    sink = sink_factory()
    entry = entry_for(sink, rate_per_hour=1, batch_interval=300.0, batch_deadline=60.0)
    save_config(Config(path=isolated.config, servers={"local": entry}))
    spool = make_spool(tmp_path, 3)
    assert cxsmtp("send", str(spool)).returncode == 0  # the hour's one message
    code, output = on_a_terminal("send", str(spool))
    assert code == 0
    plain = ANSI.sub("", output)
    assert "cxsmtp: limit: sent 0" in plain
    assert "━" not in plain and "0/" not in plain and "batch 1" not in plain
    assert len(sink.messages) == 1 and len(names(spool)) == 2

    sink2 = sink_factory()
    save_config(Config(path=isolated.config, servers={"other": entry_for(sink2, name="other")}))
    code, output = on_a_terminal("send", str(spool))
    assert code == 0 and len(sink2.messages) == 2
    assert "other, batch 1" in ANSI.sub("", output)  # the bar, drawn with its label
