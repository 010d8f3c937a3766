"""User-space instructions per in-process forward, counted by callgrind: load-independent.

Run: `.venv/bin/python benchmarks/floor_instructions.py [--arm proxy|floor]
[--kinds live,follower,catch-up] [-n 1000] [--root DIR]`.

Why: the machine the benchmarks run on is shared, so S1's CPU per request moves by +-8%
between identical runs (an A/A run differed by 6.7 µs), more than most single changes to
the fast lane. The number of instructions one forward executes does not move with the load:
this runs `floor_inprocess.py` under callgrind twice, with N forwards and with none (same
start-up, same warm-up forwards, same hash seed, the same .pyc files compiled first), and
prints the difference divided by N for each kind of request (S1's arms). Repeated runs agree
within ~0.1%. Hardware counters (`perf stat -e instructions:u`) are not available on the
VMs the benchmarks run on; callgrind needs none (it is ~50x slower: ~30 s a run).
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent


def collected(arm: str, n: int, kind: str, root: Path) -> int:
    """Instructions callgrind counts for one run of `floor_inprocess.py` with N forwards."""
    with tempfile.TemporaryDirectory() as tmp:
        out = subprocess.run(
            ["valgrind", "--tool=callgrind", f"--callgrind-out-file={tmp}/cg.out",
             sys.executable, str(HERE / "floor_inprocess.py"), arm, str(n), "--kind", kind,
             "--root", str(root)],
            capture_output=True, text=True, check=True,
            env={**os.environ, "PYTHONHASHSEED": "0"},
        )  # fmt: skip
    found = re.search(r"Collected : (\d+)", out.stderr)
    if found is None:
        raise RuntimeError(f"callgrind printed no count:\n{out.stderr[-2000:]}")
    return int(found.group(1))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--arm", choices=("proxy", "floor"), default="proxy")
    ap.add_argument("--kinds", default="live,follower,catch-up")
    ap.add_argument("-n", type=int, default=1000, help="forwards counted (beside a run of 0)")
    ap.add_argument("--root", type=Path, default=HERE.parent, help="the checkout whose proxy")
    a = ap.parse_args()
    for tree in {a.root.resolve(), HERE.parent}:
        subprocess.run(
            [sys.executable, "-m", "compileall", "-q", "proxy", "benchmarks", "sync_engine"],
            cwd=tree, check=True,
        )  # fmt: skip
    for kind in a.kinds.split(","):
        base = collected(a.arm, 0, kind, a.root)
        total = collected(a.arm, a.n, kind, a.root)
        print(f"{a.arm} ({kind}) at {a.root}: {(total - base) / a.n / 1000:.1f}K instructions "
              f"per forward (N={a.n})", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
