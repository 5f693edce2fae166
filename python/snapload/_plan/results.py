"""What a plan returns: per-policy results, the Pareto front, and savings at equal p99."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from snapload._plan.coldstart import ColdStart
from snapload._plan.sim import Policy


@dataclass(frozen=True)
class PolicyResult:
    """One policy under one cold-start time. Latencies are *added* latency: seconds a request
    waited beyond its own service (for a cold start, or in the queue)."""

    policy: Policy
    cold_start: float
    cold_start_label: str
    requests: int
    cold: int  # requests that waited for a cold start
    queued: int  # requests that waited in the queue (max instances reached)
    p50: float
    p95: float
    p99: float
    max: float
    mean: float
    instance_seconds: float
    cost: float
    always_on_ratio: float  # cost / the always-on fleet's cost
    launches: int  # instances started, by requests and by pings
    ping_launches: int  # of which by keep-warm pings that found no instance
    peak_instances: int

    @property
    def cold_fraction(self) -> float:
        return self.cold / self.requests

    @property
    def queued_fraction(self) -> float:
        return self.queued / self.requests


@dataclass(frozen=True)
class Saving:
    """At one p99 target: the cheapest policy meeting it under each cold-start time."""

    p99_target: float
    baseline: PolicyResult | None  # None: no policy reaches the target with this cold start
    candidate: PolicyResult | None

    @property
    def saved(self) -> float | None:
        if self.baseline is None or self.candidate is None:
            return None
        return self.baseline.cost - self.candidate.cost


@dataclass
class PlanResult:
    results: list[PolicyResult]
    cold_starts: list[ColdStart]
    arrivals: str  # what the requests are
    service: str
    concurrency: int
    cost_per_hour: float
    window: tuple[float, float]
    peak_concurrency: int
    always_on_instances: int  # ceil(peak concurrency / concurrency)
    always_on_cost: float

    @property
    def requests(self) -> int:
        return self.results[0].requests

    def for_cold_start(self, index: int) -> list[PolicyResult]:
        label = self.cold_starts[index].label
        return [r for r in self.results if r.cold_start_label == label]

    def pareto(self, index: int = 0) -> list[PolicyResult]:
        """The policies no other beats on both cost and p99, cheapest first."""
        return pareto(self.for_cold_start(index))

    def savings(self, baseline: int = 0, candidate: int = 1) -> list[Saving]:
        """For each p99 on either Pareto front: the cheapest policy reaching it with each cold start."""
        return savings(self.for_cold_start(baseline), self.for_cold_start(candidate))

    def table(self) -> str:
        from snapload._plan import report

        return report.table(self)

    def to_dict(self) -> dict[str, Any]:
        from snapload._plan import report

        return report.to_dict(self)

    def chart(self, path: str | os.PathLike[str], title: str | None = None) -> None:
        from snapload._plan import chart  # matplotlib: imported only when a chart is drawn

        chart.draw(self, os.fspath(path), title)


# p99s closer than this (relative) count as equal: waits such as "the rest of a cold start" are
# differences of floating-point times, and a rounding error must not make a policy look better.
P99_TOLERANCE = 1e-9


def lower(a: float, b: float) -> bool:
    """``a`` is lower than ``b`` by more than rounding."""
    return a < b - P99_TOLERANCE * max(1.0, abs(b))


def pareto(results: list[PolicyResult]) -> list[PolicyResult]:
    """Results that no other result beats on both cost and p99 (ties: the first), cheapest first."""
    front: list[PolicyResult] = []
    for r in sorted(results, key=lambda r: (r.cost, r.p99)):
        if not front or lower(r.p99, front[-1].p99):
            front.append(r)
    return front


def cheapest_within(results: list[PolicyResult], p99: float) -> PolicyResult | None:
    meeting = [r for r in results if not lower(p99, r.p99)]
    return min(meeting, key=lambda r: (r.cost, r.p99)) if meeting else None


def savings(baseline: list[PolicyResult], candidate: list[PolicyResult]) -> list[Saving]:
    """At every p99 on either Pareto front, the cheapest policy that reaches it under each
    cold-start time: what the faster restore saves for the same tail latency."""
    targets: list[float] = []
    for p99 in sorted((r.p99 for r in pareto(baseline) + pareto(candidate)), reverse=True):
        if not targets or lower(p99, targets[-1]):
            targets.append(p99)
    return [Saving(t, cheapest_within(baseline, t), cheapest_within(candidate, t)) for t in targets]
