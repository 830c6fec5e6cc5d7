"""Big spools and big messages (SPEC "Non-functional targets").

(a) a spool of 100,000 small files: peak RSS of ``cxsmtp send --max-messages 10``
    (and of ``--dry-run --max-messages 10``) against the same for a 1,000-file
    spool — memory bounded: the ratio should be close to 1 (pass at <= 1.25) — and
    the time from process start to the first message on the wire (the sink's
    timestamp of the first message received minus the start; pass at <= 1.5 s,
    "about a second");
(b) one 50 MB message: peak RSS of ``cxsmtp send`` minus that of sending one
    small message, as a multiple of the message size — streamed, not held in
    memory (pass at <= 0.5: less than half a copy).

Peak RSS is the child's own ru_maxrss from wait4(2).  Spools are built on tmpfs
(/dev/shm) when there is one and removed afterwards.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from _common import (
    PostfixSink,
    add_server,
    cxsmtp,
    cxsmtp_env,
    mib,
    python_sink,
    report,
    run_measured,
    scratch_dir,
    small_message,
)

BIG_SPOOL = 100_000
SMALL_SPOOL = 1_000
SPOOL_FILE_SIZE = 600  # bytes: small messages; the count is what matters here
FIRST_MESSAGES = 10  # --max-messages for the big-spool runs
RSS_RATIO_MAX = 1.25  # "memory bounded": close to the 1,000-file figure
FIRST_MESSAGE_MAX = 1.5  # seconds: "first message on the wire in about a second"
HUGE_SIZE = 50_000_000  # SPEC: a message of 50 MB
HUGE_COPIES_MAX = 0.5  # streamed: well under one copy of the message in memory
RUN_TIMEOUT = 60.0


def build_spool(path: Path, count: int) -> Path:
    """``count`` distinct small messages, oldest first (mtimes one second apart)."""
    path.mkdir(parents=True)
    base = time.time() - count - 60
    for index in range(count):
        file = path / f"{index:06d}.eml"
        file.write_bytes(small_message(index, size=SPOOL_FILE_SIZE))
        stamp = base + index
        os.utime(file, (stamp, stamp))
    return path


def big_spool(work: Path) -> bool:
    env = cxsmtp_env(work)
    figures: dict[int, tuple[int, int, float]] = {}
    with python_sink() as sink:
        add_server(env, "spool", sink.port)
        for count in (SMALL_SPOOL, BIG_SPOOL):
            started = time.perf_counter()
            spool = build_spool(work / f"spool-{count}", count)
            built = time.perf_counter() - started
            code, _, plan_rss, _ = run_measured(
                [*cxsmtp(), "send", "--dry-run", "-n", str(FIRST_MESSAGES), str(spool)],
                env,
                RUN_TIMEOUT,
            )
            if code != 0:
                print(f"  cxsmtp send --dry-run on {count} files exited {code}")
                return False
            before = len(sink.messages)
            code, wall, send_rss, started_at = run_measured(
                [*cxsmtp(), "send", "--quiet", "-n", str(FIRST_MESSAGES), str(spool)],
                env,
                RUN_TIMEOUT,
            )
            received = sink.messages[before:]
            if code != 0 or len(received) != FIRST_MESSAGES:
                print(f"  cxsmtp send on {count} files exited {code}, {len(received)} received")
                return False
            first = received[0].time - started_at
            figures[count] = (plan_rss, send_rss, first)
            print(
                f"    ({count} files built in {built:.1f} s; send -n {FIRST_MESSAGES} took "
                f"{wall:.2f} s)"
            )
    small_plan, small_send, small_first = figures[SMALL_SPOOL]
    big_plan, big_send, big_first = figures[BIG_SPOOL]
    plan_ratio, send_ratio = big_plan / small_plan, big_send / small_send
    per_file = (big_send - small_send) / (BIG_SPOOL - SMALL_SPOOL)
    print(f"(a) spool of {BIG_SPOOL:,} files vs {SMALL_SPOOL:,} (carerix_smtp.sink on loopback):")
    ok_plan = plan_ratio <= RSS_RATIO_MAX
    ok_send = send_ratio <= RSS_RATIO_MAX
    ok_first = big_first <= FIRST_MESSAGE_MAX
    report(
        f"peak RSS, send --dry-run -n {FIRST_MESSAGES}",
        f"{mib(big_plan)} vs {mib(small_plan)} = {plan_ratio:.2f}x",
        ok_plan,
    )
    report(
        f"peak RSS, send -n {FIRST_MESSAGES}",
        f"{mib(big_send)} vs {mib(small_send)} = {send_ratio:.2f}x ({per_file:.0f} B/file)",
        ok_send,
    )
    report(
        "first message on the wire after process start",
        f"{big_first:.2f} s (with {SMALL_SPOOL:,} files: {small_first:.2f} s)",
        ok_first,
    )
    return ok_plan and ok_send and ok_first


def huge_message(work: Path) -> bool:
    env = cxsmtp_env(work)
    peer = PostfixSink if PostfixSink.available() else python_sink
    label = "Postfix smtp-sink" if peer is PostfixSink else "carerix_smtp.sink"
    with peer() as sink:
        add_server(env, "huge", sink.port)
        small = work / "small-spool"
        small.mkdir()
        (small / "small.eml").write_bytes(small_message(1))
        code, _, baseline, _ = run_measured([*cxsmtp(), "send", "--quiet", str(small)], env, 30)
        if code != 0:
            print(f"  cxsmtp send of one small message exited {code}")
            return False
        spool = work / "huge-spool"
        spool.mkdir()
        head = small_message(2, size=0)
        line = b"0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789+/\r\n"
        with open(spool / "huge.eml", "wb") as handle:
            handle.write(head)
            written = len(head)
            block = line * 10_000
            while written + len(block) <= HUGE_SIZE:
                handle.write(block)
                written += len(block)
            rest = (HUGE_SIZE - written) // len(line)
            handle.write(line * rest)
            written += rest * len(line)
        code, wall, peak, _ = run_measured(
            [*cxsmtp(), "send", "--quiet", str(spool)], env, RUN_TIMEOUT
        )
        delivered = (spool / "sent" / "huge.eml").exists()
    print(f"(b) one message of {written / 1e6:.0f} MB to {label} on loopback:")
    if code != 0 or not delivered:
        report("cxsmtp send", f"exit {code}, delivered: {delivered}", False)
        return False
    copies = (peak - baseline) / written
    ok = copies <= HUGE_COPIES_MAX
    report("peak RSS sending one small message (baseline)", mib(baseline))
    report(
        "peak RSS sending it",
        f"{mib(peak)}: +{mib(peak - baseline)} = {copies:.2f}x the message "
        f"({wall:.1f} s, {written / wall / 1e6:.0f} MB/s)",
        ok,
    )
    return ok


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--skip-big-spool", action="store_true", help="skip (a)")
    parser.add_argument("--skip-huge", action="store_true", help="skip (b)")
    args = parser.parse_args()
    ok = True
    if not args.skip_big_spool:
        with scratch_dir("cxsmtp-bench-spool-") as tmp:
            ok = big_spool(Path(tmp)) and ok
    if not args.skip_huge:
        with scratch_dir("cxsmtp-bench-huge-") as tmp:
            ok = huge_message(Path(tmp)) and ok
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
