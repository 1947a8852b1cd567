"""Every shipped recipe loads and validates; overrides and errors behave."""

import pytest
from emoverse.config_file import ConfigError
from emoverse.recipe import dump_recipe, load_recipe, shipped_recipes


def test_both_paper_and_tiny_recipes_ship():
    assert {"m2se-paper", "m2se-tiny"} <= set(shipped_recipes())


@pytest.mark.parametrize("name", shipped_recipes())
def test_every_shipped_recipe_validates(name, tmp_path):
    recipe = load_recipe(name)
    assert len(recipe.stages) == 2
    for stage in recipe.stages:
        assert stage.mixture and all(e.weight > 0 for e in stage.mixture)
    again = load_recipe(dump_recipe(recipe, tmp_path / "r.yaml"))
    assert again == recipe
    for stage in recipe.stages:  # DeepSpeed stages: the generated config passes its parser
        assert stage.batch_size % recipe.scaling.num_workers == 0
        if stage.strategy.kind == "deepspeed":
            from emoverse.train.deepspeed_config import deepspeed_config, validate_deepspeed_config

            workers = recipe.scaling.num_workers
            validate_deepspeed_config(deepspeed_config(stage, workers), workers)


def test_paper_recipe_matches_the_paper():
    r = load_recipe("m2se-paper")
    s1, s2 = r.stages
    assert [e.task for e in s1.mixture] == ["msa", "fer", "mer"]
    assert [e.task for e in s2.mixture] == ["eri", "mer", "ecpe", "msa"]
    assert all(s.trainable.mode == "lora" and s.trainable.projector and not s.trainable.vision
               for s in r.stages)
    assert r.media.num_frames == 8 and all(s.epochs == 2 and s.batch_size == 8 and
                                           s.max_length == 4096 and s.gradient_checkpointing
                                           for s in r.stages)
    assert r.media.size == 448  # InternVL's tile: 256 visual tokens per frame


def test_overrides_by_index_and_by_stage_name():
    r = load_recipe("m2se-tiny", ["stages.0.epochs=3",
                                  "stages.stage2-reason-finetuning.lr=0.5",
                                  "media.size=112"])
    assert r.stages[0].epochs == 3 and r.stages[1].lr == 0.5 and r.media.size == 112


@pytest.mark.parametrize("override,message", [
    ("stages.0.mixture.0.weight=-1", "greater than 0"),
    ("stages.0.mixture.0.task=nope", "unknown task"),
    ("stages.0.typo=1", "Extra inputs"),
    ("media.detector=yunet", "needs media.yunet_model"),
])
def test_bad_overrides_fail_validation(override, message):
    with pytest.raises(ConfigError, match=message) as error:
        load_recipe("m2se-tiny", [override])
    assert "m2se-tiny.yaml: " in str(error.value)  # the file, then the field at fault


def test_unknown_recipe_names_the_shipped_ones():
    with pytest.raises(FileNotFoundError, match="m2se-tiny"):
        load_recipe("nope")
    with pytest.raises(ValueError, match="key=value"):
        load_recipe("m2se-tiny", ["stages"])


def test_each_stage_is_evaluated_on_the_tasks_trained_so_far():
    recipe = load_recipe("m2se-tiny")
    first, second = (s.name for s in recipe.stages)
    assert recipe.trained_tasks(first) == ["fer", "mer", "msa"]
    assert recipe.trained_tasks(second) == ["ecpe", "eri", "fer", "mer", "msa"]
    assert recipe.eval.stage_tasks == "trained"
