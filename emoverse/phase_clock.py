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
