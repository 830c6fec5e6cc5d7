"""A full batch against a slow server: pipelining on every connection (issue 12).

500 messages of 160 KB (seed: a batch of at most 500 messages and 80 MB) go to
carerix_smtp.sink, which waits 50 ms before every reply like a network round trip
(pipelined commands share one delay; Postfix's smtp-sink only delays in whole
seconds), with the server entry set to ``connections = N`` for N = 1, 2, 4 and 8.
Each figure is the wall time of ``cxsmtp send`` as a subprocess.

The protocol bound for N connections: every connection waits for the greeting, the
EHLO reply and the first message's 354, then one round trip per message (its end of
data, answered together with the next message's pipelined MAIL, RCPT and DATA), and
the QUIT: bound(N) = (ceil(500 / N) + 3) x 50 ms.  With CHUNKING (RFC 3030 BDAT) a
message needs no 354 round trip: + 2 instead of + 3 (the sink is asked in EHLO).
Every N runs twice: against a sink that offers only DATA (as aiosmtpd does) and one
that offers CHUNKING (as Postfix does).  Target: within 1.15x the bound every time.
The short runs (N = 4 and 8, 3-7 s, where the process start alone is 5 % of the
bound and the machine's speed drifts 20-30 % within seconds) are the median of
ROUNDS runs, each on a server entry of its own (so that no run waits for the
batch interval of the one before); N = 1 and 2 (13-26 s) run once, as the output
says.
"""

from __future__ import annotations

import argparse
import math
import shutil
import smtplib
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from _common import (
    add_server,
    cxsmtp_env,
    python_sink,
    report,
    scratch_dir,
    send_spool,
    small_message,
    target,
)

COUNT = 500  # seed: a batch of at most 500 messages ...
SIZE = 160_000  # ... and at most 80 MB: 500 x 160 KB is exactly one full batch
LATENCY = 0.050  # seconds before every reply
CONNECTIONS = (1, 2, 4, 8)
WITHIN = 1.15  # x the protocol bound
ROUNDS = 3  # runs per N for the short runs (N >= SHORT); the median counts
SHORT = 4  # N from which a run is short enough to repeat


def protocol_bound(count: int, connections: int, chunking: bool) -> float:
    """Seconds: round trips on the busiest connection x the reply latency."""
    fixed = 2 if chunking else 3
    return (math.ceil(count / connections) + fixed) * LATENCY


def offers_chunking(host: str, port: int) -> bool:
    with smtplib.SMTP(host, port, local_hostname="bench.example", timeout=10) as smtp:
        smtp.ehlo()
        return bool(smtp.has_extn("chunking"))


def build_spool(path: Path, count: int) -> int:
    """``count`` messages of SIZE bytes; returns the total size."""
    path.mkdir(parents=True)
    line = b"x" * 74 + b"\r\n"
    total = 0
    for index in range(count):
        head = small_message(index, size=0)
        data = head + line * ((SIZE - len(head)) // len(line))
        (path / f"{index:04d}.eml").write_bytes(data)
        total += len(data)
    return total


def one_run(sink: Any, env: dict[str, str], work: Path, count: int, n: int, chunking: bool) -> bool:
    bound = protocol_bound(count, n, chunking)
    walls: list[float] = []
    used = total = 0
    for round_ in range(ROUNDS if n >= SHORT else 1):
        spool = work / f"spool-{n}-{round_}"
        total = build_spool(spool, count)
        before = sink.connections_total
        try:
            walls.append(send_spool(env, spool, server_name(n, round_), timeout=bound * 3 + 15))
        except RuntimeError as exc:
            return target(f"{n} connection(s), chunking={chunking}", f"error: {exc}", False)
        finally:
            shutil.rmtree(spool, ignore_errors=True)
        used = sink.connections_total - before
    wall = statistics.median(walls)
    ratio = wall / bound
    runs = f"median of {len(walls)}: " + ", ".join(f"{w:.2f}" for w in walls) + " s; "
    return target(
        f"{n} connection(s), {'BDAT' if chunking else 'DATA'}: cxsmtp send",
        f"{wall:6.2f} s, bound {bound:5.2f} s = {ratio:.2f}x the bound (target <= {WITHIN}; "
        f"{runs if len(walls) > 1 else ''}{used} connection(s) opened, "
        f"{total / wall / 1e6:.1f} MB/s)",
        ratio <= WITHIN,
    )


def server_name(n: int, round_: int) -> str:
    return f"c{n}-{round_}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("-n", type=int, default=COUNT, help=f"messages (default {COUNT})")
    parser.add_argument(
        "-c", type=int, action="append", help="connections (repeatable; default 1, 2, 4, 8)"
    )
    args = parser.parse_args()
    started = time.perf_counter()
    ok = True
    # Both ways a server can take the data: DATA (aiosmtpd, most servers) and BDAT
    # (CHUNKING offered, as Postfix does), each against its own bound.
    for offer in (False, True):
        with (
            scratch_dir("cxsmtp-bench-latency-") as tmp,
            python_sink(latency_ms=LATENCY * 1000, chunking=offer) as sink,
        ):
            work = Path(tmp)
            env = cxsmtp_env(work)
            for n in args.c or CONNECTIONS:
                for round_ in range(ROUNDS if n >= SHORT else 1):
                    add_server(env, server_name(n, round_), sink.port, "--set", f"connections={n}")
            chunking = offers_chunking(sink.host, sink.port)
            print(
                f"{args.n} x {SIZE // 1000} KB to carerix_smtp.sink with {LATENCY * 1000:.0f} ms "
                f"before every reply (CHUNKING offered: {'yes' if chunking else 'no'});\n"
                f"`cxsmtp send` as a subprocess; bound(N) = (ceil({args.n}/N) + "
                f"{2 if chunking else 3}) x {LATENCY * 1000:.0f} ms; the median of {ROUNDS} "
                f"runs for N >= {SHORT}, one run below:",
                flush=True,
            )
            for n in args.c or CONNECTIONS:
                ok = one_run(sink, env, work, args.n, n, chunking) and ok
    report("(all runs)", f"{time.perf_counter() - started:.0f} s")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
