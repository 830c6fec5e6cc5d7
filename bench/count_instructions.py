"""Instructions a `cxsmtp send` costs, counted by valgrind (not part of ``make bench``).

Run: ``python bench/count_instructions.py [--small 300] [--large 600] [--connections 1]``.

Wall and CPU times on this machine drift by 10-40 % from run to run.  The number of
instructions a process executes (valgrind's cachegrind) is the same to about 0.5 %
whatever else the machine does, so a change of 1-2 % in the work per message shows,
and the same change measured twice gives the same figure.

Three whole `cxsmtp send` processes (start included, as cron runs it), each with a
fresh spool and a fresh state dir, to Postfix's smtp-sink (or carerix_smtp.sink) on
loopback: an empty spool (the start alone), SMALL and LARGE messages of ~2 KB.
Printed: the empty run; per message, (LARGE - SMALL) / (LARGE - SMALL messages); and
the fixed cost of a run that sends (SMALL's count less its messages' share: imports
of the sending path, the ledger, the connection).  Needs valgrind (Debian's package);
each process runs about 50 times slower under it.
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
from pathlib import Path

from _common import (
    PostfixSink,
    add_server,
    cxsmtp_env,
    left_over,
    python_sink,
    scratch_dir,
    small_message,
    write_spool,
)

_REFS = re.compile(r"I\s+refs:\s+([\d,]+)")


def count(work: Path, port: int, messages: int, connections: int) -> int:
    """Instructions of one `cxsmtp send -q` of ``messages`` small messages in ``work``."""
    env = cxsmtp_env(work)
    add_server(env, "bench", port, "--set", f"connections={connections}")
    spool = write_spool(work / "spool", [small_message(i) for i in range(messages)])
    argv = [
        "valgrind",
        "--tool=cachegrind",
        "--cache-sim=no",
        "--cachegrind-out-file=/dev/null",
        sys.executable,
        "-m",
        "carerix_smtp",
        "send",
        "--quiet",
        "--server",
        "bench",
        str(spool),
    ]
    result = subprocess.run(argv, env=env, capture_output=True, text=True, check=False)
    found = _REFS.search(result.stderr)
    if result.returncode != 0 or found is None or left_over(spool):
        raise RuntimeError(f"{' '.join(argv)}: exit {result.returncode}\n{result.stderr[-2000:]}")
    return int(found.group(1).replace(",", ""))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--small", type=int, default=300, help="messages of the smaller run")
    parser.add_argument("--large", type=int, default=600, help="messages of the larger run")
    parser.add_argument("--connections", type=int, default=1, help="of the server entry")
    args = parser.parse_args()
    if shutil.which("valgrind") is None:
        print("valgrind is not installed (Debian: apt-get install valgrind)", file=sys.stderr)
        return 1
    if not 0 < args.small < args.large:
        parser.error("needs 0 < --small < --large")
    peer = PostfixSink if PostfixSink.available() else python_sink
    counts = {}
    with peer() as sink:
        for messages in (0, args.small, args.large):
            with scratch_dir("cxsmtp-instructions-") as tmp:
                counts[messages] = count(Path(tmp), sink.port, messages, args.connections)
    per_message = (counts[args.large] - counts[args.small]) / (args.large - args.small)
    fixed = counts[args.small] - per_message * args.small
    print(f"cxsmtp send, {args.connections} connection(s), instructions (valgrind cachegrind):")
    print(f"  empty spool (the start alone)      {counts[0] / 1e6:9.1f} M")
    print(f"  fixed cost of a run that sends     {fixed / 1e6:9.1f} M")
    print(f"  per message of ~2 KB               {per_message / 1e6:9.3f} M")
    return 0


if __name__ == "__main__":
    sys.exit(main())
