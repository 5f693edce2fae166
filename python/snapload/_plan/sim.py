"""Policies and the call into the core's event loop (``snapload_core::plan``)."""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from snapload import _native

Floats = npt.NDArray[np.float64]


# Each minimum instance is simulated as an instance; more than this is surely a typo, not a plan.
MAX_INSTANCES = 1_000_000


@dataclass(frozen=True)
class Policy:
    """``idle_timeout``: seconds an idle instance lives; ``min_instances``: kept warm always;
    ``keep_warm_interval``: seconds between pings (None: no pings); ``max_instances``: cap (None:
    unlimited), beyond which requests queue."""

    idle_timeout: float
    min_instances: int = 0
    keep_warm_interval: float | None = None
    max_instances: int | None = None

    def label(self) -> str:
        parts = [f"idle {_seconds(self.idle_timeout)}"]
        if self.min_instances:
            parts.append(f"min {self.min_instances}")
        if self.keep_warm_interval is not None:
            parts.append(f"ping {_seconds(self.keep_warm_interval)}")
        if self.max_instances is not None:
            parts.append(f"max {self.max_instances}")
        return ", ".join(parts)

    def check(self) -> None:
        if not (math.isfinite(self.idle_timeout) and self.idle_timeout >= 0):
            raise ValueError(f"idle timeout must be a number of seconds >= 0, got {self.idle_timeout:g}")
        if not 0 <= self.min_instances <= MAX_INSTANCES:
            raise ValueError(f"min instances must be between 0 and {MAX_INSTANCES:,}, got {self.min_instances}")
        kw = self.keep_warm_interval
        if kw is not None and not (math.isfinite(kw) and kw > 0):
            raise ValueError(f"keep-warm interval must be a number of seconds > 0, got {kw:g}")
        m = self.max_instances
        if m is not None and (m < 1 or m < self.min_instances or m > 2**32 - 1):
            raise ValueError(f"max instances must be >= 1 and >= min instances ({self.min_instances}), got {m}")


def _seconds(s: float) -> str:
    if s >= 3600 and s % 3600 == 0:
        return f"{s / 3600:g}h"
    if s >= 60 and s % 60 == 0:
        return f"{s / 60:g}m"
    return f"{s:g}s"


def policy_grid(
    idle_timeouts: Iterable[float],
    min_instances: Iterable[int] = (0,),
    keep_warm_intervals: Iterable[float | None] = (None,),
    max_instances: Iterable[int | None] = (None,),
) -> list[Policy]:
    """Every combination of the lists, each policy checked."""
    grid = [Policy(*combo) for combo in itertools.product(idle_timeouts, min_instances, keep_warm_intervals, max_instances)]
    for p in grid:
        p.check()
    return grid


@dataclass(frozen=True)
class Workload:
    arrivals: Floats
    service: Floats
    concurrency: int
    start: float
    end: float


def make_workload(arrivals: Floats, service: Floats, concurrency: int, duration: float) -> Workload:
    """The window runs from 0 to the later of ``duration`` and the last request's completion
    without any cold start."""
    if not 1 <= concurrency <= 2**32 - 1:
        raise ValueError(f"concurrency must be between 1 and {2**32 - 1:,}, got {concurrency}")
    end = max(duration, float(np.max(arrivals + service)))
    return Workload(np.ascontiguousarray(arrivals), np.ascontiguousarray(service), concurrency, 0.0, end)


def peak_concurrency(arrivals: Floats, service: Floats) -> int:
    """Most requests in service at once when none waits: each occupies [arrival, arrival +
    service). A request ending at t and one arriving at t do not overlap."""
    ends = np.sort(arrivals + service)
    # In service just after arrival i: i + 1 arrived so far, minus those ended by then.
    in_service = np.arange(1, arrivals.size + 1) - np.searchsorted(ends, arrivals, side="right")
    return int(in_service.max())


def _row(p: Policy) -> tuple[float, int, float | None, int | None]:
    return (float(p.idle_timeout), int(p.min_instances), p.keep_warm_interval, p.max_instances)


def simulate(w: Workload, cold_start: float, policies: Sequence[Policy], threads: int = 0) -> list[_native.PlanOutcome]:
    """Summaries of every policy, on ``threads`` threads (0: one per core), GIL released."""
    if threads < 0:
        raise ValueError(f"threads must be 0 (one per core) or more, got {threads}")
    return _native.plan_simulate(w.arrivals, w.service, cold_start, w.concurrency, w.start, w.end, [_row(p) for p in policies], threads)


@dataclass(frozen=True)
class Detail:
    """One policy's per-request results: ``added`` latency (seconds) and ``start`` (0 warm, 1
    launched an instance, 2 joined a starting instance, 3 queued)."""

    outcome: _native.PlanOutcome
    added: Floats
    start: npt.NDArray[np.uint8]


def simulate_detail(w: Workload, cold_start: float, policy: Policy) -> Detail:
    o, added, start = _native.plan_simulate_detail(w.arrivals, w.service, cold_start, w.concurrency, w.start, w.end, _row(policy))
    return Detail(o, np.frombuffer(added, dtype=np.float64), np.frombuffer(start, dtype=np.uint8))
