"""Where a run's wall time goes: each phase from the end of the one before, so nothing is
left out of the table (`emoverse quickstart` and `train` print it at the end)."""

from __future__ import annotations

import time


class PhaseClock:
    def __init__(self):
        self.phases: list[tuple[str, float]] = []
        self._last = time.perf_counter()

    def mark(self, name: str) -> float:
        """End the phase running since the previous mark (or the start) and name it."""
        now = time.perf_counter()
        self.phases.append((name, now - self._last))
        self._last = now
        return self.phases[-1][1]

    @property
    def total(self) -> float:
        return sum(seconds for _, seconds in self.phases)

    def table(self) -> str:
        from tabulate import tabulate

        total = self.total or 1.0
        rows = [[name, f"{seconds:.1f}", f"{seconds / total:.0%}"] for name, seconds in self.phases]
        rows.append(["total", f"{self.total:.1f}", "100%"])
        return tabulate(rows, headers=["phase", "seconds", "share"], disable_numparse=True,
                        colalign=("left", "right", "right"))

    def to_dict(self) -> dict[str, float]:
        return {name: round(seconds, 2) for name, seconds in self.phases}


class Countdown:
    """Time left in a long phase, from its rate since `done` units (a resumed stage starts
    part way, and its earlier units took no time in this process)."""

    def __init__(self, done: int = 0, settle: float = 0.02):
        self._done0, self._t0 = done, time.perf_counter()
        self._settle = settle

    def left(self, done: int, total: int) -> str:
        """`1m05s left`, or `?` before `settle` of the work is done: the first units carry
        the phase's start-up (a process pool, a pipeline), and an estimate from them alone
        once said three hours for a 40 s phase."""
        if done - self._done0 < max(1.0, self._settle * (total - self._done0)):
            return "? left"
        rate = (time.perf_counter() - self._t0) / (done - self._done0)
        minutes, seconds = divmod(round(rate * max(0, total - done)), 60)
        return f"{minutes}m{seconds:02d}s left" if minutes else f"{seconds}s left"


class ProgressLog:
    """`  LABEL 120/288, 45s left` through `log`, every `every` seconds and at the end:
    progress of a long phase (demo clips, the media stage) as a callback of (done, total)."""

    def __init__(self, label: str, log, every: float = 5.0):
        self._label, self._log, self._every = label, log, every
        self._last, self._countdown = 0.0, Countdown()
        self._said: int | None = None  # the count last logged

    def __call__(self, done: int, total: int) -> None:
        now = time.time()
        if done == self._said:
            return  # nothing new to say (a phase still starting, or the end said twice)
        if now - self._last > self._every or done == total:
            self._last, self._said = now, done
            self._log.info("  %s %d/%d, %s", self._label, done, total,
                           self._countdown.left(done, total))
