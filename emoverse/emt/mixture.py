"""Realise a stage's task mixture: typed weights over (task, source) entries.

`realise` turns weights into exact per-sample multiplicities for one epoch of a given
size, deterministically for a seed: each entry gets its share of the epoch (largest
remainder rounding), every sample of the entry's pool is repeated whole times, and the
remainder is a seeded choice without replacement. The multiplicities are what the data
pipeline repeats rows by, and their per-entry sums are what the stage records it saw.
"""

from __future__ import annotations

from collections import Counter
from typing import Sequence

import numpy as np

from emoverse.recipe import MixtureEntry


class MixtureError(ValueError):
    pass


def _shares(weights: Sequence[float], total: int) -> list[int]:
    raw = np.asarray(weights, float) / float(np.sum(weights)) * total
    counts = np.floor(raw).astype(int)
    for i in np.argsort(-(raw - counts), kind="stable")[: total - counts.sum()]:
        counts[i] += 1
    return counts.tolist()


def matches(entry: MixtureEntry, task: str, source: str) -> bool:
    return entry.task == task and entry.source in ("*", source)


def realise(ids: Sequence[str], tasks: Sequence[str], sources: Sequence[str],
            mixture: Sequence[MixtureEntry], epoch_size: int | None = None,
            seed: int = 0) -> tuple[dict[str, int], dict[str, int]]:
    """Per-sample multiplicities for one epoch, and the count each entry contributes."""
    pools = []
    for entry in mixture:
        pool = [i for i, (t, s) in enumerate(zip(tasks, sources)) if matches(entry, t, s)]
        if not pool:
            raise MixtureError(f"mixture entry task={entry.task} source={entry.source} "
                               "matches no training sample")
        pools.append(pool)
    if epoch_size is None:
        epoch_size = len({i for pool in pools for i in pool})
    counts = _shares([e.weight for e in mixture], epoch_size)
    multiplicity: Counter = Counter()
    seen = {}
    for k, (entry, pool, count) in enumerate(zip(mixture, pools, counts)):
        rng = np.random.default_rng([seed, k])
        whole, rest = divmod(count, len(pool))
        for i in pool:
            multiplicity[ids[i]] += whole
        for j in rng.choice(len(pool), size=rest, replace=False):
            multiplicity[ids[pool[j]]] += 1
        seen[f"{entry.task}/{entry.source}"] = count
    return {k: v for k, v in multiplicity.items() if v}, seen
