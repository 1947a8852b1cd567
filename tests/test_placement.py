"""Placement on node groups: custom resources per Train worker and per media actor. No Ray."""

import pytest
from pydantic import ValidationError

from emoverse.distributed.media_stage import pool_size
from emoverse.recipe import ScalingConfig, apply_overrides, load_recipe
from emoverse.drivers.sweep import concurrent_trials


def test_train_workers_ask_for_their_cpus_and_the_custom_resources():
    scaling = ScalingConfig(cpus_per_worker=2, worker_resources={"trainer": 1})
    assert scaling.train_worker_resources() == {"CPU": 2, "trainer": 1}
    assert ScalingConfig().train_worker_resources() == {"CPU": 0.5}


@pytest.mark.parametrize("field", ["worker_resources", "media_resources"])
@pytest.mark.parametrize("name", ["CPU", "GPU", "memory"])
def test_builtin_resources_are_refused_with_the_setting_to_use(field, name):
    with pytest.raises(ValidationError, match=f"scaling.{field} names {name}"):
        ScalingConfig(**{field: {name: 1}})


def test_placement_does_not_change_the_recipe_digest():
    recipe = load_recipe("m2se-tiny")
    placed = apply_overrides(recipe, ["scaling.worker_resources={trainer: 1}",
                                      "scaling.media_resources={media: 1}"])
    assert placed.scaling.media_resources == {"media": 1}
    assert placed.digest() == recipe.digest()  # a run resumes on differently named groups
    assert apply_overrides(recipe, ["scaling.num_workers=1"]).digest() != recipe.digest()


def test_media_pool_is_one_actor_per_cpu_or_per_offered_resource():
    cluster = {"CPU": 12.0, "media": 3.0, "trainer": 1.0}
    assert pool_size(cluster) == 12
    assert pool_size(cluster, {"media": 1}) == 3
    assert pool_size(cluster, {"media": 0.5, "trainer": 1}) == 1
    # no node of the group is up yet (autoscaling from zero): one actor asks for one
    assert pool_size({"CPU": 4.0}, {"media": 1}) == 1


def test_concurrent_trials_count_every_resource_a_trial_reserves():
    recipe = load_recipe("m2se-tiny")  # 2 workers x 0.5 CPU, plus 1 CPU for data
    assert concurrent_trials(recipe, {"CPU": 8.0}) == 4
    assert concurrent_trials(recipe, {"CPU": 1.0}) == 1  # never fewer than one
    pinned = apply_overrides(recipe, ["scaling.worker_resources={trainer: 1}"])
    assert concurrent_trials(pinned, {"CPU": 8.0, "trainer": 4.0}) == 2
    gpu = apply_overrides(recipe, ["scaling.use_gpu=true"])
    assert concurrent_trials(gpu, {"CPU": 64.0, "GPU": 4.0}) == 2
