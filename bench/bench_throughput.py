"""Throughput with limits lifted, to a local sink (SPEC "Non-functional targets").

(a) reference: a plain smtplib loop that reuses one connection, sending N small
    (~2 KB) messages to Postfix's smtp-sink on loopback;
(b) cxsmtp: a spool of the same N messages sent with ``cxsmtp send`` (a server
    entry with every limit lifted), end to end as a subprocess (process start
    included) and in-process through ``carerix_smtp.send.run.run_send``;
    target: cxsmtp messages/s >= the smtplib loop's, measured in the same run;
(c) a batch of 500 x 160 KB messages to a server that waits 50 ms before every
    reply (carerix_smtp.sink with latency_ms=50; smtp-sink only delays in whole
    seconds), the server entry set to ``connections = 4`` (``--big-connections``;
    SPEC: "with PIPELINING and parallel connections, several times that on a
    latency-injected server"); target: well inside the seed's 1 minute (pass at
    <= 45 s).

(a) and (b) use one connection each: cxsmtp pipelines across messages (the next
message's MAIL/RCPT/DATA go out behind the previous one's data), the smtplib loop
cannot.  Parallel connections do not help against a local sink that answers at
once: the work per message is CPU, one core's worth under the GIL.

Options: ``--profile`` prints where the in-process send spends its time (wall time
per step, then cProfile);
``-n N`` changes N.  The spools live on tmpfs (/dev/shm) when there is one, so
fsync is nearly free there: the figures are the software's cost, not the disk's.
"""

from __future__ import annotations

import argparse
import smtplib
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from _common import (
    PostfixSink,
    add_server,
    cxsmtp,
    cxsmtp_env,
    python_sink,
    report,
    run_measured,
    scratch_dir,
    small_message,
)

N_SMALL = 2000
ROUNDS = 3
BIG_COUNT = 500  # seed: a batch of at most 500 messages ...
BIG_SIZE = 160_000  # ... and at most 80 MB: 500 x 160 KB is exactly one full batch
LATENCY_MS = 50.0
BIG_CONNECTIONS = 4  # the server entry's `connections` in (c)
SEED_BATCH_SECONDS = 60.0  # seed: a batch must be finished within 1 minute
WELL_INSIDE = 0.75  # "well inside": at most 45 of the 60 seconds


def write_spool(path: Path, messages: list[bytes]) -> Path:
    path.mkdir(parents=True)
    for index, data in enumerate(messages):
        (path / f"{index:06d}.eml").write_bytes(data)
    return path


def sent_count(spool: Path) -> int:
    sent = spool / "sent"
    return len(list(sent.glob("*.eml"))) if sent.is_dir() else 0


def smtplib_loop(host: str, port: int, messages: list[bytes]) -> float:
    """Seconds for the reference: connect, N x sendmail on one connection, QUIT."""
    start = time.perf_counter()
    with smtplib.SMTP(host, port, local_hostname="bench.example", timeout=30) as smtp:
        for index, data in enumerate(messages):
            smtp.sendmail("sender@example.com", [f"rcpt{index}@example.org"], data)
    return time.perf_counter() - start


def in_process(spool: Path, config_path: Path, profile: bool = False) -> float:
    """Seconds for run_send on ``spool`` in this process (config loaded first)."""
    from carerix_smtp.config.file import load_config
    from carerix_smtp.send.report import SendOptions
    from carerix_smtp.send.run import run_send

    config = load_config(config_path)
    options = SendOptions(local_hostname="bench.example")

    def go() -> object:
        return run_send(spool, config, options)

    start = time.perf_counter()
    if profile:
        import cProfile
        import pstats

        profiler = cProfile.Profile()
        summary = profiler.runcall(go)
        elapsed = time.perf_counter() - start
        stats = pstats.Stats(profiler, stream=sys.stdout)
        print(f"\nprofile of run_send, {sent_count(spool)} messages (cProfile, cumulative):")
        stats.sort_stats("cumulative").print_stats(25)
    else:
        summary = go()
        elapsed = time.perf_counter() - start
    assert getattr(summary, "sent", None) == sent_count(spool), summary
    return elapsed


def rate(count: int, seconds: float) -> str:
    return f"{count / seconds:7.0f} msg/s ({seconds:.2f} s)"


def median(samples: list[float]) -> float:
    return statistics.median(samples)


def throughput(work: Path, n: int, profile: bool) -> bool:
    env = cxsmtp_env(work)
    messages = [small_message(i) for i in range(n)]
    if PostfixSink.available():
        peer: Callable[[], Any] = PostfixSink
        label = "Postfix smtp-sink"
    else:
        peer = python_sink
        label = "carerix_smtp.sink (Postfix smtp-sink not installed)"
    reference: list[float] = []
    end_to_end: list[float] = []
    inside: list[float] = []
    with peer() as sink:
        add_server(env, "bench", sink.port)
        config_path = Path(env["CXSMTP_CONFIG"])
        empty = work / "empty-spool"
        empty.mkdir()
        startup = median(
            [run_measured([*cxsmtp(), "send", str(empty)], env, 30)[1] for _ in range(3)]
        )
        for round_ in range(ROUNDS):  # interleaved, so that load changes hit all three alike
            reference.append(smtplib_loop(sink.host, sink.port, messages))
            spool = write_spool(work / f"spool-sub-{round_}", messages)
            code, wall, _, _ = run_measured([*cxsmtp(), "send", "--quiet", str(spool)], env, 120)
            if code != 0 or sent_count(spool) != n:
                print(f"  cxsmtp send exited {code}, sent {sent_count(spool)} of {n}")
                return False
            end_to_end.append(wall)
            spool = write_spool(work / f"spool-in-{round_}", messages)
            inside.append(in_process(spool, config_path))
        # The same on a disk-backed spool (the default temp dir), for information.
        with tempfile.TemporaryDirectory(prefix="cxsmtp-bench-disk-") as disk:
            disk_n = max(1, n // 4)
            spool = write_spool(Path(disk) / "spool", messages[:disk_n])
            on_disk = in_process(spool, config_path)
            disk_fs = _filesystem(Path(disk))
        if profile:
            phases(write_spool(work / "spool-phases", messages), config_path)
            in_process(write_spool(work / "spool-profile", messages), config_path, profile=True)

    ref, e2e, inp = median(reference), median(end_to_end), median(inside)
    print(f"(a)+(b) {n} messages of {len(messages[0])} bytes to {label} on loopback,")
    print(f"        one connection, limits lifted, median of {ROUNDS} interleaved rounds:")
    report("smtplib loop, one connection (reference)", rate(n, ref))
    report("cxsmtp send, end to end (subprocess)", rate(n, e2e) + f" = {ref / e2e:.2f}x smtplib")
    report("  of which process start + empty run", f"{startup:.2f} s")
    ok = inp <= ref
    report("cxsmtp run_send, in-process", rate(n, inp) + f" = {ref / inp:.2f}x smtplib", ok)
    report(
        f"  same, spool on {disk_fs} (fsync per step)",
        rate(disk_n, on_disk) + f" = {(disk_n / on_disk) / (n / ref):.2f}x smtplib",
    )
    return ok


def _filesystem(path: Path) -> str:
    """The file system type of ``path`` (from /proc/mounts), e.g. "ext4"."""
    best, kind = "", "disk"
    try:
        mounts = Path("/proc/mounts").read_text().splitlines()
    except OSError:
        return kind
    resolved = str(path.resolve())
    for line in mounts:
        fields = line.split()
        if len(fields) > 2 and resolved.startswith(fields[1]) and len(fields[1]) > len(best):
            best, kind = fields[1], fields[2]
    return kind


def phases(spool: Path, config_path: Path) -> None:
    """Wall time per step of the in-process send (wrapped functions, low overhead)."""
    import collections
    import functools
    import os

    import carerix_smtp.send.dispatch as dispatch
    import carerix_smtp.send.routing as routing
    import carerix_smtp.smtp.session as smtp_session
    import carerix_smtp.spool.spool as spool_module

    spent: collections.Counter[str] = collections.Counter()
    calls: collections.Counter[str] = collections.Counter()
    originals: list[tuple[object, str, object]] = []

    def wrap(owner: object, name: str, label: str) -> None:
        original = getattr(owner, name)
        originals.append((owner, name, original))

        @functools.wraps(original)
        def timed(*args: object, **kwargs: object) -> object:
            start = time.perf_counter()
            inner = 0.0
            meanwhile = kwargs.get("meanwhile")
            if callable(meanwhile):  # SmtpSession.run: the next message is read meanwhile

                def counted() -> None:
                    nonlocal inner
                    began = time.perf_counter()
                    try:
                        meanwhile()
                    finally:
                        inner += time.perf_counter() - began

                kwargs["meanwhile"] = counted
            try:
                return original(*args, **kwargs)
            finally:
                spent[label] += time.perf_counter() - start - inner  # not counted twice
                calls[label] += 1

        setattr(owner, name, timed)

    wrap(dispatch, "read_message", "message.read_message (header parsing)")
    wrap(routing, "read_message", "message.read_message (header parsing)")
    wrap(smtp_session.SmtpSession, "run", "SmtpSession.run (MAIL..DATA on the wire)")
    wrap(spool_module.Spool, "claim", "Spool.claim (rename, fsync)")
    wrap(spool_module.Spool, "record_outcome", "Spool.record_outcome (journal, record, move)")
    wrap(spool_module.Spool, "log_delivery", "Spool.log_delivery")
    wrap(os, "fsync", "  os.fsync (inside the spool steps)")
    try:
        total = in_process(spool, config_path)
    finally:
        for owner, name, original in originals:
            setattr(owner, name, original)
    count = sent_count(spool)
    print(f"\nwhere the time goes, {count} messages in {total:.2f} s ({count / total:.0f} msg/s):")
    for label, seconds in spent.most_common():
        print(
            f"  {label:<48} {seconds:6.2f} s {seconds / total:6.1%} "
            f"{seconds / count * 1e6:6.0f} us/msg ({calls[label]} calls)"
        )
    other = total - sum(v for k, v in spent.items() if not k.startswith("  "))
    print(f"  {'everything else':<48} {other:6.2f} s {other / total:6.1%}")


def big_batch(work: Path, big_connections: int) -> bool:
    env = cxsmtp_env(work)
    body_line = b"x" * 74 + b"\r\n"
    with python_sink(latency_ms=LATENCY_MS) as sink:
        add_server(env, "slow", sink.port, "--set", f"connections={big_connections}")
        spool = work / "big-spool"
        spool.mkdir()
        for index in range(BIG_COUNT):
            head = small_message(index, size=0)
            body = body_line * ((BIG_SIZE - len(head)) // len(body_line))
            data = head + body
            (spool / f"{index:04d}.eml").write_bytes(data)
        total = sum(p.stat().st_size for p in spool.glob("*.eml"))
        timeout = SEED_BATCH_SECONDS  # beyond the seed's minute it has failed anyway
        code, wall, _, _ = run_measured([*cxsmtp(), "send", "--quiet", str(spool)], env, timeout)
        sent = sent_count(spool)
        connections = sink.connections_total
    print(
        f"(c) {BIG_COUNT} x {BIG_SIZE // 1000} KB ({total / 1e6:.1f} MB) to carerix_smtp.sink "
        f"with {LATENCY_MS:.0f} ms before every reply, {connections} connection(s):"
    )
    if code != 0 or sent != BIG_COUNT:
        report("cxsmtp send", f"exit {code}, {sent} of {BIG_COUNT} sent in {wall:.1f} s", False)
        return False
    ok = wall <= SEED_BATCH_SECONDS * WELL_INSIDE
    report(
        "cxsmtp send, end to end",
        f"{wall:5.1f} s = {wall / SEED_BATCH_SECONDS:.2f} x the seed's 60 s "
        f"({BIG_COUNT / wall:.1f} msg/s, {total / wall / 1e6:.1f} MB/s)",
        ok,
    )
    return ok


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("-n", type=int, default=N_SMALL, help="small messages per round")
    parser.add_argument("--profile", action="store_true", help="cProfile the in-process send")
    parser.add_argument("--skip-big", action="store_true", help="skip (c)")
    parser.add_argument(
        "--big-connections",
        type=int,
        default=BIG_CONNECTIONS,
        help=f"connections to the server in (c) (default {BIG_CONNECTIONS})",
    )
    args = parser.parse_args()
    with scratch_dir("cxsmtp-bench-tp-") as tmp:
        ok = throughput(Path(tmp) / "small", args.n, args.profile)
    if not args.skip_big:
        with scratch_dir("cxsmtp-bench-big-") as tmp:
            ok = big_batch(Path(tmp), args.big_connections) and ok
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
