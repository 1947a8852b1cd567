"""The media cache's layout on disk, and reading it without Ray.

    <cache>/clips/*.parquet   one row per clip: manifest fields, frames, face_found, ok, error
                              (and with media.audio: audio, audio_samples, audio_error)
    <cache>/media.json        the media parameters the clips were made with
    <cache>/errors.csv        one line per unusable clip: sample_id, media_path, error
    <cache>/stats.json        counts; written last, so its presence marks a complete cache
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Callable, Sequence


import numpy as np

CLIPS = "clips"
DONE = "stats.json"
ERRORS = "errors.csv"
PARAMS = "media.json"


def clip_files(cache: str | Path) -> str:
    """The directory of a media cache's Parquet shards, for readers."""
    return str(Path(cache) / CLIPS)


def write_error_report(errors: list[dict], path: Path) -> None:
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=["sample_id", "media_path", "error"])
        writer.writeheader()
        writer.writerows(errors)


def cache_stats(path: str | Path) -> dict:
    """Counts from a cache's small columns (frames and audio are never read)."""
    import pyarrow.parquet as pq

    columns = ["sample_id", "task", "split", "media_path", "ok", "face_found", "error"]
    files = sorted(Path(path).glob("*.parquet"))
    heard = bool(files) and "audio_error" in pq.read_schema(files[0]).names
    t = pq.read_table(str(path), columns=columns + (["audio_error"] if heard else [])) \
        .to_pandas()
    good = t[t.ok]
    by = good.groupby(["task", "split"]).face_found.agg(["size", "mean"]).reset_index()
    audio = {}
    if heard:  # clips whose audio fell back to silence (media.audio.missing: silence)
        silent = good[good.audio_error != ""]
        audio = {"audio_silence": int(len(silent)),
                 "audio_silenced": silent[["sample_id", "media_path", "audio_error"]]
                 .rename(columns={"audio_error": "error"}).to_dict("records")}
    return {
        "clips": int(len(t)),
        "ok": int(len(good)),
        "failed": int((~t.ok).sum()),
        "face_found_rate": float(good.face_found.mean()) if len(good) else 0.0,
        # An EMT quality figure: a task whose clips show no face teaches the model little
        "face_found": [{"task": r.task, "split": r.split, "clips": int(r.size),
                        "rate": float(r.mean)} for r in by.itertuples()],
        "errors": t[~t.ok][["sample_id", "media_path", "error"]].to_dict("records"),
        **audio,
    }


def face_table(stats: dict) -> str:
    """The face-found rate per task and split, as a plain-text table."""
    from tabulate import tabulate

    rows = [[r["task"], r["split"], r["clips"], f"{r['rate']:.1%}"]
            for r in stats.get("face_found", [])]
    return tabulate(rows, headers=["task", "split", "usable clips", "face found"],
                    disable_numparse=True)


def low_face_rates(stats: dict, threshold: float) -> list[str]:
    """One line per task and split whose face-found rate is under `threshold`."""
    return [f"{r['task']} {r['split']}: face found in {r['rate']:.1%} of {r['clips']} clips, "
            f"under the recipe's data.min_face_found {threshold:.0%}"
            for r in stats.get("face_found", []) if r["rate"] < threshold]


def read_stats(cache: str | Path) -> dict:
    path = Path(cache) / DONE
    if not path.is_file():
        raise FileNotFoundError(f"{cache}: not a complete media cache (no {DONE})")
    return json.loads(path.read_text())


def read_clips(cache: str | Path, count: int, seed: int = 0) -> list[dict]:
    """`count` usable clips chosen at random: sample_id, task, frames, face_found."""
    import pyarrow.parquet as pq

    shape = tensor_shapes(cache)["frames"][0]
    table = pq.read_table(clip_files(cache), columns=["sample_id", "task", "ok", "face_found"])
    usable = np.flatnonzero(table.column("ok").to_numpy(zero_copy_only=False))
    chosen = np.sort(np.random.default_rng(seed).choice(usable, min(count, len(usable)),
                                                        replace=False))
    frames = pq.read_table(clip_files(cache), columns=["frames"]).column("frames").take(chosen)
    rows = table.take(chosen).to_pylist()
    for row, flat in zip(rows, frames.to_pylist()):
        row["frames"] = np.asarray(flat, np.uint8).reshape(shape)
    return rows


def read_rows(cache: str | Path, columns: list[str], keep: Callable):
    """The cache's rows for which `keep(batch)` (a boolean array over an Arrow batch) holds,
    `columns` only, in file order; None when the cache has no files. Read a batch at a time
    and filtered as it is read, so memory holds the kept rows, not the cache."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    kept = [batch.filter(keep(batch))
            for path in sorted(Path(clip_files(cache)).glob("*.parquet"))
            for batch in pq.ParquetFile(path).iter_batches(batch_size=512, columns=columns)]
    return pa.Table.from_batches(kept) if kept else None


def tensor_shapes(cache: str | Path) -> dict[str, tuple[tuple[int, ...], type]]:
    """Each fixed-shape column of a cache: its row shape and dtype."""
    params = json.loads((Path(cache) / PARAMS).read_text())
    shapes = {"frames": ((params["num_frames"], params["size"], params["size"], 3), np.uint8)}
    if params.get("audio"):
        from emoverse.recipe import AudioConfig

        shapes["audio"] = ((AudioConfig(**params["audio"]).max_samples,), np.int16)
    return shapes


def tensor_column(table, name: str, shape: tuple[int, ...], dtype) -> list[np.ndarray]:
    """A fixed-shape column of an Arrow table as one array per row."""
    import pyarrow as pa

    values = table.column(name).combine_chunks()
    if isinstance(values, pa.ExtensionArray):  # Ray's tensor type, when Ray is imported
        values = values.storage
    while pa.types.is_nested(values.type):
        values = values.flatten()
    flat = values.to_numpy(zero_copy_only=False)
    return list(np.asarray(flat, dtype).reshape(table.num_rows, *shape))


def read_split(cache: str | Path, split: str, columns: list[str],
               tasks: Sequence[str] | None = None, hears: bool = False):
    """The usable clips of `split` (of `tasks` only, when given), in sample-id order, frames
    as (frames, size, size, 3) and, with `hears`, the audio columns, read as `read_rows`
    reads."""
    import pyarrow as pa
    import pyarrow.compute as pc

    shapes = tensor_shapes(cache)
    if hears and "audio" not in shapes:
        raise ValueError(f"the media cache {cache} holds no audio (media.audio was not set "
                         "when it was made)")
    tensors = ["frames", *(["audio"] if hears else [])]
    extra = ["audio_samples"] if hears else []
    wanted = list(dict.fromkeys([*columns, *(["task"] if tasks else []), "split", "ok",
                                 *tensors, *extra]))

    def usable(batch):
        keep = pc.and_(pc.equal(batch["split"], split), batch["ok"])
        if tasks:
            keep = pc.and_(keep, pc.is_in(batch["task"], value_set=pa.array(list(tasks))))
        return keep

    table = read_rows(cache, wanted, usable)
    if table is None:
        return _empty_split([*columns, *tensors, *extra])
    table = table.sort_by("sample_id")
    out = table.select(list(dict.fromkeys([*columns, *extra]))).to_pandas()
    for name in tensors:
        out[name] = tensor_column(table, name, *shapes[name])
    return out


def _empty_split(columns: list[str]):
    """An empty split: the columns read_split returns, without rows."""
    import pandas as pd

    return pd.DataFrame(columns=columns)
