"""Request arrival times: a trace file, or a synthetic pattern (Poisson, diurnal, bursty)."""

from __future__ import annotations

import csv
import datetime
import math
import os
import re
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

Floats = npt.NDArray[np.float64]

PATTERN = re.compile(r"^(poisson|diurnal|bursty):(.*)$")


@dataclass(frozen=True)
class Arrivals:
    """Sorted arrival times, shifted so the window starts at 0, and the window's nominal length
    (a pattern's duration; for a trace, 0: the window then ends with the last request)."""

    times: Floats
    duration: float
    description: str


# --------------------------------------------------------------------------------------------
# Trace files


def read_trace(path: str | os.PathLike[str]) -> Arrivals:
    """Read a CSV trace: one request time per line, or a header row with a ``timestamp`` column.
    A time is seconds (any offset, e.g. Unix time) or an ISO 8601 date-time (UTC unless it says
    otherwise). Blank lines and lines starting with ``#`` are skipped; unsorted input is sorted.
    Raises ValueError naming the file and line for anything else."""
    name = os.fspath(path)
    with open(name, newline="") as f:
        rows = csv.reader(f)
        column: int | None = None
        values: list[str] = []
        lines: list[int] = []
        for row in rows:
            if not row or not "".join(row).strip() or row[0].lstrip().startswith("#"):
                continue
            if column is None:
                column = _first_row(name, rows.line_num, row, values, lines)
                continue
            if len(row) <= column:
                raise ValueError(f"{name} line {rows.line_num}: {len(row)} column(s), expected at least {column + 1}")
            values.append(row[column])
            lines.append(rows.line_num)
    if not values:
        raise ValueError(f"{name}: the trace has no requests")
    times = _to_seconds(name, values, lines)
    bad = np.flatnonzero(~np.isfinite(times) | (times < 0))
    if bad.size:
        i = int(bad[0])
        what = "negative" if times[i] < 0 else "not a finite number"
        raise ValueError(f"{name} line {lines[i]}: request time {values[i].strip()!r} is {what}")
    times = np.sort(times, kind="stable")
    times -= times[0]
    return Arrivals(times, 0.0, f"trace {name} ({times.size} requests over {times[-1]:.0f} s)")


def _first_row(name: str, line: int, row: list[str], values: list[str], lines: list[int]) -> int:
    """Decide from the first row whether it is a header; return the column to read."""
    cells = [c.strip() for c in row]
    if len(cells) == 1 and _is_time(cells[0]):
        values.append(row[0])
        lines.append(line)
        return 0
    lowered = [c.lower() for c in cells]
    if "timestamp" in lowered:
        return lowered.index("timestamp")
    if len(cells) == 1:
        raise ValueError(f"{name} line {line}: {cells[0]!r} is not a request time, and not a header naming a 'timestamp' column")
    raise ValueError(f"{name} line {line}: {len(cells)} columns but none named 'timestamp' (columns: {', '.join(cells)})")


def _is_time(text: str) -> bool:
    try:
        float(text)
        return True
    except ValueError:
        return _iso_seconds(text) is not None


def _iso_seconds(text: str) -> float | None:
    try:
        t = datetime.datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        return None
    if t.tzinfo is None:
        t = t.replace(tzinfo=datetime.timezone.utc)
    return t.timestamp()


def _to_seconds(name: str, values: list[str], lines: list[int]) -> Floats:
    try:
        # numpy parses the common case (plain numbers) in C; a million lines take ~0.1 s.
        return np.asarray(values, dtype=np.str_).astype(np.float64)
    except ValueError:
        pass
    out = np.empty(len(values), dtype=np.float64)
    for i, text in enumerate(values):
        try:
            out[i] = float(text)
            continue
        except ValueError:
            seconds = _iso_seconds(text)
        if seconds is None:
            raise ValueError(f"{name} line {lines[i]}: {text.strip()!r} is not a number of seconds or an ISO 8601 time")
        out[i] = seconds
    return out


# --------------------------------------------------------------------------------------------
# Synthetic patterns


def _positive(value: float, what: str) -> float:
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"{what} must be a number > 0, got {value:g}")
    return value


def _numbers(spec: str, what: str, lo: int, hi: int) -> list[float]:
    parts = [p for p in spec.split(",") if p.strip()]
    if not lo <= len(parts) <= hi:
        want = str(lo) if lo == hi else f"{lo} to {hi}"
        raise ValueError(f"{what}: expected {want} comma-separated numbers, got {spec!r}")
    try:
        return [float(p) for p in parts]
    except ValueError:
        raise ValueError(f"{what}: {spec!r} is not a list of numbers") from None


def poisson(rate: float, duration: float, rng: np.random.Generator) -> Floats:
    """Homogeneous Poisson arrivals: a Poisson count, then uniform times (exact, vectorised)."""
    _positive(rate, "Poisson rate")
    _positive(duration, "duration")
    n = rng.poisson(rate * duration)
    return np.sort(rng.uniform(0.0, duration, n))


def diurnal(mean_rate: float, amplitude: float, period: float, duration: float, rng: np.random.Generator) -> Floats:
    """Poisson arrivals with rate ``mean_rate * (1 - amplitude * cos(2 pi t / period))``: the trough
    at t = 0 (night), the peak at half a period, by thinning a Poisson process at the peak rate."""
    _positive(mean_rate, "diurnal mean rate")
    _positive(period, "diurnal period")
    if not 0 <= amplitude <= 1:
        raise ValueError(f"diurnal amplitude must be between 0 and 1, got {amplitude:g}")
    peak = mean_rate * (1 + amplitude)
    t = poisson(peak, duration, rng)
    rate = mean_rate * (1 - amplitude * np.cos(2 * np.pi * t / period))
    return t[rng.uniform(0.0, peak, t.size) < rate]


def bursty(quiet_rate: float, burst_rate: float, mean_burst: float, mean_quiet: float, duration: float, rng: np.random.Generator) -> Floats:
    """A two-state Markov-modulated Poisson process: quiet periods (rate ``quiet_rate``) and bursts
    (``burst_rate``) alternate, with exponentially distributed lengths of the given means,
    starting quiet. ``quiet_rate`` may be 0."""
    if not (math.isfinite(quiet_rate) and quiet_rate >= 0):
        raise ValueError(f"bursty quiet rate must be a number >= 0, got {quiet_rate:g}")
    _positive(burst_rate, "bursty burst rate")
    _positive(mean_burst, "bursty mean burst length")
    _positive(mean_quiet, "bursty mean quiet length")
    _positive(duration, "duration")
    # Enough alternations to cover the duration with overwhelming probability, then more if not.
    pairs = max(16, int(2 * duration / (mean_burst + mean_quiet)) + 16)
    while True:
        lengths = np.empty(2 * pairs)
        lengths[0::2] = rng.exponential(mean_quiet, pairs)
        lengths[1::2] = rng.exponential(mean_burst, pairs)
        ends = np.cumsum(lengths)
        if ends[-1] >= duration:
            break
        pairs *= 2
    keep = int(np.searchsorted(ends, duration)) + 1
    starts = np.concatenate(([0.0], ends[: keep - 1]))
    ends = np.minimum(ends[:keep], duration)
    rates = np.where(np.arange(keep) % 2 == 0, quiet_rate, burst_rate)
    counts = rng.poisson(rates * (ends - starts))
    begin = np.repeat(starts, counts)
    span = np.repeat(ends - starts, counts)
    return np.sort(begin + rng.uniform(0.0, 1.0, begin.size) * span)


def generate(spec: str, duration: float, seed: int) -> Arrivals:
    """``poisson:RATE``, ``diurnal:MEAN_RATE[,AMPLITUDE[,PERIOD]]`` (defaults 0.8 and 86400 s) or
    ``bursty:QUIET_RATE,BURST_RATE,MEAN_BURST_S,MEAN_QUIET_S`` over ``duration`` seconds."""
    m = PATTERN.match(spec)
    if m is None:
        raise ValueError(f"unknown arrival pattern {spec!r} (poisson:RATE, diurnal:MEAN[,AMPLITUDE[,PERIOD]], bursty:Q,B,BURST_S,QUIET_S)")
    kind, args = m.groups()
    _positive(duration, "duration")
    # Arrivals draw from their own stream, so changing the service distribution keeps them.
    rng = np.random.default_rng([seed, 0])
    if kind == "poisson":
        (rate,) = _numbers(args, "poisson", 1, 1)
        times = poisson(rate, duration, rng)
        text = f"Poisson, {rate:g} req/s"
    elif kind == "diurnal":
        given = _numbers(args, "diurnal", 1, 3)
        mean, amplitude, period = given + [0.0, 0.8, 86400.0][len(given) :]
        times = diurnal(mean, amplitude, period, duration, rng)
        text = f"diurnal, mean {mean:g} req/s, amplitude {amplitude:g}, period {period:g} s"
    else:
        q, b, bs, qs = _numbers(args, "bursty", 4, 4)
        times = bursty(q, b, bs, qs, duration, rng)
        text = f"bursty, {q:g} req/s quiet (mean {qs:g} s) / {b:g} req/s bursts (mean {bs:g} s)"
    if times.size == 0:
        raise ValueError(f"{spec} over {duration:g} s produced no requests; raise the rate or the duration")
    return Arrivals(times, duration, f"{text}, {duration:g} s, seed {seed}: {times.size} requests")


def from_array(times: npt.ArrayLike) -> Arrivals:
    """Arrival times given directly: seconds from the start of the window (0), any order."""
    a = np.array(times, dtype=np.float64).reshape(-1)
    if a.size == 0:
        raise ValueError("no request times given")
    bad = np.flatnonzero(~np.isfinite(a) | (a < 0))
    if bad.size:
        raise ValueError(f"request time {int(bad[0])} is {a[bad[0]]!r}: times must be finite and >= 0")
    a = np.sort(a, kind="stable")
    return Arrivals(a, 0.0, f"{a.size} requests over {a[-1]:.0f} s")
