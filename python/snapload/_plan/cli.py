"""``snapload plan``: the subcommand. ``register`` adds it to the CLI and is light (argparse only);
``run`` imports the simulation."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from snapload._plan.coldstart import HELP as COLD_START_HELP

DESCRIPTION = """\
Simulate instances serving a request trace under keep-warm policies, and report for each policy the
cold-start fraction, the added latency (time a request waits beyond its own service: for a cold
start, or in the queue when --max-instances is reached), instance-hours and cost, and the ratio to
an always-on fleet sized to the peak concurrency. Policy options take comma-separated lists; every
combination is simulated. See docs/planning.md for the model."""

EPILOG = """\
examples:
  snapload plan --poisson 0.05 --duration 86400 --cold-start 9.2 --idle-timeout 0,60,300,900
  snapload plan --trace requests.csv --compare-cold-start \\
      benches/results/coldstart.json:st_assign,benches/results/coldstart.json:snapload_prefetch_nowait \\
      --min-instances 0,1 --chart plan.png"""


def _list(text: str, item: Any, what: str) -> list[Any]:
    try:
        values = [item(v.strip()) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{what}: {text!r} is not a comma-separated list") from None
    if not values:
        raise argparse.ArgumentTypeError(f"{what}: empty list")
    return values


def _optional(convert: Any) -> Any:
    def parse(v: str) -> Any:
        return None if v.lower() in ("none", "off", "inf", "-") else convert(v)

    return parse


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "plan",
        help="simulate keep-warm policies: cold starts, added latency and cost for a request trace",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    src = p.add_argument_group("requests (one of)").add_mutually_exclusive_group(required=True)
    src.add_argument("--trace", metavar="FILE", help="CSV: one request time (seconds or ISO 8601) per line, or a column named 'timestamp'")
    src.add_argument("--poisson", metavar="RATE", type=float, help="Poisson arrivals, RATE requests/s (needs --duration)")
    src.add_argument("--diurnal", metavar="MEAN[,AMP[,PERIOD]]", help="rate MEAN*(1-AMP*cos(2 pi t/PERIOD)), defaults AMP 0.8, PERIOD 86400 s")
    src.add_argument("--bursty", metavar="Q,B,BURST_S,QUIET_S", help="quiet periods at Q req/s and bursts at B req/s, exponential lengths of mean QUIET_S and BURST_S")
    p.add_argument("--duration", type=float, metavar="SECONDS", help="length of a synthetic pattern (with --trace: extends the window)")
    p.add_argument("--seed", type=int, default=0, metavar="N", help="seed for synthetic arrivals and service times (default 0)")
    cold = p.add_argument_group("cold start (one of)").add_mutually_exclusive_group(required=True)
    cold.add_argument("--cold-start", metavar="S,...", help=COLD_START_HELP + "; a list gives one curve per value")
    cold.add_argument("--compare-cold-start", metavar="A,B", help="two cold starts (same forms): the policies under each, and the cost saved by B at equal p99")
    p.add_argument("--service", default="1", metavar="SPEC", help="per-request service time: SECONDS, exp:MEAN, lognormal:MEDIAN,SIGMA or uniform:A,B (default 1)")
    p.add_argument("--concurrency", type=int, default=1, metavar="N", help="requests one instance serves at once (default 1)")
    p.add_argument("--cost-per-hour", type=float, default=1.0, metavar="USD", help="price of one instance-hour (default 1: costs read as instance-hours)")
    pol = p.add_argument_group("policies (comma-separated lists; every combination is simulated)")
    pol.add_argument("--idle-timeout", default="0,10,60,300,900,1800", metavar="S,...", help="seconds an idle instance lives before it is reclaimed (default 0,10,60,300,900,1800)")
    pol.add_argument("--min-instances", default="0", metavar="N,...", help="instances kept warm always (default 0)")
    pol.add_argument("--keep-warm-interval", default="none", metavar="S,...", help="a ping every S seconds keeps one instance alive, or starts one (a cold start no user sees); 'none': no pings (default)")
    pol.add_argument("--max-instances", default="none", metavar="N,...", help="instance cap; requests beyond it queue ('none': no cap, the default)")
    out = p.add_argument_group("output")
    out.add_argument("--json", action="store_true", help="print the results as JSON")
    out.add_argument("--chart", metavar="FILE.png", help="draw cost against p99 added latency, Pareto fronts marked (matplotlib)")
    out.add_argument("--threads", type=int, default=0, metavar="N", help="simulation threads (default: one per core)")
    p.set_defaults(handler=run)


def _arrivals(args: argparse.Namespace) -> str:
    if args.trace is not None:
        return str(args.trace)
    if args.poisson is not None:
        return f"poisson:{args.poisson!r}"
    if args.diurnal is not None:
        return f"diurnal:{args.diurnal}"
    return f"bursty:{args.bursty}"


def run(args: argparse.Namespace) -> int:
    from snapload._plan.api import plan
    from snapload.cli import UsageError

    try:
        if args.compare_cold_start is not None:
            cold = _list(args.compare_cold_start, str, "--compare-cold-start")
            if len(cold) != 2:
                raise UsageError(f"--compare-cold-start takes exactly two values, got {len(cold)}")
        else:
            cold = _list(args.cold_start, str, "--cold-start")
        arrivals = _arrivals(args)
        if args.trace is None and args.duration is None:
            raise UsageError("a synthetic pattern needs --duration SECONDS")
        result = plan(
            arrivals,
            cold_start=cold,
            service=args.service,
            concurrency=args.concurrency,
            cost_per_hour=args.cost_per_hour,
            idle_timeout=_list(args.idle_timeout, float, "--idle-timeout"),
            min_instances=_list(args.min_instances, int, "--min-instances"),
            keep_warm_interval=_list(args.keep_warm_interval, _optional(float), "--keep-warm-interval"),
            max_instances=_list(args.max_instances, _optional(int), "--max-instances"),
            duration=args.duration,
            seed=args.seed,
            threads=args.threads,
        )
    except (ValueError, argparse.ArgumentTypeError) as e:
        raise UsageError(str(e)) from None
    if args.chart:
        try:
            result.chart(args.chart)
        except ImportError as e:  # matplotlib is an optional dependency (the `plan` extra)
            raise UsageError(f"--chart needs matplotlib: pip install 'snapload[plan]' ({e})") from None
    if args.json:
        print(json.dumps(result.to_dict(), indent=2))
    else:
        print(result.table())
        if args.chart:
            print(f"\nchart written to {args.chart}")
    if args.chart and args.json:
        print(f"chart written to {args.chart}", file=sys.stderr)
    return 0
