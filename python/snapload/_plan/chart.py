"""The plan as a chart: cost against p99 added latency, one colour per cold-start time, every
policy a dot and the Pareto front a step line (the cheapest cost for each p99 budget). Uses matplotlib's object API (no pyplot), so drawing a
chart never changes the caller's backend or open figures."""

from __future__ import annotations

import textwrap

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from snapload._plan.results import PlanResult

COLORS = ("#d62728", "#1f77b4", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b")


def draw(plan: PlanResult, path: str, title: str | None = None) -> None:
    fig = Figure(figsize=(10, 6.5), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    right = max(r.p99 for r in plan.results) * 1.15 or 1.0
    for i, c in enumerate(plan.cold_starts):
        color = COLORS[i % len(COLORS)]
        results = plan.for_cold_start(i)
        ax.scatter([r.p99 for r in results], [r.cost for r in results], s=22, color=color, alpha=0.3, linewidths=0)
        front = sorted(plan.pareto(i), key=lambda r: r.p99)
        # A step, not a slope: for a p99 budget between two front points, the cheapest policy is
        # the one at the lower p99; nothing in between exists.
        xs = [r.p99 for r in front] + [right]
        ys = [r.cost for r in front] + [front[-1].cost]
        ax.plot(xs, ys, drawstyle="steps-post", color=color, linewidth=1.5)
        ax.plot(
            xs[:-1],
            ys[:-1],
            "o",
            color=color,
            label=f"cold start {c.label}: Pareto front ({len(front)} of {len(results)} policies)",
        )
        for r in front:
            ax.annotate(
                r.policy.label(),
                (r.p99, r.cost),
                xytext=(6, 6 if i % 2 == 0 else -13),
                textcoords="offset points",
                fontsize=7,
                color=color,
            )
    ax.axhline(plan.always_on_cost, linestyle="--", color="0.4", linewidth=1, label=f"always-on fleet ({plan.always_on_instances} instances)")
    ax.scatter([], [], s=22, color="0.5", alpha=0.4, linewidths=0, label="every policy simulated (faint)")
    ax.set_xlabel("p99 added latency (s): time a request waits for a cold start or in the queue")
    ax.set_ylabel(f"cost over the window (USD, ${plan.cost_per_hour:g} per instance-hour)")
    ax.set_xlim(-0.02 * right, right)
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    ax.legend(loc="upper right", fontsize=8)
    heading = title or f"Keep-warm policies: cost against p99 added latency. {plan.arrivals}; service {plan.service}"
    ax.set_title("\n".join(textwrap.wrap(heading, 100)), fontsize=10)
    fig.savefig(path, dpi=120)
