"""A progress line for long encodings (stderr; no dependency).

On a terminal the line is redrawn in place (``\\r``); otherwise (logs, CI) a line is printed at
most every ``every_fraction`` of the work, so log files stay short.
"""

from __future__ import annotations

import sys
import time


class Progress:
    def __init__(self, total: int, label: str, *, enabled: bool = True, every_fraction=0.1):
        self.total = max(int(total), 1)
        self.label = label
        self.enabled = enabled
        self.stream = sys.stderr
        self.interactive = self.stream.isatty()
        self.every = max(1, int(self.total * every_fraction))
        self.done = 0
        self._last_reported = 0
        self._start = time.perf_counter()

    def update(self, count: int = 1) -> None:
        self.done += count
        if not self.enabled:
            return
        if self.interactive or self.done - self._last_reported >= self.every:
            self._report()

    def _report(self) -> None:
        self._last_reported = self.done
        elapsed = time.perf_counter() - self._start
        rate = self.done / elapsed if elapsed > 0 else 0.0
        left = (self.total - self.done) / rate if rate > 0 else float("nan")
        text = (
            f"{self.label}: {self.done}/{self.total} ({100 * self.done / self.total:.0f}%), "
            f"{rate:.1f}/s, {elapsed:.0f} s elapsed, about {left:.0f} s left"
        )
        end = "" if self.interactive and self.done < self.total else "\n"
        print(("\r" if self.interactive else "") + text, end=end, file=self.stream, flush=True)

    def close(self) -> None:
        if self.enabled and self._last_reported != self.done:
            self._report()
