"""Where an in-process ``cxsmtp send`` spends its time (not part of ``make bench``).

Run: ``python bench/profile_send.py [-n 2000] [--disk]``.  A spool of N small
messages goes to Postfix's smtp-sink (or carerix_smtp.sink) on loopback through
``carerix_smtp.send.run.run_send`` in this process, twice: once with the main steps
wrapped to give the wall time per step, once under cProfile (cumulative, top 25).
``--disk`` puts the spool and state dir in the default temp dir (the normal disk)
instead of tmpfs.  ``PROFILE_SORT=tottime PROFILE_TOP=45`` sorts the profile by time
spent in each function itself and shows more of it.  Functions that no longer exist are left out of the step table.
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
    cxsmtp_env,
    disk_dir,
    left_over,
    python_sink,
    scratch_dir,
    small_message,
    write_spool,
)


def in_process(spool: Path, config_path: Path, profile: bool = False) -> float:
    """Seconds for run_send on ``spool`` in this process (config loaded first)."""
    from carerix_smtp.config.file import load_config
    from carerix_smtp.send.report import SendOptions
    from carerix_smtp.send.run import run_send

    queued = sum(1 for _ in spool.glob("*.eml"))
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
        print(f"\nprofile of run_send, {queued} messages (cProfile):")
        stats.sort_stats(os.environ.get("PROFILE_SORT", "cumulative")).print_stats(
            int(os.environ.get("PROFILE_TOP", "25"))
        )
    else:
        summary = go()
        elapsed = time.perf_counter() - start
    assert not left_over(spool), summary
    return elapsed


def args_count(spool: Path) -> int:
    return sum(1 for _ in (spool / "sent").glob("*.eml"))


def phases(spool: Path, config_path: Path) -> None:
    """Wall time per step of the in-process send (wrapped functions, low overhead)."""
    import collections
    import functools
    import os

    import carerix_smtp.send.dispatch as dispatch
    import carerix_smtp.send.routing as routing
    import carerix_smtp.smtp.session as smtp_session
    import carerix_smtp.spool.spool as spool_module

    count = max(1, sum(1 for _ in spool.glob("*.eml")))
    spent: collections.defaultdict[str, float] = collections.defaultdict(float)
    calls: collections.Counter[str] = collections.Counter()
    originals: list[tuple[object, str, object]] = []

    def wrap(owner: object, name: str, label: str) -> None:
        original = getattr(owner, name, None)
        if original is None:  # renamed or gone since this table was written
            return
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
    print(f"\nwhere the time goes, {count} messages in {total:.2f} s ({count / total:.0f} msg/s):")
    for label, seconds in sorted(spent.items(), key=lambda item: -item[1]):
        print(
            f"  {label:<48} {seconds:6.2f} s {seconds / total:6.1%} "
            f"{seconds / count * 1e6:6.0f} us/msg ({calls[label]} calls)"
        )
    other = total - sum(v for k, v in spent.items() if not k.startswith("  "))
    print(f"  {'everything else':<48} {other:6.2f} s {other / total:6.1%}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("-n", type=int, default=2000, help="messages")
    parser.add_argument("--disk", action="store_true", help="spool on the normal disk")
    args = parser.parse_args()
    messages = [small_message(i) for i in range(args.n)]
    peer = PostfixSink if PostfixSink.available() else python_sink
    where = disk_dir if args.disk else scratch_dir
    with where("cxsmtp-profile-") as tmp, peer() as sink:
        work = Path(tmp)
        env = cxsmtp_env(work)
        add_server(env, "bench", sink.port)
        os.environ.update(env)  # run_send in this process: the same config and state dir
        config_path = Path(env["CXSMTP_CONFIG"])
        phases(write_spool(work / "spool-phases", messages), config_path)
        in_process(write_spool(work / "spool-profile", messages), config_path, profile=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
