"""The loss-curve PNG of a run: one line per stage, steps numbered across stages."""

from __future__ import annotations

from pathlib import Path

from emoverse.figures import pyplot


def write_loss_curves(stages: dict[str, dict], out: str | Path) -> Path:
    """Plot each stage's logged losses (`losses`, `log_every` of its lineage) to `out`."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(8, 4))
    offset = 0
    for name, lineage in stages.items():
        losses, every = lineage.get("losses") or [], lineage.get("log_every", 1)
        steps = [offset + every * (i + 1) for i in range(len(losses))]
        ax.plot(steps, losses, label=name)
        offset = lineage.get("step", offset + every * len(losses)) + offset
    ax.set_xlabel("optimizer step (stages in order)")
    ax.set_ylabel("training loss (answer tokens)")
    ax.set_yscale("log")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return Path(out)
