"""How fast `snapload plan` simulates: a million Poisson requests under 20 policies.

    python benches/plan_speed.py [--requests 1000000] [--rounds 3] [--threads 0]

Times, median over rounds: generating the arrivals and service times, the simulation of all
policies (wall and this process's CPU time, so a busy machine shows as CPU < wall x threads), and
the whole `snapload.plan()` call. The target (issue 13) is a few seconds on a 2-core machine.
Prints a table; `--json FILE` also writes the figures.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "python"))
sys.path.insert(0, str(REPO / "benches"))

from machine import provenance  # noqa: E402 - benches/machine.py: stdlib only

import snapload  # noqa: E402
from snapload._plan import sim, traces  # noqa: E402
from snapload._plan.service import parse_service  # noqa: E402

# 5 idle timeouts x 2 min-instances x 2 keep-warm settings = 20 policies, from "every request cold"
# (the most instance launches) to half-hour timeouts.
IDLE = [0.0, 10.0, 60.0, 300.0, 1800.0]
MIN = [0, 2]
KEEP_WARM: list[float | None] = [None, 60.0]


def timed(fn: object) -> tuple[float, float, object]:
    assert callable(fn)
    wall0, cpu0 = time.perf_counter(), time.process_time()
    value = fn()
    return time.perf_counter() - wall0, time.process_time() - cpu0, value


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--requests", type=int, default=1_000_000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=0, help="simulation threads (default: one per core)")
    ap.add_argument("--concurrency", type=int, default=1)
    ap.add_argument("--json", metavar="FILE")
    args = ap.parse_args(argv)

    rate = 10.0
    duration = args.requests / rate
    policies = sim.policy_grid(IDLE, MIN, KEEP_WARM)
    rows: dict[str, list[float]] = {"generate_s": [], "simulate_wall_s": [], "simulate_cpu_s": [], "plan_wall_s": []}
    n = 0
    for _ in range(args.rounds):
        gen_wall, _, arrivals = timed(lambda: traces.generate(f"poisson:{rate}", duration, seed=0).times)
        n = arrivals.size  # type: ignore[attr-defined]
        service = parse_service("lognormal:0.5,0.6").sample(n, 0)
        w = sim.make_workload(arrivals, service, args.concurrency, duration)  # type: ignore[arg-type]
        sim_wall, sim_cpu, _ = timed(lambda: sim.simulate(w, 8.0, policies, args.threads))
        plan_wall, _, _ = timed(
            lambda: snapload.plan(
                f"poisson:{rate}", duration=duration, cold_start=8.0, service="lognormal:0.5,0.6",
                concurrency=args.concurrency, idle_timeout=IDLE, min_instances=MIN,
                keep_warm_interval=KEEP_WARM, threads=args.threads,
            )
        )  # fmt: skip
        rows["generate_s"].append(gen_wall)
        rows["simulate_wall_s"].append(sim_wall)
        rows["simulate_cpu_s"].append(sim_cpu)
        rows["plan_wall_s"].append(plan_wall)
    med = {k: statistics.median(v) for k, v in rows.items()}
    load = os.getloadavg()
    print(f"{n:,} requests x {len(policies)} policies, concurrency {args.concurrency}, {os.cpu_count()} cores, "
          f"load average {load[0]:.1f}; median of {args.rounds} rounds")  # fmt: skip
    print(f"  generate arrivals:          {med['generate_s']:.2f} s")
    print(f"  simulate {len(policies)} policies:       {med['simulate_wall_s']:.2f} s wall, {med['simulate_cpu_s']:.2f} s CPU "
          f"({n * len(policies) / med['simulate_wall_s'] / 1e6:.1f} M request-policies/s)")  # fmt: skip
    print(f"  snapload.plan() end to end: {med['plan_wall_s']:.2f} s")
    if args.json:
        out = {"requests": n, "policies": len(policies), "concurrency": args.concurrency, "nproc": os.cpu_count(),
               "loadavg": load, "rounds": rows, "median": med, **provenance()}  # fmt: skip
        Path(args.json).write_text(json.dumps(out, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
