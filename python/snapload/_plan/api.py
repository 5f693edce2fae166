"""``snapload.plan()``: simulate keep-warm policies over a request trace for one or more cold-start
times, and return costs and added latencies per policy."""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from typing import Any

import numpy.typing as npt

from snapload._plan import coldstart, sim, traces
from snapload._plan import service as service_spec
from snapload._plan.results import PlanResult, PolicyResult

DEFAULT_IDLE_TIMEOUTS = (0.0, 10.0, 60.0, 300.0, 900.0, 1800.0)


def _as_list(value: Any) -> list[Any]:
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
        return [value]
    return list(value)


def load_arrivals(arrivals: npt.ArrayLike | str | os.PathLike[str], duration: float | None, seed: int) -> traces.Arrivals:
    """A pattern string (``poisson:RATE`` ...), a trace file, or times in seconds."""
    if isinstance(arrivals, str) and traces.PATTERN.match(arrivals):
        if duration is None:
            raise ValueError(f"{arrivals}: a synthetic pattern needs a duration")
        return traces.generate(arrivals, duration, seed)
    if isinstance(arrivals, (str, os.PathLike)):
        return traces.read_trace(arrivals)
    return traces.from_array(arrivals)


def plan(
    arrivals: npt.ArrayLike | str | os.PathLike[str],
    *,
    cold_start: float | str | Sequence[float | str],
    service: float | str = 1.0,
    concurrency: int = 1,
    cost_per_hour: float = 1.0,
    idle_timeout: float | Sequence[float] = DEFAULT_IDLE_TIMEOUTS,
    min_instances: int | Sequence[int] = 0,
    keep_warm_interval: float | None | Sequence[float | None] = None,
    max_instances: int | None | Sequence[int | None] = None,
    duration: float | None = None,
    seed: int = 0,
    threads: int = 0,
) -> PlanResult:
    """Simulate every combination of the policy lists for each cold-start time.

    ``arrivals``: request times in seconds from the window start (an array), a CSV trace file
    (one time per line or a ``timestamp`` column), or a pattern with ``duration``:
    ``"poisson:RATE"``, ``"diurnal:MEAN[,AMPLITUDE[,PERIOD]]"``,
    ``"bursty:QUIET_RATE,BURST_RATE,MEAN_BURST_S,MEAN_QUIET_S"``. ``cold_start``: seconds, or a
    report file (see ``snapload plan --help``); a list gives one set of results per value.
    ``service``: seconds, ``"exp:MEAN"``, ``"lognormal:MEDIAN,SIGMA"`` or ``"uniform:A,B"``.
    ``cost_per_hour``: price of one instance-hour. ``seed`` drives the synthetic arrivals and the
    service-time samples. Bad input raises ValueError (trace errors name the line).
    """
    if not (math.isfinite(cost_per_hour) and cost_per_hour > 0):
        raise ValueError(f"cost per hour must be a number > 0, got {cost_per_hour:g}")
    if duration is not None and not (math.isfinite(duration) and duration > 0):
        raise ValueError(f"duration must be a number of seconds > 0, got {duration:g}")
    colds = [coldstart.parse_cold_start(c) for c in _as_list(cold_start)]
    if not colds:
        raise ValueError("no cold-start time given")
    labels = [c.label for c in colds]
    if len(set(labels)) != len(labels):
        raise ValueError(f"the same cold start is given twice: {', '.join(labels)}")
    dist = service_spec.parse_service(service)
    policies = sim.policy_grid(_as_list(idle_timeout), _as_list(min_instances), _as_list(keep_warm_interval), _as_list(max_instances))
    arr = load_arrivals(arrivals, duration, seed)
    times = arr.times
    service_times = dist.sample(times.size, seed)
    w = sim.make_workload(times, service_times, int(concurrency), duration or arr.duration)
    peak = sim.peak_concurrency(times, service_times)
    fleet = math.ceil(peak / w.concurrency)
    window = w.end - w.start
    always_on = fleet * window / 3600 * cost_per_hour
    results: list[PolicyResult] = []
    for c in colds:
        for p, o in zip(policies, sim.simulate(w, c.seconds, policies, threads)):
            cost = o.instance_seconds / 3600 * cost_per_hour
            results.append(
                PolicyResult(
                    policy=p,
                    cold_start=c.seconds,
                    cold_start_label=c.label,
                    requests=o.requests,
                    cold=o.cold,
                    queued=o.queued,
                    p50=o.p50,
                    p95=o.p95,
                    p99=o.p99,
                    max=o.max,
                    mean=o.mean,
                    instance_seconds=o.instance_seconds,
                    cost=cost,
                    always_on_ratio=cost / always_on if always_on > 0 else math.inf,
                    launches=o.launches,
                    ping_launches=o.ping_launches,
                    peak_instances=o.peak_instances,
                )
            )
    return PlanResult(
        results=results,
        cold_starts=colds,
        arrivals=arr.description,
        service=dist.describe(),
        concurrency=w.concurrency,
        cost_per_hour=cost_per_hour,
        window=(w.start, w.end),
        peak_concurrency=peak,
        always_on_instances=fleet,
        always_on_cost=always_on,
    )
