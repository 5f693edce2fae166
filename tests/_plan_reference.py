"""A second, deliberately plain implementation of the `snapload plan` model for one request per
instance, written from docs/planning.md rather than from the Rust event loop: a list of instances
scanned at every decision, no heaps, no deques. tests/test_plan.py runs both on random traces and
compares every number. Slow (quadratic); for traces of a few hundred requests."""

from __future__ import annotations

import math
from dataclasses import dataclass, field


@dataclass
class Inst:
    launched: float
    ready_at: float
    permanent: bool
    busy_until: float | None = None  # finish time of the request in service
    idle_since: float = 0.0
    gone: float | None = None  # reclaim time


@dataclass
class Result:
    added: list[float]
    start: list[int]  # 0 warm, 1 launched, 2 joined a starting instance, 3 queued
    instance_seconds: float = 0.0
    launches: int = 0
    ping_launches: int = 0
    peak_instances: int = 0
    queue: list[int] = field(default_factory=list)


def simulate(
    arrivals: list[float], service: list[float], cold: float, end: float,
    idle_timeout: float, min_instances: int, ping: float | None, max_instances: int | None,
) -> Result:  # fmt: skip
    n = len(arrivals)
    res = Result([0.0] * n, [0] * n)
    insts = [Inst(0.0, 0.0, True) for _ in range(min_instances)]
    cap = max_instances if max_instances is not None else math.inf
    last_done = -math.inf

    def alive() -> list[Inst]:
        return [i for i in insts if i.gone is None]

    def advance(t: float) -> None:
        """Finish every request ending by t, in time order, handing freed slots to the queue."""
        nonlocal last_done
        while True:
            busy = [i for i in alive() if i.busy_until is not None and i.busy_until <= t]
            if not busy:
                return
            inst = min(busy, key=lambda i: i.busy_until)  # type: ignore[arg-type, return-value]
            f = inst.busy_until
            assert f is not None
            last_done = f
            inst.busy_until = None
            inst.idle_since = f
            if res.queue:
                j = res.queue.pop(0)
                res.added[j], res.start[j] = f - arrivals[j], 3
                inst.busy_until = f + service[j]

    def reclaim(t: float) -> None:
        for i in alive():
            if not i.permanent and i.busy_until is None and i.ready_at <= t and i.idle_since + idle_timeout <= t:
                i.gone = i.idle_since + idle_timeout

    def launch(t: float) -> Inst:
        inst = Inst(t, t + cold, False, idle_since=t + cold)
        insts.append(inst)
        res.launches += 1
        res.peak_instances = max(res.peak_instances, len(alive()))
        return inst

    res.peak_instances = min_instances
    pings = []
    if ping is not None:
        k = 0
        while k * ping < end:
            pings.append(k * ping)
            k += 1
    decisions = sorted([(t, 0, k) for k, t in enumerate(pings)] + [(t, 1, k) for k, t in enumerate(arrivals)])
    for t, kind, k in decisions:
        advance(t)
        reclaim(t)
        free_perm = [i for i in alive() if i.permanent and i.busy_until is None]
        idle = [i for i in alive() if not i.permanent and i.busy_until is None and i.ready_at <= t]
        starting_free = [i for i in alive() if i.busy_until is None and i.ready_at > t]
        if kind == 0:  # a ping
            if free_perm:
                continue
            if idle:
                max(idle, key=lambda i: i.idle_since).idle_since = t
            elif not starting_free and not alive():
                launch(t)
                res.ping_launches += 1
            continue
        if free_perm:
            free_perm[0].busy_until = t + service[k]
        elif idle:
            max(idle, key=lambda i: i.idle_since).busy_until = t + service[k]
        elif starting_free:
            inst = starting_free[0]
            inst.busy_until = inst.ready_at + service[k]
            res.added[k], res.start[k] = inst.ready_at - t, 2
        elif len(alive()) < cap:
            inst = launch(t)
            inst.busy_until = t + cold + service[k]
            res.added[k], res.start[k] = cold, 1
        else:
            res.queue.append(k)
    advance(math.inf)
    assert not res.queue
    for i in alive():
        if not i.permanent:
            i.gone = i.idle_since + idle_timeout
    res.instance_seconds = sum(i.gone - i.launched for i in insts if not i.permanent and i.gone is not None)
    res.instance_seconds += min_instances * (max(end, last_done) - 0.0)
    return res
