"""A byte-count progress bar for the command line, and human-readable sizes and rates (decimal
units throughout: kB, MB, GB and GB/s)."""

from __future__ import annotations

import sys
import time
from typing import TextIO


def format_bytes(n: float) -> str:
    """``1500`` -> ``"1.5 kB"``. Decimal units (1 GB = 10^9 bytes), the same as the GB/s of
    ``format_rate``, so a size and a rate on one line can be divided in one's head."""
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    raise AssertionError("unreachable")


def format_rate(nbytes: int, seconds: float) -> str:
    """Throughput in decimal GB/s, the unit disk and PCIe bandwidths are quoted in."""
    return f"{nbytes / max(seconds, 1e-9) / 1e9:.2f} GB/s"


class ProgressBar:
    """``bar(done, total)`` redraws one line on ``stream`` (at most ten times a second);
    ``close()`` ends the line. Draws nothing when ``stream`` is not a terminal, so logs and
    pipes stay clean."""

    def __init__(self, label: str = "", stream: TextIO | None = None, *, width: int = 30) -> None:
        self.stream = stream if stream is not None else sys.stderr
        self.enabled = bool(getattr(self.stream, "isatty", lambda: False)())
        self.label = label
        self.width = width
        self.start = time.perf_counter()
        self._last_draw = 0.0
        self._drawn = False

    def __call__(self, done: int, total: int) -> None:
        if not self.enabled:
            return
        now = time.perf_counter()
        if done < total and now - self._last_draw < 0.1:
            return
        self._last_draw = now
        frac = done / total if total else 1.0
        filled = int(frac * self.width)
        bar = "#" * filled + "." * (self.width - filled)
        rate = format_rate(done, now - self.start)
        line = f"{self.label}[{bar}] {frac:4.0%} {format_bytes(done)} / {format_bytes(total)}  {rate}"
        self.stream.write("\r" + line + "\033[K")
        self.stream.flush()
        self._drawn = True

    def close(self) -> None:
        if self._drawn:
            self.stream.write("\n")
            self.stream.flush()
            self._drawn = False
