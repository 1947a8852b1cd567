"""Load and save models in Hugging Face form, and choose which parts a stage trains.

A stage checkpoint is a directory with `lineage.json` plus either `model/` (full weights,
`save_pretrained`) or `adapter/` (a peft LoRA adapter over the parent's weights), and
`processor/`. Anything else is taken to be a plain Hugging Face model directory (or hub
id), loaded through `AutoModelForImageTextToText` / `AutoProcessor`.
"""

from __future__ import annotations

import hashlib
import json
import re
import warnings
from contextlib import contextmanager
from pathlib import Path

from emoverse.recipe import TrainableConfig

LINEAGE = "lineage.json"
# Vision-language projector module names by architecture (the paper trains it).
PROJECTORS = ("merger", "multi_modal_projector", "connector", "mlp1")
# Qwen2.5-Omni's audio encoder keeps an embedding of its own begin/end tokens that the
# thinker never reads.
UNUSED_PARAMETERS = ("audio_bos_eos_token",)
# Phi-3 (InternVL2-4B) fuses q/k/v into qkv_proj and gate/up into gate_up_proj.
LANGUAGE_LINEAR = (r".*language_model.*\.(q_proj|k_proj|v_proj|qkv_proj|o_proj|gate_proj|up_proj"
                   r"|gate_up_proj|down_proj)")


def is_checkpoint(path: str | Path) -> bool:
    return (Path(path) / LINEAGE).is_file()


def read_lineage(path: str | Path) -> dict:
    return json.loads((Path(path) / LINEAGE).read_text())


def hears(path: str | Path) -> bool:
    """Whether the model at `path` was trained to take the clip's audio: a stage checkpoint
    of a stage with `audio: true`, or a model exported from one (its lineage is kept as
    `emoverse_lineage.json`). Other model directories are fed frames only."""
    for name in (LINEAGE, "emoverse_lineage.json"):
        if (Path(path) / name).is_file():
            return bool(json.loads((Path(path) / name).read_text()).get("audio"))
    return False


def parent_of(path: str | Path) -> str:
    """A checkpoint's parent: a path relative to it (same run), an absolute path or hub id."""
    parent = read_lineage(path)["parent"]
    if parent.startswith("."):
        return str((Path(path) / parent).resolve())
    return parent


def processor_dir(path: str | Path) -> str:
    return str(Path(path) / "processor") if is_checkpoint(path) else str(path)


def _refuse_remote_code_format(path: str | Path) -> None:
    config = Path(path) / "config.json"
    if config.is_file() and json.loads(config.read_text()).get("model_type") == "internvl_chat":
        raise ValueError(f"{path} is an InternVL2 chat checkpoint (remote code, which "
                         "transformers 5 cannot load); convert it first: emoverse model "
                         f"convert {path} --out {Path(path).name}-hf")


def load_processor(path: str | Path, trust_remote_code: bool = False):
    from transformers import AutoProcessor

    from emoverse.model.inputs import video_size_as_saved

    _refuse_remote_code_format(processor_dir(path))
    return video_size_as_saved(AutoProcessor.from_pretrained(
        processor_dir(path), trust_remote_code=trust_remote_code))


def attention_implementation(choice: str = "auto", cuda: bool = False) -> str:
    """`auto`: flash-attention 2 where it is installed and a GPU runs the model, else SDPA."""
    import importlib.util

    if choice == "auto":
        return "flash_attention_2" if cuda and importlib.util.find_spec("flash_attn") else "sdpa"
    if choice == "flash_attention_2" and not importlib.util.find_spec("flash_attn"):
        raise ValueError("attention=flash_attention_2 needs the flash-attn package "
                         "(pip install flash-attn); or set attention=auto")
    return choice


def load_model(path: str | Path, trust_remote_code: bool = False, attention: str | None = None):
    """A model from a HF directory/hub id, or from a stage checkpoint (adapters merged).
    `attention`: the attention implementation (transformers' default when None)."""
    from transformers import AutoModelForImageTextToText

    options = {"trust_remote_code": trust_remote_code}
    if attention:
        options["attn_implementation"] = attention
    if not is_checkpoint(path):
        _refuse_remote_code_format(path)
        return AutoModelForImageTextToText.from_pretrained(str(path), **options)
    path = Path(path)
    if (path / "model").is_dir():
        return AutoModelForImageTextToText.from_pretrained(str(path / "model"), **options)
    from peft import PeftModel

    base = load_model(parent_of(path), trust_remote_code, attention)
    untie_saved_output_layer(base, adapter_modules_to_save(path / "adapter"))
    with peft_on_transformers():
        return PeftModel.from_pretrained(base, str(path / "adapter")).merge_and_unload()


def adapter_modules_to_save(adapter: str | Path) -> list[str]:
    """The modules a saved adapter keeps whole copies of (`modules_to_save`)."""
    saved = json.loads((Path(adapter) / "adapter_config.json").read_text())
    return list(saved.get("modules_to_save") or [])


def untie_saved_output_layer(model, modules_to_save: list[str]) -> None:
    """Mark a tied output layer untied when an adapter trains it (`modules_to_save:
    [lm_head]`): the adapter trains and saves its own copy of the layer, which replaces it
    on merging, while the input embeddings stay as they were. The frozen original may keep
    sharing the embeddings' memory until then. Done before wrapping, so the config says
    what the model will be (PEFT otherwise warns that the tie breaks, at wrapping and again
    at merging, and changes the config itself then)."""
    out = model.get_output_embeddings()
    saved = {m.split(".")[-1] for m in modules_to_save}
    if out is None or not any(m is out and n.split(".")[-1] in saved
                              for n, m in model.named_modules()):
        return
    for config in (model.config, getattr(model.config, "text_config", None)):
        if config is not None and getattr(config, "tie_word_embeddings", False):
            config.tie_word_embeddings = False


@contextmanager
def peft_on_transformers():
    """PEFT 0.21 asks every model `is_gradient_checkpointing`, which transformers 5
    deprecated (a FutureWarning per wrap that no user can act on)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*",
                                category=FutureWarning)
        yield


def apply_trainable(model, cfg: TrainableConfig, hears: bool = False):
    """Freeze or wrap `model` so that exactly the configured parts train. An audio encoder
    (Qwen2.5-Omni's) trains in full mode only when the stage `hears` (it gets no gradient
    otherwise, which DDP refuses), and is frozen under LoRA like the vision tower."""
    if cfg.mode == "full":
        for name, p in model.named_parameters():
            p.requires_grad = (cfg.vision or not _is_vision(name) or _is_projector(name)) \
                and (hears or not _is_audio(name)) and not _is_unused(name)
        return model
    from peft import LoraConfig, get_peft_model

    projector = sorted({_projector_name(n) for n, _ in model.named_modules() if _is_projector(n)})
    lora = LoraConfig(
        r=cfg.lora.r,
        lora_alpha=cfg.lora.alpha,
        lora_dropout=cfg.lora.dropout,
        target_modules=cfg.lora.target_modules or LANGUAGE_LINEAR,
        modules_to_save=[*([p for p in projector if p] if cfg.projector else []),
                         *cfg.lora.modules_to_save] or None,
    )
    untie_saved_output_layer(model, list(cfg.lora.modules_to_save))
    with peft_on_transformers():
        model = get_peft_model(model, lora)
    for name, p in model.named_parameters():
        if _is_unused(name):
            p.requires_grad = False
    if cfg.vision:
        for name, p in model.named_parameters():
            if _is_vision(name):
                p.requires_grad = True
    return model


def _is_vision(name: str) -> bool:
    return bool(re.search(r"(^|\.)(visual|vision_tower|vision_model)\.", name))


def _is_audio(name: str) -> bool:
    return bool(re.search(r"(^|\.)audio_tower\.", name))


def _is_unused(name: str) -> bool:
    """Parameters a model holds but its forward never uses (DDP refuses to reduce them)."""
    return any(f".{u}." in f".{name}." for u in UNUSED_PARAMETERS)


def _is_projector(name: str) -> bool:
    return any(f".{p}." in f".{name}." for p in PROJECTORS)


def _projector_name(name: str) -> str:
    return next((p for p in PROJECTORS if f".{p}." in f".{name}."), "")


def weights_dir(model) -> str:
    """Where a stage checkpoint keeps `model`'s weights: `adapter` (peft) or `model`."""
    return "adapter" if hasattr(model, "peft_config") else "model"


def save_checkpoint(model, processor, out: str | Path, lineage: dict) -> Path:
    """Write a stage checkpoint: full weights or adapter, processor, lineage."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(out / weights_dir(model)))
    return finish_checkpoint(processor, out, lineage)


def finish_checkpoint(processor, out: str | Path, lineage: dict) -> Path:
    """Add the processor and, last, the lineage to a checkpoint whose weights are written."""
    out = Path(out)
    processor.save_pretrained(str(out / "processor"))
    (out / LINEAGE).write_text(json.dumps(lineage, indent=2, sort_keys=True))
    return out


def trainable_summary(model) -> dict:
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return {"parameters": total, "trainable": trainable}


def model_hash(path: str | Path) -> str:
    """A content hash of a model directory: configs in full, and for each weight file its
    name, size and first MiB (hashing gigabytes of weights would take longer than the
    evaluation of a small split). An adapter's hash includes its parent's."""
    digest = hashlib.sha256()
    if is_checkpoint(path) and (Path(path) / "adapter").is_dir():
        parent = parent_of(path)
        digest.update((model_hash(parent) if Path(parent).exists() else parent).encode())
    for f in sorted(p for p in Path(path).rglob("*") if p.is_file() and p.name != LINEAGE):
        digest.update(str(f.relative_to(path)).encode())
        with f.open("rb") as fh:
            data = fh.read() if f.suffix in (".json", ".txt", ".jinja") else fh.read(2**20)
        digest.update(str(f.stat().st_size).encode() + data)
    return digest.hexdigest()[:16]
