"""A second, deliberately plain implementation of the `snapload plan` model, written from
docs/planning.md rather than from the Rust event loop: a list of instances scanned at every step,
no heaps, no ordered sets, no deques, no incremental bookkeeping (which instance is idle, partly
busy or still starting is recomputed from its state each time it is asked). tests/test_plan.py
runs both on random traces, at concurrency 1 and above, and compares every number. Slow
(quadratic); for traces of a few hundred requests.

Where the documented rules leave a tie open, this follows the same tie-breaks as the Rust loop, so
that the comparison can be exact: between instances equally busy, the higher instance number; a
reclaimed instance's number is reused by the next launch (most recently freed first); events at
one instant run ready, then completions, by instance number; among idle instances, the one that
became idle last (in event order).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field


@dataclass
class Inst:
    id: int
    launched: float
    ready_at: float
    permanent: bool
    running: list[float] = field(default_factory=list)  # finish times of its requests
    ready_done: bool = False  # its "ready" moment has been processed
    idle_since: float = 0.0
    idle_order: int = -1  # when it last became idle, in event order (LIFO reuse of idle instances)
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
    concurrency: int = 1,
) -> Result:  # fmt: skip
    n = len(arrivals)
    c = concurrency
    res = Result([0.0] * n, [0] * n)
    insts: list[Inst] = []  # every instance ever, reclaimed ones included
    free_ids: list[int] = []
    next_id = 0
    order = 0
    cap = max_instances if max_instances is not None else math.inf
    last_done = -math.inf

    def alive() -> list[Inst]:
        return [i for i in insts if i.gone is None]

    def new_instance(t: float, ready_at: float, permanent: bool) -> Inst:
        nonlocal next_id
        if free_ids:
            number = free_ids.pop()
        else:
            number, next_id = next_id, next_id + 1
        inst = Inst(number, t, ready_at, permanent, ready_done=permanent, idle_since=ready_at)
        insts.append(inst)
        res.peak_instances = max(res.peak_instances, len(alive()))
        return inst

    def became_idle(inst: Inst, t: float) -> None:
        nonlocal order
        inst.idle_since, inst.idle_order = t, order
        order += 1

    def is_ready(i: Inst) -> bool:
        return i.ready_done

    def idle(i: Inst) -> bool:
        return not i.permanent and is_ready(i) and not i.running

    def advance(t: float) -> None:
        """Process every event up to t: instances becoming ready, then completions, in time order
        (ready before completion at one instant, then by instance number)."""
        nonlocal last_done
        while True:
            pending = [(i.ready_at, 0, i.id, i, None) for i in alive() if not i.ready_done and i.ready_at <= t]
            pending += [(f, 1, i.id, i, f) for i in alive() if i.ready_done for f in i.running if f <= t]
            if not pending:
                return
            when, kind, _, inst, f = min(pending, key=lambda e: (e[0], e[1], e[2]))
            if kind == 0:
                inst.ready_done = True
                if not inst.running:
                    became_idle(inst, when)
                continue
            last_done = when
            inst.running.remove(f)
            if res.queue:  # every slot was taken: the freed one goes to the first in line
                j = res.queue.pop(0)
                res.added[j], res.start[j] = when - arrivals[j], 3
                inst.running.append(when + service[j])
            elif idle(inst):
                became_idle(inst, when)

    def reclaim(t: float) -> None:
        for i in sorted((i for i in alive() if idle(i)), key=lambda i: i.idle_order):
            if i.idle_since + idle_timeout <= t:
                i.gone = i.idle_since + idle_timeout
                free_ids.append(i.id)

    def launch(t: float) -> Inst:
        inst = new_instance(t, t + cold, False)
        res.launches += 1
        return inst

    for _ in range(min_instances):
        new_instance(0.0, 0.0, True)
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
        busiest = lambda pool: max(pool, key=lambda i: (len(i.running), i.id))  # noqa: E731
        permanent_free = [i for i in alive() if i.permanent and len(i.running) < c]
        partly_busy = [i for i in alive() if not i.permanent and is_ready(i) and 0 < len(i.running) < c]
        idle_now = [i for i in alive() if idle(i)]
        starting_free = [i for i in alive() if not is_ready(i) and len(i.running) < c]
        assert len(starting_free) <= 1
        if kind == 0:  # a ping: goes where a request would, costs nothing there
            if permanent_free or partly_busy:
                continue
            if idle_now:
                max(idle_now, key=lambda i: i.idle_order).idle_since = t  # its timer restarts
            elif not starting_free and not alive():
                launch(t)
                res.ping_launches += 1
            continue
        if permanent_free:
            busiest(permanent_free).running.append(t + service[k])
        elif partly_busy:
            busiest(partly_busy).running.append(t + service[k])
        elif idle_now:
            max(idle_now, key=lambda i: i.idle_order).running.append(t + service[k])
        elif starting_free:
            inst = starting_free[0]
            inst.running.append(inst.ready_at + service[k])
            res.added[k], res.start[k] = inst.ready_at - t, 2
        elif len(alive()) < cap:
            inst = launch(t)
            inst.running.append(t + cold + service[k])
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
