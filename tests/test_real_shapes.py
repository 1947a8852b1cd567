"""The paper recipe rehearsed at real width: InternVL2-4B's shapes (written in its own
format and converted, as a download would be) with one layer per stack, both stages a
few steps with LoRA on Phi-3's real module names and DeepSpeed ZeRO-2, each stage
evaluated, the run exported, and the serving engine answering from it."""

import json

import pytest
from safetensors import safe_open

from emoverse.emt.demo import build_demo
from emoverse.model.families import write_like
from emoverse.model.vocabulary import instruction_corpus
from emoverse.recipe import load_recipe

pytestmark = pytest.mark.integration

STAGES = ("stage1-multitask-pretraining", "stage2-reason-finetuning")


def paper_overrides(base, manifest, recipe) -> list[str]:
    """m2se-paper sized for 2 CPU cores: 2 frames (512 visual tokens), 2 steps per stage
    of one sample per worker, the demo set's single source for every mixture entry."""
    out = [f"base_model={base}", f"data.manifest={manifest}", "media.num_frames=2",
           "media.detector=haar", "scaling.num_workers=2", "scaling.use_gpu=false",
           "scaling.cpus_per_worker=0.5", "scaling.torch_threads=1", "eval.batch_size=4",
           "eval.max_new_tokens=4"]
    for i, stage in enumerate(recipe.stages):
        out += [f"stages.{i}.max_steps=2", f"stages.{i}.batch_size=2",
                f"stages.{i}.warmup_steps=0", f"stages.{i}.precision=fp32"]
        out += [f"stages.{i}.mixture.{j}.source='*'" for j in range(len(stage.mixture))]
    return out


def test_paper_recipe_at_real_width_trains_evaluates_exports_and_serves(tmp_path):
    from transformers import AutoModelForImageTextToText

    from emoverse.drivers.training import train_recipe
    from emoverse.media.clips import process_clip
    from emoverse.media.faces import detector_for
    from emoverse.model.export import export_model
    from emoverse.model.generation import AnswerGenerator
    from emoverse.rundir import resolve_checkpoint
    from emoverse.serving.catalog import build_catalog
    from emoverse.serving.config import ServeArgs
    from emoverse.serving.model_pool import Job, ModelPool

    base = write_like("internvl2-4b", tmp_path / "base", instruction_corpus(), layers=1)
    manifest = build_demo(tmp_path / "data", size=60, seed=2, workers=2)
    paper = load_recipe("m2se-paper")
    recipe = load_recipe("m2se-paper", paper_overrides(base, manifest, paper))
    run = tmp_path / "run"
    try:
        results = train_recipe(recipe, run)
    finally:
        import ray

        ray.shutdown()  # the later tests start Ray their own way

    for stage in STAGES:
        lineage = json.loads((run / "checkpoints" / stage / "lineage.json").read_text())
        assert lineage["step"] == 2
        with safe_open(str(run / "checkpoints" / stage / "adapter" / "adapter_model.safetensors"),
                       "pt") as f:
            names = list(f.keys())
        for module in ("qkv_proj", "o_proj", "gate_up_proj", "down_proj"):
            assert any(f"language_model.layers.0.self_attn.{module}.lora_A" in n or
                       f"language_model.layers.0.mlp.{module}.lora_A" in n for n in names), module
        assert any("multi_modal_projector.linear_1" in n for n in names)  # trained in full
        assert not any("vision_tower" in n for n in names)  # frozen
        # evaluated on the tasks trained so far (the demo split has all five)
        assert set(results["stages"][stage]["metrics"]) == set(recipe.trained_tasks(stage))
    # ZeRO-2 partitioned the optimiser state across both workers
    assert len(list((run / "ray").rglob("*zero_pp_rank_1*optim_states.pt"))) > 0

    exported = export_model(resolve_checkpoint(run), tmp_path / "export")
    model = AutoModelForImageTextToText.from_pretrained(str(exported))
    assert model.config.text_config.hidden_size == 3072 and not model.config.tie_word_embeddings

    catalog = build_catalog(ServeArgs(model=str(run)))
    row = next(r for r in json_rows(manifest) if r["task"] == "mer")
    frames = process_clip(row["media_path"], catalog.media,
                          detector_for(catalog.media)).frames
    assert frames.shape == (2, 448, 448, 3)
    answer = ModelPool(catalog).generate(STAGES[1], [Job(row["prompt"], frames, 4)])[0]
    assert answer.prompt_tokens > 2 * 256 and answer.completion_tokens <= 4
    # Serving (stage 2's adapter attached to its base) answers as the exported, merged model
    # does. Random weights may answer a stop token first, so the texts are compared, not
    # required to be non-empty.
    exported_answer = AnswerGenerator(str(exported), max_new_tokens=4).generate(
        {"prompt": [row["prompt"]], "frames": [frames]})[0]
    assert answer.text == exported_answer


def json_rows(manifest):
    from emoverse.emt.manifest import read_manifest

    return read_manifest(manifest).to_pylist()
