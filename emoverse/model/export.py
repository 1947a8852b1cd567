"""`emoverse export RUN_OR_CHECKPOINT --out DIR [--stage NAME]`

Merge a stage's LoRA adapter (and every adapter below it) into standalone weights: the
output is a plain Hugging Face model directory that `from_pretrained` loads without
emoverse or peft, with the processor beside it and the lineage kept for provenance.
"""

from __future__ import annotations

import json
from pathlib import Path

from emoverse.atomic_dir import atomic_dir
from emoverse.model.checkpoint import LINEAGE, load_model, load_processor

EXPORT_LINEAGE = "emoverse_lineage.json"


def export_model(checkpoint: str | Path, out: str | Path) -> Path:
    """Write the merged model and processor of `checkpoint` to `out`."""
    checkpoint, out = Path(checkpoint), Path(out)
    if out.exists() and any(out.iterdir()):
        raise FileExistsError(f"export directory {out} is not empty")
    model = load_model(checkpoint)  # adapters merged into the base weights
    lineage = json.loads((checkpoint / LINEAGE).read_text())
    with atomic_dir(out) as tmp:
        model.save_pretrained(str(tmp))
        load_processor(checkpoint).save_pretrained(str(tmp))
        (tmp / EXPORT_LINEAGE).write_text(json.dumps(
            {**lineage, "exported_from": str(checkpoint)}, indent=2, sort_keys=True))
    return out
