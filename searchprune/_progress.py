"""Progress of long steps: a tqdm bar on a terminal, a log line at least every ``interval_s`` otherwise.

Base training, fine-tuning, certification and an export's strong attacks all report through
:class:`Progress`, so a run under a log file, CI or a cluster job says what it is doing::

    train[pgd]: 120/400 batch (30%) | epoch 1 | 2310 img/s | elapsed 0:00:31 | eta 0:01:12 | loss 0.4102 acc 0.853

On a terminal the same numbers sit in the bar's postfix. The clock and the stream are injectable,
so the lines can be tested without waiting.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import Any, TextIO

from tqdm.auto import tqdm

__all__ = ["Progress", "LOG_INTERVAL_S", "format_duration"]

LOG_INTERVAL_S = 30.0  # the longest a non-terminal run goes without a progress line


def format_duration(seconds: float) -> str:
    """``H:MM:SS`` (``?`` for an unknown duration)."""
    if seconds != seconds or seconds < 0 or seconds == float("inf"):  # nan, negative, inf
        return "?"
    s = int(round(seconds))
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}"


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}" if abs(v) >= 1e-3 or v == 0 else f"{v:.2e}"
    return str(v)


class Progress:
    """Progress of one step counted in ``unit`` (batches, say), with images per second.

    Args:
        total: units the step will run (None: unknown, no percentage or estimate).
        desc: what runs (``"train[pgd]"``, ``"certify"``, ...).
        unit: what ``update`` counts.
        enabled: False reports nothing at all (workers running many short trials).
        stream: where bars and lines go (default ``sys.stderr``).
        terminal: draw a tqdm bar (default: whether ``stream`` is a terminal); False writes lines.
        interval_s: the longest gap between two lines when not on a terminal (default
            :data:`LOG_INTERVAL_S`, read when the step starts).
        clock: seconds since any fixed point (injectable for tests).
    """

    def __init__(self, total: int | None, desc: str, *, unit: str = "batch", enabled: bool = True,
                 stream: TextIO | None = None, terminal: bool | None = None, interval_s: float | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.total, self.desc, self.unit, self.enabled = total, desc, unit, enabled
        self.stream = stream if stream is not None else sys.stderr
        isatty = getattr(self.stream, "isatty", None)
        self.terminal = bool(isatty()) if terminal is None and callable(isatty) else bool(terminal)
        self.interval_s = LOG_INTERVAL_S if interval_s is None else interval_s
        self.clock = clock
        self.n = self.images = 0
        self.info: dict[str, Any] = {}
        self.lines = 0
        self.start = self.last = clock()
        self.bar = tqdm(total=total, desc=desc, unit=unit, leave=False, file=self.stream) \
            if enabled and self.terminal else None

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def update(self, n: int = 1, *, images: int = 0, **info: Any) -> None:
        """Counts ``n`` more units and ``images`` more images; ``info`` (loss, acc, epoch ...) is shown."""
        if not self.enabled:
            return
        self.n += n
        self.images += images
        self.info.update(info)
        if self.bar is not None:
            self.bar.update(n)
            if self.info:
                self.bar.set_postfix({k: _fmt(v) for k, v in self.info.items()}, refresh=False)
            return
        now = self.clock()
        if now - self.last >= self.interval_s:
            self._line(now)

    def line(self, now: float | None = None) -> str:
        """The progress line for the counts so far."""
        now = self.clock() if now is None else now
        elapsed = now - self.start
        parts = [f"{self.desc}: {self.n}/{self.total if self.total is not None else '?'} {self.unit}"
                 + (f" ({self.n / self.total:.0%})" if self.total else "")]
        if "epoch" in self.info:
            parts.append(f"epoch {self.info['epoch']}")
        if self.images and elapsed > 0:
            parts.append(f"{self.images / elapsed:.0f} img/s")
        parts.append(f"elapsed {format_duration(elapsed)}")
        if self.total and self.n:
            parts.append(f"eta {format_duration(elapsed * (self.total - self.n) / self.n)}")
        rest = " ".join(f"{k} {_fmt(v)}" for k, v in self.info.items() if k != "epoch")
        return " | ".join(parts + ([rest] if rest else []))

    def _line(self, now: float) -> None:
        print(self.line(now), file=self.stream, flush=True)
        self.last = now
        self.lines += 1

    def close(self) -> None:
        """Ends the bar; off a terminal, a last line when the step ran long enough to have logged."""
        if self.bar is not None:
            self.bar.close()
            self.bar = None
        elif self.enabled:
            now = self.clock()
            if self.lines or now - self.start >= self.interval_s:
                self._line(now)
        self.enabled = False
