"""Per-request service times: a fixed value or a distribution, sampled with the plan's seed."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

FORMS = "SECONDS, exp:MEAN, lognormal:MEDIAN,SIGMA or uniform:A,B"


@dataclass(frozen=True)
class Service:
    kind: str  # "fixed", "exp", "lognormal", "uniform"
    params: tuple[float, ...]

    def sample(self, n: int, seed: int) -> npt.NDArray[np.float64]:
        # A stream of its own (the arrivals use [seed, 0]).
        rng = np.random.default_rng([seed, 1])
        if self.kind == "fixed":
            return np.full(n, self.params[0])
        if self.kind == "exp":
            return rng.exponential(self.params[0], n)
        if self.kind == "lognormal":
            median, sigma = self.params
            return rng.lognormal(math.log(median), sigma, n)
        a, b = self.params
        return rng.uniform(a, b, n)

    def describe(self) -> str:
        p = self.params
        if self.kind == "fixed":
            return f"{p[0]:g} s"
        if self.kind == "exp":
            return f"exponential, mean {p[0]:g} s"
        if self.kind == "lognormal":
            return f"lognormal, median {p[0]:g} s, sigma {p[1]:g}"
        return f"uniform {p[0]:g}-{p[1]:g} s"


def parse_service(spec: str | float) -> Service:
    """``0.5`` (seconds, fixed), ``exp:MEAN``, ``lognormal:MEDIAN,SIGMA`` or ``uniform:A,B``."""
    if not isinstance(spec, str):
        spec = repr(float(spec))
    kind, sep, rest = spec.strip().partition(":")
    values: tuple[float, ...]
    try:
        if not sep:
            values = (float(kind),)
            kind = "fixed"
        else:
            values = tuple(float(v) for v in rest.split(","))
    except ValueError:
        raise ValueError(f"service time {spec!r}: expected {FORMS}") from None
    arity = {"fixed": 1, "exp": 1, "lognormal": 2, "uniform": 2}
    if kind not in arity or len(values) != arity[kind]:
        raise ValueError(f"service time {spec!r}: expected {FORMS}")
    if not all(math.isfinite(v) for v in values):
        raise ValueError(f"service time {spec!r}: values must be finite")
    if kind == "fixed" and values[0] < 0:
        raise ValueError(f"service time {spec!r} must be >= 0")
    if kind in ("exp", "lognormal") and values[0] <= 0:
        raise ValueError(f"service time {spec!r}: the {'mean' if kind == 'exp' else 'median'} must be > 0")
    if kind == "lognormal" and values[1] < 0:
        raise ValueError(f"service time {spec!r}: sigma must be >= 0")
    if kind == "uniform" and not 0 <= values[0] <= values[1]:
        raise ValueError(f"service time {spec!r}: need 0 <= A <= B")
    return Service(kind, values)
