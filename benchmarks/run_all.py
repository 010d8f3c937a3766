"""`make bench`: run every scenario and print one table (machine description on top).

    .venv/bin/python benchmarks/run_all.py [--quick] [--only 1,3] [--markdown FILE]

Scenarios (see docs/benchmarks.md and ../shared/reference/performance-anchors.md §4):
  1 proxy / direct / nginx in front of the engine       s1_front.py
  2 live fan-out, collapsed or not, long-poll and SSE   s2_fanout.py
  3 initial sync of 1M rows                             initial_sync.py
  4 replication backlog drain vs pg_recvlogical         s4_backlog.py
  5 one write among many shapes, `=` vs ILIKE           s5_routing.py
  6 storm of new shapes, distinct vs identical          s6_storm.py
  7 one user's 1,000 long-polls vs another's sync       s7_starvation.py
  8 10,000-20,000 live clients: proxy, SSE, nginx edge   s8_many_clients.py
  9 a table joins the publication: Relation re-checks   s9_publication.py
Each scenario starts (and stops) its own Postgres and processes; every arm of a row is
measured in the same run. `--quick` uses smaller sizes (about 5 minutes in all on a loaded
machine); the default full run took 11 minutes on the quiet 2-core machine (S2, S3 and S8
2-3 minutes each) and 19-23 minutes with other sessions' load.
A scenario that fails is reported as a row and the others still run.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import resource
import sys
import time
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import Row, load, machine, table


def scenarios() -> dict[int, tuple[str, object]]:
    import initial_sync
    import s1_front
    import s2_fanout
    import s4_backlog
    import s5_routing
    import s6_storm
    import s7_starvation
    import s8_many_clients
    import s9_publication

    async def s3(quick: bool) -> list[Row]:
        """S3; the 10M table without the COPY that warms Postgres's buffers first (VACUUM
        has just read it; a first COPY was not slower than a second, and it costs 15-60 s).
        Each table has a cluster of its own, and the files of every arm before it (S1, S2,
        the earlier tables) are deleted before it is loaded (`initial_sync.measure`)."""
        if quick:
            return await initial_sync.run(True)
        rows: list[Row] = []
        for only in ("narrow", "wide", "10m"):
            rows += await initial_sync.run(False, only=only, warm=only != "10m")
        return rows

    async def s2(quick: bool) -> list[Row]:
        """S2 with 6 writes per arm in the full run (10 before): ten arms of ~20 s each."""
        return await s2_fanout.run(quick, writes=None if quick else 6)

    return {
        1: ("proxy vs direct vs nginx", s1_front.run),
        2: ("live fan-out", s2),
        3: ("initial sync", s3),
        4: ("replication backlog drain", s4_backlog.run),
        5: ("one write among many shapes", s5_routing.run),
        6: ("shape-creation storm", s6_storm.run),
        7: ("starvation by one principal", s7_starvation.run),
        8: ("many live clients", s8_many_clients.run),
        9: ("a table joins the publication", s9_publication.run),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="smaller sizes (~5 minutes)")
    ap.add_argument("--only", default="", help="comma-separated scenario numbers")
    ap.add_argument("--markdown", type=Path, help="also write the report to this file")
    args = ap.parse_args()
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # thousands of held requests
    try:
        import uvloop

        uvloop.install()  # the load generator is Python too: keep its share of the CPU small
    except ImportError:
        pass
    chosen = {int(x) for x in args.only.split(",") if x} or set(scenarios())
    started = time.perf_counter()
    head = [
        f"shapegate benchmarks, {'quick' if args.quick else 'full'} run, "
        f"{datetime.datetime.now().astimezone():%Y-%m-%d %H:%M %Z}",
        f"machine: {machine()}",
    ]
    print("\n".join(head), flush=True)
    rows: list[Row] = []
    took: list[str] = []
    for number, (name, run) in scenarios().items():
        if number not in chosen:
            continue
        t0 = time.perf_counter()
        print(f"  scenario {number}: {name} ...", flush=True)
        try:
            limit = 300 if args.quick else 900
            rows += asyncio.run(asyncio.wait_for(run(args.quick), limit))  # type: ignore[operator]
        except TimeoutError:
            rows.append(Row(f"S{number} {name}", "FAILED", [("timeout", f"{limit} s")]))
        except Exception as exc:
            traceback.print_exc()
            rows.append(Row(f"S{number} {name}", "FAILED", [("error", repr(exc)[:200])]))
        print(f"  scenario {number} done in {time.perf_counter() - t0:.0f} s", flush=True)
        took.append(f"S{number} {time.perf_counter() - t0:.0f} s")
    total = (f"total {time.perf_counter() - started:.0f} s ({', '.join(took)}), "
             f"{load()} at the end")  # fmt: skip
    report = "\n".join([*head, "", table(rows), "", total])
    print()
    print(report)
    if args.markdown:
        args.markdown.write_text(report + "\n")
    return 1 if any(r.metric == "FAILED" for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
