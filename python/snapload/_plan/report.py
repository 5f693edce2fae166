"""A plan as a terminal table or as JSON."""

from __future__ import annotations

import math
from typing import Any

from snapload._plan.results import PlanResult, PolicyResult, Saving, pareto


def _money(x: float) -> str:
    return f"${x:,.2f}" if x < 1e6 else f"${x:,.0f}"


def _secs(x: float) -> str:
    return f"{x:.2f}" if x < 100 else f"{x:.0f}"


def header(plan: PlanResult) -> list[str]:
    start, end = plan.window
    return [
        f"snapload plan: {plan.arrivals}",
        f"service {plan.service}; concurrency {plan.concurrency} per instance; "
        f"{_money(plan.cost_per_hour)} per instance-hour; window {end - start:,.0f} s",
        f"peak concurrency {plan.peak_concurrency} -> always-on fleet of {plan.always_on_instances} "
        f"instance(s): {_money(plan.always_on_cost)} over the window",
    ]


def table(plan: PlanResult) -> str:
    lines = header(plan)
    head = ("policy", "cold", "queued", "p50", "p95", "p99", "max", "inst-hours", "cost", "vs always-on", "")
    for i, c in enumerate(plan.cold_starts):
        results = plan.for_cold_start(i)
        front = {id(r) for r in pareto(results)}
        rows = [head]
        for r in results:
            rows.append(
                (
                    r.policy.label(),
                    f"{r.cold_fraction:.1%}",
                    f"{r.queued_fraction:.1%}" if r.queued else "-",
                    _secs(r.p50),
                    _secs(r.p95),
                    _secs(r.p99),
                    _secs(r.max),
                    f"{r.instance_seconds / 3600:,.1f}",
                    _money(r.cost),
                    f"{r.always_on_ratio:.2f}x" if math.isfinite(r.always_on_ratio) else "-",
                    "*" if id(r) in front else "",
                )
            )
        widths = [max(len(row[k]) for row in rows) for k in range(len(head))]
        lines += ["", f"cold start {c.label}; added latency in seconds (waiting beyond service)"]
        for row in rows:
            cells = [row[0].ljust(widths[0])] + [cell.rjust(w) for cell, w in zip(row[1:], widths[1:])]
            lines.append("  ".join(cells).rstrip())
    lines += ["", "* on the Pareto front: no other policy is both cheaper and lower in p99."]
    if len(plan.cold_starts) >= 2:
        lines += ["", *savings_table(plan)]
    return "\n".join(lines)


def savings_table(plan: PlanResult) -> list[str]:
    a, b = plan.cold_starts[0].label, plan.cold_starts[1].label
    lines = [f"cost at equal p99: cold start {a} (A) against {b} (B); the cheapest policy reaching each p99"]
    rows = [("p99 <=", "A: policy", "A: cost", "B: policy", "B: cost", "saved")]
    for s in plan.savings(0, 1):
        saved = s.saved
        pct = f" ({saved / s.baseline.cost:.0%})" if saved is not None and s.baseline and s.baseline.cost > 0 else ""
        rows.append(
            (
                _secs(s.p99_target),
                s.baseline.policy.label() if s.baseline else "(none reaches it)",
                _money(s.baseline.cost) if s.baseline else "-",
                s.candidate.policy.label() if s.candidate else "(none reaches it)",
                _money(s.candidate.cost) if s.candidate else "-",
                (_money(saved) + pct) if saved is not None else "-",
            )
        )
    widths = [max(len(r[k]) for r in rows) for k in range(len(rows[0]))]
    for r in rows:
        lines.append("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip())
    return lines


def _result(r: PolicyResult) -> dict[str, Any]:
    p = r.policy
    return {
        "policy": {
            "idle_timeout": p.idle_timeout,
            "min_instances": p.min_instances,
            "keep_warm_interval": p.keep_warm_interval,
            "max_instances": p.max_instances,
            "label": p.label(),
        },
        "cold_start": r.cold_start,
        "cold_start_label": r.cold_start_label,
        "requests": r.requests,
        "cold_starts": r.cold,
        "cold_fraction": r.cold_fraction,
        "queued": r.queued,
        "queued_fraction": r.queued_fraction,
        "added_latency": {"p50": r.p50, "p95": r.p95, "p99": r.p99, "max": r.max, "mean": r.mean},
        "instance_seconds": r.instance_seconds,
        "cost": r.cost,
        "always_on_ratio": r.always_on_ratio if math.isfinite(r.always_on_ratio) else None,
        "launches": r.launches,
        "ping_launches": r.ping_launches,
        "peak_instances": r.peak_instances,
    }


def _saving(s: Saving) -> dict[str, Any]:
    return {
        "p99_target": s.p99_target,
        "baseline": s.baseline.policy.label() if s.baseline else None,
        "baseline_cost": s.baseline.cost if s.baseline else None,
        "candidate": s.candidate.policy.label() if s.candidate else None,
        "candidate_cost": s.candidate.cost if s.candidate else None,
        "saved": s.saved,
    }


def to_dict(plan: PlanResult) -> dict[str, Any]:
    out: dict[str, Any] = {
        "arrivals": plan.arrivals,
        "requests": plan.requests,
        "service": plan.service,
        "concurrency": plan.concurrency,
        "cost_per_hour": plan.cost_per_hour,
        "window": list(plan.window),
        "peak_concurrency": plan.peak_concurrency,
        "always_on_instances": plan.always_on_instances,
        "always_on_cost": plan.always_on_cost,
        "cold_starts": [{"seconds": c.seconds, "label": c.label} for c in plan.cold_starts],
        "results": [_result(r) for r in plan.results],
        "pareto": {c.label: [r.policy.label() for r in plan.pareto(i)] for i, c in enumerate(plan.cold_starts)},
    }
    if len(plan.cold_starts) >= 2:
        out["savings"] = [_saving(s) for s in plan.savings(0, 1)]
    return out
