"""Connections that break: dropped after the final ".", a hang at end of data, 421
mid-batch.  Each run is ``cxsmtp send`` in a subprocess; what counts is what the
server received (Message-IDs) and where every message of the spool is afterwards."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from conftest import strip_timestamps
from servers import ScriptServer, entry_for, make_spool, message_ids

from carerix_smtp.sink.config import FailRule
from faults.fault_helpers import (
    configure,
    duplicates,
    ids_in,
    run_cxsmtp,
    send,
    smtp_script,
    spool_names,
    tally,
)

pytestmark = pytest.mark.slow

TOTAL = 30
BROKEN_AT = (4, 17)  # the 5th and the 18th message the server receives


def retry_and_send(spool: Path) -> Any:
    """What an admin does after the backoff: make the deferred due, send again."""
    retried = run_cxsmtp("retry", str(spool), "--all")
    assert retried.returncode == 0, retried.stderr
    assert "Traceback" not in retried.stderr
    return send(spool)


@pytest.mark.parametrize("fault", ["drop", "hang"])
def test_connection_broken_after_the_final_dot(
    tmp_path: Path, isolated: Any, matrix: Any, fault: str
) -> None:
    """The server has the whole message but its 250 never arrives: the message is
    deferred, logged as a possible duplicate and sent again — one copy too many per
    broken connection, never a lost one."""
    broken = {"drop_at": BROKEN_AT} if fault == "drop" else {"hang_at": BROKEN_AT}
    with ScriptServer(smtp_script(**broken), connections=20) as server:
        configure(isolated, entry_for(server.port, command_timeout=1.0, data_timeout=1.0))
        spool = make_spool(tmp_path, TOTAL)
        first = send(spool)
        assert first.returncode == 0, first.stderr  # README: deferred mail is retried later
        (line,) = strip_timestamps(first.stdout).splitlines()
        assert line.startswith("cxsmtp: deferred: sent 28, deferred 2, failed 0 (")
        assert "cxsmtp: error:" not in first.stderr
        assert tally(spool).deferred == ["m00004.eml", "m00017.eml"]
        second = retry_and_send(spool)
        assert second.returncode == 0, second.stderr
        received = ids_in(server.data)
    final = tally(spool)
    dups = duplicates(received)
    matrix(
        runs=2,
        faults=len(BROKEN_AT),
        total=TOTAL,
        lost=final.lost(spool_names(TOTAL)),
        duplicates=dups,
    )
    assert final.lost(spool_names(TOTAL)) == 0 and final.twice() == []
    assert len(final.sent) == TOTAL and final.everywhere() == final.sent
    assert set(received) == {f"<{n}.test@x.example>" for n in range(TOTAL)}
    # at most one duplicate per broken connection, and only the message in flight
    assert dups <= len(BROKEN_AT)
    assert {mid for mid, c in received.items() if c > 1} <= {
        "<4.test@x.example>",
        "<17.test@x.example>",
    }
    log = [json.loads(line) for line in (spool / ".cxsmtp/delivery.log").read_text().splitlines()]
    flagged = {e["message_id"] for e in log if e.get("possible_duplicate")}
    assert flagged == {"<4.test@x.example>", "<17.test@x.example>"}


@pytest.mark.parametrize("phase", ["mail", "eod"])
def test_421_mid_batch(
    tmp_path: Path, isolated: Any, sink_factory: Any, matrix: Any, phase: str
) -> None:
    """421 (closing) in the middle of a batch: the message it hit is deferred, the
    sender reconnects for the rest; nothing was accepted twice."""
    sink = sink_factory(fail=[FailRule(phase, 421, after_n=10, times=1)])
    configure(isolated, entry_for(sink))
    spool = make_spool(tmp_path, TOTAL)
    first = send(spool)
    assert first.returncode == 0, first.stderr  # README: deferred mail is retried later
    (line,) = strip_timestamps(first.stdout).splitlines()
    assert line.startswith("cxsmtp: deferred: sent 29, deferred 1, failed 0 (")
    assert "cxsmtp: error:" not in first.stderr
    assert tally(spool).deferred == ["m00010.eml"]
    assert sink.connections_total == 2
    second = retry_and_send(spool)
    assert second.returncode == 0, second.stderr
    final = tally(spool)
    received = Counter(message_ids(sink))
    lost = final.lost(spool_names(TOTAL))
    matrix(runs=2, faults=1, total=TOTAL, lost=lost, duplicates=duplicates(received))
    assert lost == 0 and final.everywhere() == final.sent
    assert sorted(received.values()) == [1] * TOTAL  # the sink kept no copy of the 421'd one
