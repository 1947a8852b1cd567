"""The manifest format, the demo set and the mixture sampler."""

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from emoverse.emt.demo import plan
from emoverse.emt.manifest import (SCHEMA, ManifestError, read_manifest, validate_rows,
                                   write_manifest)
from emoverse.emt.mixture import MixtureError, realise
from emoverse.recipe import MixtureEntry
from emoverse.tasks import TASK_NAMES, get_task


def good_row(**over):
    row = dict(sample_id="s1", task="msa", source="demo", split="train", media_path="/x.mp4",
               transcript="I love it", prompt="p", target="Positive.", label_class="positive")
    row.update(over)
    return row


def test_demo_set_covers_every_task_and_split_and_is_deterministic():
    a, b = plan(200, seed=3), plan(200, seed=3)
    assert [s.row for s in a] == [s.row for s in b]
    assert [s.row for s in a] != [s.row for s in plan(200, seed=4)]
    tasks = {s.row["task"] for s in a}
    assert tasks == set(TASK_NAMES)
    for task in TASK_NAMES:
        splits = {s.row["split"] for s in a if s.row["task"] == task}
        assert splits == {"train", "valid", "test"}


def test_demo_labels_follow_their_evidence():
    for s in plan(300, seed=0):
        row = s.row
        if row["task"] == "fer":
            assert "The person says" not in row["prompt"]
            assert ("raised" in row["target"]) == (s.expression == "smile")
        if row["task"] == "mer" and row["label_class"] in ("joy", "sadness"):
            assert row["label_class"] == {"smile": "joy", "frown": "sadness"}[s.expression]
        # every target parses back to its own gold label
        task = get_task(row["task"])
        gold = task.gold({**row, "media_path": "x"})
        parsed = task.parse(row["target"])
        assert parsed.ok, row
        if row["task"] in ("msa", "mer", "fer"):
            assert parsed.value == gold
        if row["task"] == "ecpe":
            assert parsed.value == gold["pairs"]


def test_demo_build_writes_clips_and_valid_manifest(demo_set):
    table = read_manifest(demo_set)
    assert table.num_rows >= 60
    import decord

    path = table.column("media_path")[0].as_py()
    assert len(decord.VideoReader(path)) == 8


def test_manifest_round_trip_keeps_schema(tmp_path):
    path = write_manifest([good_row(), good_row(sample_id="s2", label_class="negative",
                                                target="Negative.")], tmp_path / "m.parquet")
    table = read_manifest(path)
    assert table.schema.equals(SCHEMA, check_metadata=False)
    assert table.num_rows == 2


@pytest.mark.parametrize("over,message", [
    ({"task": "xyz"}, "field 'task'"),
    ({"split": "dev"}, "field 'split'"),
    ({"prompt": ""}, "field 'prompt'"),
    ({"media_start": 3.0, "media_end": 1.0}, "media_start"),
    ({"label_class": "meh"}, "label fields do not fit task 'msa'"),
])
def test_bad_rows_are_named(over, message):
    with pytest.raises(ManifestError, match=message) as err:
        validate_rows([good_row(), good_row(sample_id="s9", **over)])
    assert "row 1" in str(err.value) and "s9" in str(err.value)


def test_duplicate_ids_are_rejected():
    with pytest.raises(ManifestError, match="duplicates row 0"):
        validate_rows([good_row(), good_row()])


def test_reading_a_foreign_file_names_it(tmp_path):
    bad = tmp_path / "other.parquet"
    pq.write_table(pa.table({"a": [1]}), bad)
    with pytest.raises(ManifestError, match="other.parquet: manifest version"):
        read_manifest(bad)
    junk = tmp_path / "junk.parquet"
    junk.write_text("not parquet")
    with pytest.raises(ManifestError, match="junk.parquet: not a Parquet file"):
        read_manifest(junk)
    with pytest.raises(ManifestError, match="no such manifest"):
        read_manifest(tmp_path / "missing.parquet")


def test_mixture_realises_exact_shares_deterministically():
    ids = [f"s{i}" for i in range(10)]
    tasks = ["msa"] * 6 + ["fer"] * 4
    sources = ["demo"] * 10
    mix = [MixtureEntry(task="msa", weight=1.0), MixtureEntry(task="fer", weight=3.0)]
    mult, seen = realise(ids, tasks, sources, mix, epoch_size=20, seed=1)
    assert seen == {"msa/*": 5, "fer/*": 15}
    assert sum(mult.get(i, 0) for i in ids[:6]) == 5
    assert sum(mult[i] for i in ids[6:]) == 15
    assert all(mult[i] in (3, 4) for i in ids[6:])  # 15 over 4: whole copies, then the rest
    assert realise(ids, tasks, sources, mix, 20, seed=1) == (mult, seen)
    assert realise(ids, tasks, sources, mix, 20, seed=2)[0] != mult


def test_an_epoch_built_in_the_driver_repeats_clips_in_one_seeded_order(tmp_path):
    from emoverse.distributed.stage_trainer import ROW_COLUMNS, deal, epoch_tables

    (tmp_path / "clips").mkdir()
    for part in range(2):  # two shards, as the media stage writes them
        ids = [f"s{part}{i}" for i in range(6)]
        pq.write_table(pa.table({"sample_id": ids, "prompt": ids, "target": ids,
                                 "frames": [[part, i] for i in range(6)],
                                 "split": ["train"] * 6}), tmp_path / "clips" / f"{part}.parquet")
    multiplicity = {"s00": 3, "s01": 1, "s13": 2, "s15": 1}  # the rest: not in this epoch
    [order] = deal(multiplicity, seed=3)
    assert sorted(order) == sorted(s for s, n in multiplicity.items() for _ in range(n))
    blocks = epoch_tables(tmp_path, order, block_rows=3)
    assert [b.num_rows for b in blocks] == [3, 3, 1]
    assert all(b.column_names == ROW_COLUMNS for b in blocks)
    assert [s for b in blocks for s in b.column("sample_id").to_pylist()] == order
    assert blocks[0].column("frames").to_pylist()[0][1] == int(order[0][2])  # rows stay whole
    assert deal(dict(reversed(multiplicity.items())), seed=3) == [order]  # listing order
    others = {tuple(deal(multiplicity, seed=k)[0]) for k in range(4, 8)}
    assert len(others - {tuple(order)}) > 0  # another seed, another order


def test_an_epoch_is_dealt_to_workers_in_equal_seeded_shares():
    from emoverse.distributed.stage_trainer import deal

    multiplicity = {f"s{i:02d}": 1 + i % 3 for i in range(25)}  # 49 copies
    shares = deal(multiplicity, seed=5, workers=2)
    assert [len(s) for s in shares] == [24, 24]  # equal: the odd copy is dropped
    [whole] = deal(multiplicity, seed=5)
    assert shares == [whole[0:48:2], whole[1:48:2]]  # the one order, dealt in turn
    assert deal(multiplicity, seed=5, workers=2) == shares
    assert deal(multiplicity, seed=6, workers=2) != shares


def test_a_split_is_read_from_the_cache_filtered_by_task_in_sample_id_order(tmp_path):
    import json

    from emoverse.media.cache import PARAMS, read_split

    (tmp_path / "clips").mkdir()
    (tmp_path / PARAMS).write_text(json.dumps({"num_frames": 1, "size": 1}))
    for part, ids in enumerate([["d", "b", "x"], ["c", "a", "y"]]):
        pq.write_table(pa.table({
            "sample_id": ids, "task": ["msa", "fer", "msa"], "prompt": ids,
            "split": ["test", "test", "train"], "ok": [True, part == 0, True],
            "frames": [[i, i, i] for i in range(3)]}), tmp_path / "clips" / f"{part}.parquet")
    rows = read_split(tmp_path, "test", ["sample_id", "prompt"])
    assert rows.sample_id.tolist() == ["b", "c", "d"]  # "a" is not ok, x and y are train
    assert list(rows.columns) == ["sample_id", "prompt", "frames"]
    assert rows.frames[0].shape == (1, 1, 1, 3) and rows.frames[0][0, 0, 0, 0] == 1
    assert read_split(tmp_path, "test", ["sample_id"], tasks=["msa"]).sample_id.tolist() \
        == ["c", "d"]
    assert read_split(tmp_path, "valid", ["sample_id"]).empty


def test_mixture_default_epoch_is_the_pool_and_empty_entries_fail():
    ids, tasks, sources = ["a", "b", "c"], ["msa", "msa", "fer"], ["x", "y", "x"]
    mult, seen = realise(ids, tasks, sources, [MixtureEntry(task="msa", source="y", weight=1)])
    assert mult == {"b": 1} and seen == {"msa/y": 1}
    with pytest.raises(MixtureError, match="task=eri"):
        realise(ids, tasks, sources, [MixtureEntry(task="eri", weight=1)])
