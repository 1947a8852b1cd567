"""`emoverse export RUN_OR_CHECKPOINT --out DIR [--stage NAME]`

Merge a stage's LoRA adapter (and every adapter below it) into standalone weights: the
output is a plain Hugging Face model directory that `from_pretrained` loads without
emoverse or peft, with the processor beside it and the lineage kept for provenance.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from emoverse.model.checkpoint import LINEAGE, is_checkpoint, load_model, load_processor

EXPORT_LINEAGE = "emoverse_lineage.json"


def resolve_checkpoint(path: str | Path, stage: str | None = None) -> Path:
    """A stage checkpoint from itself or from a run directory (its last finished stage)."""
    path = Path(path)
    if is_checkpoint(path):
        if stage:
            raise ValueError(f"{path} is a stage checkpoint; --stage applies to run directories")
        return path
    from emoverse.recipe import load_recipe
    from emoverse.rundir import RunDir

    run = RunDir(path)
    if not run.recipe_file.is_file():
        raise FileNotFoundError(f"{path} is neither a stage checkpoint nor a run directory")
    names = [s.name for s in load_recipe(run.recipe_file).stages]
    if stage:
        if stage not in names:
            raise ValueError(f"run {path} has no stage {stage!r} (stages: {', '.join(names)})")
        names = names[:names.index(stage) + 1]
    finished = [n for n in names if run.is_finished(n)]
    if not finished or (stage and finished[-1] != stage):
        raise ValueError(f"run {path}: stage {stage or names[-1]!r} has not finished")
    return run.checkpoint(finished[-1])


def export_model(checkpoint: str | Path, out: str | Path) -> Path:
    """Write the merged model and processor of `checkpoint` to `out`."""
    checkpoint, out = Path(checkpoint), Path(out)
    if out.exists() and any(out.iterdir()):
        raise FileExistsError(f"export directory {out} is not empty")
    model = load_model(checkpoint)  # adapters merged into the base weights
    tmp = out.with_name(out.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(str(tmp))
    load_processor(checkpoint).save_pretrained(str(tmp))
    lineage = json.loads((checkpoint / LINEAGE).read_text())
    (tmp / EXPORT_LINEAGE).write_text(json.dumps({**lineage, "exported_from": str(checkpoint)},
                                                 indent=2, sort_keys=True))
    if out.exists():
        out.rmdir()
    tmp.rename(out)
    return out
