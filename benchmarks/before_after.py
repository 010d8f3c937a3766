"""Before/after: run scenarios at another checkout (the base) and at this one, alternating.

    .venv/bin/python benchmarks/before_after.py --base /work/wt/base [--rounds 2]
        [--only s3,s4,s5,s6,rep]

Issue 12 asks that a restructure changes no benchmark row beyond noise, and on this shared
machine only numbers measured side by side mean anything. Each scenario runs with its own
commit's script and venv (`BASE/.venv/bin/python BASE/benchmarks/x.py`, then this checkout's),
base first in odd rounds and this checkout first in even ones, so a drift in the machine's
load does not favour one side. Every run's output is printed under a header with its wall
time and the load average before it.

Both sides run through `_autogroup_shim`: it gives each throwaway Postgres the benchmark's
autogroup nice (an older `_common.Postgres` does not, and a cluster in its own session at
nice 0 would make the base's Postgres-bound numbers slower for a reason that is not the
engine's).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent

#: scenario -> (base's arguments, this checkout's arguments), script first; `{base}` is the
#: base checkout's path.
SCENARIOS: dict[str, tuple[list[str], list[str]]] = {
    "s3": (["initial_sync.py"], ["initial_sync.py", "--only", "narrow"]),
    "s4": (["s4_backlog.py"], ["s4_backlog.py"]),
    "s5": (["s5_routing.py"], ["s5_routing.py"]),
    # without the 10,000-shape arm (creating 10,000 shapes over HTTP takes minutes per side)
    "s5-small": (
        ["s5_routing.py", "--sizes", "100,1000"],
        ["s5_routing.py", "--sizes", "100,1000"],
    ),
    # this checkout's S6 also runs its 100-row storms with the base's engine side by side
    "s6": (["s6_storm.py"], ["s6_storm.py", "--baseline", "{base}"]),
    "rep": (["replication_cpu.py"], ["replication_cpu.py"]),
}

#: Runs `script args...` after patching its `_common.Postgres` to share our autogroup nice.
SHIM = r"""
import os, runpy, sys
from pathlib import Path
script = Path(sys.argv[1]).resolve()
sys.path.insert(0, str(script.parent))
import _common

def share(pid):
    try:
        nice = Path("/proc/self/autogroup").read_text().split()[-1]
        if nice != "0":
            Path(f"/proc/{pid}/autogroup").write_text(nice)
    except (OSError, IndexError):
        pass

start, pg_ctl = _common.Postgres._start, _common.Postgres._pg_ctl

def postmaster(self):
    return int((Path(self.dir) / "data" / "postmaster.pid").read_text().split()[0])

def _start(self):
    url = start(self)
    share(postmaster(self))
    return url

def _pg_ctl(self, action):
    pg_ctl(self, action)
    if action in ("start", "restart"):
        share(postmaster(self))

_common.Postgres._start, _common.Postgres._pg_ctl = _start, _pg_ctl
sys.argv = [str(script), *sys.argv[2:]]
runpy.run_path(str(script), run_name="__main__")
"""


def loadavg() -> str:
    one, five, _ = os.getloadavg()
    return f"load average {one:.1f} (5 min {five:.1f})"


def run(label: str, checkout: Path, argv: list[str], timeout: float) -> float:
    python = checkout / ".venv" / "bin" / "python"
    cmd = [str(python), "-c", SHIM, str(checkout / "benchmarks" / argv[0]), *argv[1:]]
    head = f"== {label}: {checkout} {' '.join(argv)} ({loadavg()})"
    print(head, flush=True)
    started = time.monotonic()
    try:
        out = subprocess.run(
            cmd, cwd=checkout, capture_output=True, text=True, timeout=timeout, check=False
        )
        text = out.stdout + (
            f"\n[exit {out.returncode}] {out.stderr[-2000:]}" if out.returncode else ""
        )
    except subprocess.TimeoutExpired:
        text = f"[timed out after {timeout:.0f} s]"
    wall = time.monotonic() - started
    print(text.rstrip(), flush=True)
    print(f"== {label}: wall {wall:.0f} s, then {loadavg()}\n", flush=True)
    return wall


def main() -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    ap.add_argument("--base", type=Path, required=True, help="the other checkout (with .venv)")
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--only", default=",".join(SCENARIOS))
    ap.add_argument("--timeout", type=float, default=900.0, help="per run, seconds")
    ap.add_argument("--main-first", action="store_true", help="this checkout first in odd rounds")
    args = ap.parse_args()
    base = args.base.resolve()
    head = subprocess.run(["git", "-C", str(base), "rev-parse", "--short", "HEAD"],
                          capture_output=True, text=True).stdout.strip()  # fmt: skip
    this = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
                          capture_output=True, text=True).stdout.strip()  # fmt: skip
    print(f"before/after: base {head} ({base}) vs this checkout {this} ({ROOT}); {loadavg()}")
    for name in args.only.split(","):
        base_argv, this_argv = SCENARIOS[name]
        this_argv = [a.format(base=base) for a in this_argv]
        for k in range(args.rounds):
            sides = [("base " + head, base, base_argv), ("main " + this, ROOT, this_argv)]
            for side, checkout, argv in sides if (k % 2 == 0) != args.main_first else sides[::-1]:
                run(f"{name} round {k + 1} {side}", checkout, argv, args.timeout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
