"""Serving: the request logic without Ray, then the Serve application over HTTP.

The served run is built like `emoverse train m2se-tiny` leaves one (recipe.yaml,
checkpoints/<stage>/ with lineage), from the tiny model trained for a few steps: stage 1
(full weights) to answer "Negative.", stage 2 (the recipe's LoRA with lm_head in the
adapter) to answer "Positive.", so switching the multiplexed model id flips the answer.
"""

import asyncio
import base64
import json
import os
import shutil
import socket
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from emoverse.serving.config import ServeArgs

STAGE1, STAGE2 = "stage1-multitask-pretraining", "stage2-reason-finetuning"


def train_briefly(model, stage, processor, rows: dict, steps: int = 25):
    import torch

    from emoverse.model.inputs import Collator
    from emoverse.train.engine import TorchEngine
    from emoverse.train.loop import train_epochs

    batch = Collator(processor, 512)(rows)
    torch.manual_seed(0)
    stage = stage.model_copy(update={"epochs": steps, "warmup_steps": 0})
    train_epochs(TorchEngine(model, stage, steps), lambda epoch: iter([batch]), stage, steps)
    return model


@pytest.fixture(scope="module")
def manifest(demo_set) -> pd.DataFrame:
    return pd.read_parquet(demo_set)


@pytest.fixture(scope="module")
def served_run(tmp_path_factory, tiny_model, manifest) -> Path:
    from emoverse.media.clips import process_clip
    from emoverse.media.faces import detector_for
    from emoverse.model.checkpoint import (apply_trainable, load_model, load_processor,
                                           save_checkpoint)
    from emoverse.recipe import dump_recipe, load_recipe

    run = tmp_path_factory.mktemp("served") / "run"
    recipe = load_recipe("m2se-tiny")
    dump_recipe(recipe, run / "recipe.yaml")
    msa = manifest[manifest.task == "msa"].head(8)
    detector = detector_for(recipe.media)
    rows = {"prompt": list(msa.prompt),
            "frames": [process_clip(p, recipe.media, detector).frames for p in msa.media_path]}
    processor = load_processor(tiny_model)
    first = train_briefly(apply_trainable(load_model(tiny_model), recipe.stage(STAGE1).trainable),
                          recipe.stage(STAGE1), processor, {**rows, "target": ["Negative."] * 8})
    save_checkpoint(first, processor, run / "checkpoints" / STAGE1,
                    {"parent": str(tiny_model), "stage": STAGE1})
    base = load_model(run / "checkpoints" / STAGE1)
    second = train_briefly(apply_trainable(base, recipe.stage(STAGE2).trainable),
                           recipe.stage(STAGE2), processor, {**rows, "target": ["Positive."] * 8})
    save_checkpoint(second, processor, run / "checkpoints" / STAGE2,
                    {"parent": f"../{STAGE1}", "stage": STAGE2})
    return run


def row_of(manifest: pd.DataFrame, task: str) -> pd.Series:
    return manifest[manifest.task == task].iloc[0]


def rel(row: pd.Series) -> str:
    return f"clips/{Path(row.media_path).name}"


def write_clip(path: Path, frames: int, fps: int) -> Path:
    from emoverse.emt.demo_clips import write_mp4

    rng = np.random.default_rng(0)
    write_mp4(rng.integers(0, 255, (frames, 64, 64, 3), dtype=np.uint8), str(path), fps=fps)
    return path


# ---------------------------------------------------------------- without Ray


def test_served_prompts_equal_the_training_prompts(manifest):
    from emoverse.serving.schemas import TaskInput

    for _, row in manifest.groupby("task").head(3).iterrows():
        ecpe = row.task == "ecpe"
        served = TaskInput(task=row.task.upper(), transcript=row.transcript or None,
                           conversation=[dict(u) for u in row.context] if ecpe else None,
                           target_utterance=int(row.target_utterance) if ecpe else None)
        assert served.prompt() == row.prompt, row.sample_id


@pytest.mark.parametrize("body, field, words", [
    ({"task": "nope"}, "task", "unknown task 'nope'"),
    ({"task": "msa"}, "body", "needs `transcript`"),
    ({"task": "ecpe"}, "body", "needs `conversation`"),
    ({"task": "ecpe", "conversation": [{"speaker": "A", "text": "hi", "emotion": "joy"}],
      "target_utterance": 3}, "body", "beyond the conversation's 1"),
    ({"task": "ecpe", "conversation": [{"speaker": "A", "text": "hi", "emotion": "glee"}]},
     "conversation.0.emotion", "unknown emotion 'glee'"),
    ({"transcript": "hi"}, "task", "required, but missing"),
])
def test_bad_task_inputs_name_the_field(body, field, words):
    from pydantic import ValidationError

    from emoverse.serving.errors import invalid
    from emoverse.serving.schemas import AnalyzeRequest

    with pytest.raises(ValidationError) as info:
        AnalyzeRequest.model_validate(body)
    error = invalid(info.value)
    assert error.status == 422 and error.field == field and words in str(error)


def test_paths_must_stay_under_the_media_root(tmp_path):
    from emoverse.recipe import MediaConfig
    from emoverse.serving.config import Limits
    from emoverse.serving.errors import ServingError
    from emoverse.serving.videos import VideoSource

    root, outside = tmp_path / "media", tmp_path / "secret.mp4"
    (root / "sub").mkdir(parents=True)
    write_clip(root / "sub" / "ok.mp4", 8, 8)
    write_clip(outside, 8, 8)
    (root / "link.mp4").symlink_to(outside)
    (root / "inner.mp4").symlink_to(root / "sub" / "ok.mp4")
    videos = VideoSource(MediaConfig(num_frames=4, size=56), Limits(), str(root))
    assert videos.stored("sub/ok.mp4").path == str((root / "sub" / "ok.mp4").resolve())
    assert videos.stored("inner.mp4").path == str((root / "sub" / "ok.mp4").resolve())
    for raw, status in [("../secret.mp4", 403), ("sub/../../secret.mp4", 403),
                        (str(outside), 403), ("link.mp4", 403), ("missing.mp4", 404), ("", 400)]:
        with pytest.raises(ServingError) as info:
            videos.stored(raw)
        assert info.value.status == status, raw
    with pytest.raises(ServingError, match="no media_root"):
        VideoSource(MediaConfig(), Limits(), None).stored("sub/ok.mp4")


def test_uploads_and_limits(tmp_path):
    import io

    from emoverse.recipe import MediaConfig
    from emoverse.serving.config import Limits
    from emoverse.serving.errors import ServingError
    from emoverse.serving.videos import VideoSource

    videos = VideoSource(MediaConfig(num_frames=4, size=56), Limits(
        max_upload_mb=0.5, max_video_seconds=3, max_video_frames=100))

    def refused(data: bytes, kind: str = "video/mp4") -> ServingError:
        with pytest.raises(ServingError) as info:
            with videos.uploaded(io.BytesIO(data), kind, "x.mp4") as video:
                videos.clip(video)
        return info.value

    good = write_clip(tmp_path / "good.mp4", 8, 8).read_bytes()
    with videos.uploaded(io.BytesIO(good), "video/mp4", "x.mp4") as video:
        clip = videos.clip(video)
        assert clip.frames.shape == (4, 56, 56, 3) and not clip.cached
        assert videos.clip(video).cached  # same bytes: the processed clip is reused
    assert refused(good, "text/plain").status == 415
    assert refused(b"").status == 415
    assert "not a decodable video" in str(refused(b"hello, not a video" * 10))
    assert refused(os.urandom(600_000)).status == 413  # over 0.5 MiB
    long = write_clip(tmp_path / "long.mp4", 32, 8).read_bytes()  # 4 s
    assert "over the 3s limit" in str(refused(long))
    many = write_clip(tmp_path / "many.mp4", 120, 60).read_bytes()  # 2 s, 120 frames
    assert "over the 100-frame limit" in str(refused(many))


def test_catalog_serves_each_stage_over_one_base(served_run):
    from emoverse.serving.catalog import build_catalog
    from emoverse.serving.config import AdapterSpec

    args = ServeArgs(model=str(served_run), adapters={
        "tenant-a": AdapterSpec(path=str(served_run / "checkpoints" / STAGE2), base=STAGE1)})
    catalog = build_catalog(args)
    assert list(catalog.entries) == [STAGE1, STAGE2, "tenant-a"]
    assert catalog.default == STAGE2 and catalog.media.num_frames == 4
    assert catalog.max_input_tokens == 512  # the recipe's max_length
    first, second, tenant = catalog.entries.values()
    assert first.adapter is None and second.adapter and tenant.adapter
    assert first.base == second.base == tenant.base == str(served_run / "checkpoints" / STAGE1)
    with pytest.raises(ValueError, match="default_model: unknown model 'x'"):
        build_catalog(ServeArgs(model=str(served_run), default_model="x"))
    with pytest.raises(FileNotFoundError, match="no run, stage checkpoint"):
        build_catalog(ServeArgs(model=str(served_run / "nothing")))


def test_engine_switches_adapters_on_one_base_like_merged_weights(served_run, manifest):
    from emoverse.model.generation import AnswerGenerator
    from emoverse.media.clips import process_clip
    from emoverse.media.faces import detector_for
    from emoverse.serving.catalog import build_catalog
    from emoverse.serving.config import AdapterSpec
    from emoverse.serving.model_pool import ModelPool, Job

    catalog = build_catalog(ServeArgs(model=str(served_run), adapters={
        "tenant": AdapterSpec(path=str(served_run / "checkpoints" / STAGE2), base=STAGE1)}))
    rows = manifest[manifest.task.isin(["msa", "mer"])].tail(3)
    detector = detector_for(catalog.media)
    frames = [process_clip(p, catalog.media, detector).frames for p in rows.media_path]
    jobs = [Job(p, f, 6) for p, f in zip(rows.prompt, frames)]
    engine = ModelPool(catalog)
    for model_id in (STAGE2, STAGE1, STAGE2):
        served = [g.text for g in engine.generate(model_id, jobs)]
        merged = AnswerGenerator(str(served_run / "checkpoints" / model_id), 6).generate(
            {"prompt": list(rows.prompt), "frames": frames})
        assert served == merged
    assert served == ["Positive."] * 3
    assert engine.generate("tenant", jobs[:1])[0].text == "Positive."
    assert len(engine._bases) == 1  # every id runs on the one stage-1 base
    for model_id, left in [("tenant", [STAGE1, STAGE2]), (STAGE2, [STAGE1])]:
        engine.unload(model_id)
        assert engine.loaded == left
        assert engine.generate(STAGE1, jobs[:1])[0].text == "Negative."
    engine.unload(STAGE1)
    assert engine.loaded == [] and not engine._bases


def test_serve_config_round_trips_and_is_validated(served_run, tmp_path):
    from emoverse.serving.config import load_serve_config, serve_config, write_serve_config

    args = ServeArgs(model=str(served_run), media_root="/data/clips")
    path = write_serve_config(serve_config(args, port=8123), tmp_path / "serve.yaml")
    config, apps = load_serve_config(path)
    assert apps == {"emoverse": args} and config["http_options"]["port"] == 8123
    assert config["applications"][0]["import_path"] == "emoverse.serving.app:build_app"
    config["applications"][0]["args"]["batching"] = {"max_batch_size": 0}
    path.write_text(json.dumps(config))
    with pytest.raises(ValueError, match="invalid args"):
        load_serve_config(path)
    with pytest.raises(ValueError, match="max_batch_size"):
        ServeArgs(model="m", batching={"max_batch_size": 64})  # above max_ongoing_requests


def test_serve_build_writes_a_config_the_typed_builder_accepts(served_run, tmp_path, capsys):
    from ray.serve._private.api import call_user_app_builder_with_args_if_necessary

    from emoverse.cli import main
    from emoverse.serving.app import build_app
    from emoverse.serving.config import load_serve_config

    out = tmp_path / "serve.yaml"
    assert main(["serve", "build", str(served_run), "--out", str(out), "--media-root",
                 str(tmp_path), "batching.max_batch_size=8", "--adapter",
                 f"tenant={served_run / 'checkpoints' / STAGE2}",
                 f"adapters.tenant.base={STAGE1}"]) == 0
    config, apps = load_serve_config(out)
    args = apps["emoverse"]
    assert args.model == str(served_run) and args.batching.max_batch_size == 8
    assert args.adapters["tenant"].base == STAGE1 and config["http_options"]["host"] == "0.0.0.0"
    # Serve validates the file's args against build_app's pydantic annotation, as
    # `serve deploy` and a RayService do
    app = call_user_app_builder_with_args_if_necessary(build_app, config["applications"][0]["args"])
    assert type(app).__name__ == "Application"
    assert main(["serve", "build", str(served_run), "--out", str(out), "batching.nope=1"]) == 2
    assert main(["serve", "build", "--out", str(out)]) == 2
    assert "field 'batching.nope': Extra inputs" in capsys.readouterr().err


def test_remote_code_stays_off_unless_configured(tiny_model, tmp_path, monkeypatch):
    from emoverse.serving.catalog import build_catalog

    calls = []
    from transformers import AutoConfig

    real = AutoConfig.from_pretrained
    monkeypatch.setattr(AutoConfig, "from_pretrained",
                        lambda *a, **k: calls.append(k["trust_remote_code"]) or real(*a, **k))
    build_catalog(ServeArgs(model=str(tiny_model)))
    build_catalog(ServeArgs(model=str(tiny_model), trust_remote_code=True))
    assert calls == [False, True]


class PoolBackend:
    """The model deployment's work in-process, for the app without Ray."""

    def __init__(self, engine):
        self.engine = engine

    async def generate(self, model_id, job):
        return (await asyncio.to_thread(self.engine.generate, model_id, [job]))[0]

    async def stream(self, model_id, job):
        async for step in self.engine.stream(model_id, [job]):
            if step[0] is not None:
                yield step[0]

    async def status(self):
        return {"loaded": self.engine.loaded}


KEY = "sk-test-0123456789"


@pytest.fixture(scope="module")
def app_service(served_run, demo_set):
    """The app's Service over an in-process model pool, one API key, telemetry recorded."""
    from emoverse.serving.auth import ApiKeys
    from emoverse.serving.model_pool import ModelPool
    from emoverse.serving.requests import Service
    from emoverse.serving.telemetry import Recorded

    args = ServeArgs(model=str(served_run), media_root=str(demo_set.parent),
                     limits={"max_upload_mb": 0.25})
    service = Service.create(args, None, Recorded())
    service.keys = ApiKeys("KEYS", environ={"KEYS": f"{KEY}, sk-other"})
    service.backend = PoolBackend(ModelPool(service.catalog))
    return service


@pytest.fixture(scope="module")
def client(app_service):
    from fastapi.testclient import TestClient

    from emoverse.serving.api import create_app

    return TestClient(create_app(app_service), headers={"Authorization": f"Bearer {KEY}"})


def test_the_app_without_ray(client, app_service, manifest):
    row = row_of(manifest, "msa")
    body = {"task": "msa", "transcript": row.transcript, "video_path": rel(row)}
    answer = client.post("/v1/analyze", json=body).json()
    assert answer["answer"] == {"label": "positive"} and answer["model"] == STAGE2
    assert answer["frames"] is None
    # a body streamed without a length is cut off at the limit
    chunks = (b"x" * 65536 for _ in range(40))  # 2.5 MiB
    r = client.post("/v1/analyze", content=chunks, headers={"content-type": "application/json"})
    assert r.status_code == 413 and r.json()["error"]["field"] == "body"
    assert STAGE2 in client.get("/healthz").json()["model_server"]["loaded"]
    statuses = [(route, task, status) for route, task, _, status, _ in
                app_service.telemetry.requests]
    assert ("/v1/analyze", "msa", 200) in statuses and ("/v1/analyze", "none", 413) in statuses
    task, model, *_, face_found, parsed = app_service.telemetry.answers[-1]
    assert (task, model, parsed) == ("msa", STAGE2, True)


def test_overload_tells_clients_when_to_retry(client, app_service, manifest, monkeypatch):
    from emoverse.serving.errors import Overloaded

    class Full(PoolBackend):
        async def generate(self, model_id, job):
            raise Overloaded("model deployment queue full")

    monkeypatch.setattr(app_service, "backend", Full(None))
    row = row_of(manifest, "msa")
    r = client.post("/v1/analyze", json={"task": "msa", "transcript": row.transcript,
                                         "video_path": rel(row)})
    assert r.status_code == 503 and r.headers["retry-after"] == "1"
    assert r.json()["error"]["message"].startswith("server: overloaded, retry later")


def test_api_keys_from_the_environment_and_a_rotated_file(tmp_path, caplog):
    from emoverse.serving.auth import ApiKeys
    from emoverse.serving.errors import ServingError

    keys_file = tmp_path / "keys"
    keys_file.write_text("# one key per line\nsk-file-1  # ops\n\n")
    keys = ApiKeys("KEYS", str(keys_file), environ={"KEYS": "sk-env-1,sk-env-2"})
    assert keys.required and "3 API key(s) from $KEYS and" in keys.describe()
    for good in ("Bearer sk-env-2", "bearer sk-file-1", "Bearer  sk-env-1 "):
        keys.check(good)
    for bad, words in [(None, "missing API key"), ("sk-env-1", "missing API key"),
                       ("Basic sk-env-1", "missing API key"), ("Bearer sk-nope", "invalid"),
                       ("Bearer ", "missing API key")]:
        with pytest.raises(ServingError, match=words) as info:
            keys.check(bad)
        assert info.value.status == 401 and "sk-" not in str(info.value)
    keys_file.write_text("sk-file-2\n")  # a rotated Secret
    os.utime(keys_file, ns=(1, 1))
    keys.check("Bearer sk-file-2")
    with pytest.raises(ServingError):
        keys.check("Bearer sk-file-1")
    assert not ApiKeys("KEYS", environ={}).required
    ApiKeys("KEYS", environ={}).check(None)  # open without keys
    with pytest.raises(FileNotFoundError, match="auth.api_keys_file: no file"):
        ApiKeys(None, str(tmp_path / "missing"))
    assert "sk-" not in caplog.text


def test_keys_guard_the_api_but_not_health_or_the_page(client):
    assert client.get("/healthz", headers={"Authorization": ""}).json()["auth"] is True
    page = client.get("/", headers={"Authorization": ""})
    assert page.status_code == 200 and 'id="clip-file"' in page.text
    for headers, words in [({"Authorization": ""}, "missing API key"),
                           ({"Authorization": "Bearer sk-wrong"}, "invalid API key")]:
        r = client.get("/v1/models", headers=headers)
        assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
        error = r.json()["error"]
        assert error["field"] == "authorization" and error["status"] == 401
        assert error["message"].startswith(f"authorization: {words}")
        r = client.post("/v1/analyze", headers=headers, json={"task": "msa"})
        assert r.status_code == 401
    assert client.get("/v1/models", headers={"Authorization": "Bearer sk-other"}).status_code == 200
    # under a Serve route prefix the same paths are open and guarded
    from fastapi.testclient import TestClient

    prefixed = TestClient(client.app, root_path="/emo")
    assert prefixed.get("/emo/healthz").status_code == 200
    assert prefixed.get("/emo/").status_code == 200
    assert prefixed.get("/emo/v1/models").status_code == 401


def test_deeply_nested_json_is_a_400_not_a_crash(client):
    for depth in (33, 1000, 100_000):
        body = "[" * depth + "]" * depth
        r = client.post("/v1/chat/completions", content=body,
                        headers={"content-type": "application/json"})
        assert r.status_code == 400, (depth, r.text)
        assert r.json()["error"]["message"] == "body: JSON nested deeper than 32 levels"
    conversation = '[{"speaker": "A", "text": "hi", "emotion": "joy", "x": ' + "[" * 5000 \
        + "]" * 5000 + "}]"
    r = client.post("/v1/analyze", data={"task": "ecpe", "conversation": conversation},
                    files={"video": ("a.mp4", b"0", "video/mp4")})
    assert r.status_code == 400 and r.json()["error"]["field"] == "conversation"
    r = client.post("/v1/analyze", json={"task": "msa", "stream": True})
    assert r.status_code == 400 and "stream from /v1/chat/completions" in r.text


def test_the_page_lists_clips_and_gets_the_face_crops(client, manifest):
    clips = client.get("/v1/clips").json()
    assert {"path": rel(row_of(manifest, "fer")), "size": Path(
        row_of(manifest, "fer").media_path).stat().st_size} in clips["data"]
    assert not clips["truncated"] and all(c["path"].endswith(".mp4") for c in clips["data"])
    fer = client.get("/v1/clips", params={"q": "FER"}).json()["data"]
    assert fer and all("-fer-" in c["path"] for c in fer)
    r = client.get("/v1/clips", params={"q": "x" * 201})
    assert r.status_code == 422 and r.json()["error"]["field"] == "query.q"
    row = row_of(manifest, "fer")
    with open(row.media_path, "rb") as f:
        out = client.post("/v1/analyze", data={"task": "fer", "include_frames": "true"},
                          files={"video": ("clip.mp4", f, "video/mp4")}).json()
    assert len(out["frames"]) == 4 and out["frames"][0].startswith("data:image/jpeg;base64,")
    crop = np.frombuffer(base64.b64decode(out["frames"][0].split(",", 1)[1]), np.uint8)
    import cv2
    assert cv2.imdecode(crop, cv2.IMREAD_COLOR).shape == (56, 56, 3)


def sse_events(lines) -> list:
    events = [line.removeprefix("data: ") for line in lines if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    return [json.loads(e) for e in events[:-1]]


def test_streamed_chat_adds_up_to_the_whole_answer(client, app_service, manifest):
    row = row_of(manifest, "eri")
    body = {"model": STAGE1, "task": "eri", "max_tokens": 12, "messages": [{"role": "user",
            "content": [{"type": "video_url", "video_url": {"url": rel(row)}},
                        {"type": "text", "text": row.transcript}]}]}
    whole = client.post("/v1/chat/completions", json=body).json()
    with client.stream("POST", "/v1/chat/completions", json={
            **body, "stream": True, "stream_options": {"include_usage": True}}) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        chunks = sse_events(r.iter_lines())
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"])
    assert text == whole["choices"][0]["message"]["content"]
    assert len([c for c in chunks if c["choices"] and c["choices"][0]["delta"].get("content")]) > 1
    finish = [c for c in chunks if c["choices"] and c["choices"][0].get("finish_reason")]
    assert [c["choices"][0]["finish_reason"] for c in finish] == [whole["choices"][0][
        "finish_reason"]]
    assert finish[0]["emoverse"]["task"] == "eri"
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"] == whole["usage"]
    assert {c["id"] for c in chunks} == {chunks[0]["id"]}
    assert app_service.telemetry.first_tokens[-1][0] == STAGE1


def test_model_pool_streams_what_it_generates(served_run, manifest):
    from emoverse.media.clips import process_clip
    from emoverse.media.faces import detector_for
    from emoverse.serving.catalog import build_catalog
    from emoverse.serving.model_pool import Job, ModelPool

    catalog = build_catalog(ServeArgs(model=str(served_run)))
    rows = manifest[manifest.task.isin(["eri", "msa"])].groupby("task").head(2)
    detector = detector_for(catalog.media)
    jobs = [Job(p, process_clip(m, catalog.media, detector).frames, budget)
            for p, m, budget in zip(rows.prompt, rows.media_path, [3, 9, 1, 12])]
    pool = ModelPool(catalog)

    async def streamed(model_id):
        texts, done = [""] * len(jobs), [None] * len(jobs)
        async for step in pool.stream(model_id, jobs):
            for i, delta in enumerate(step):
                if delta is not None:
                    assert done[i] is None, "a delta after the row was done"
                    texts[i] += delta.text
                    done[i] = delta.done
        return texts, done

    for model_id in (STAGE1, STAGE2):
        whole = pool.generate(model_id, jobs)
        texts, done = asyncio.run(streamed(model_id))
        assert texts == [g.text for g in whole]
        assert [(d.completion_tokens, d.prompt_tokens, d.batch_size) for d in done] == [
            (g.completion_tokens, g.prompt_tokens, g.batch_size) for g in whole]
        assert all(d.completion_tokens <= j.max_new_tokens for d, j in zip(done, jobs))


def test_openapi_describes_every_body_and_refusal(client):
    spec = client.get("/openapi.json", headers={"Authorization": ""}).json()
    analyze = spec["paths"]["/v1/analyze"]["post"]
    assert set(analyze["requestBody"]["content"]) == {"application/json",
                                                      "multipart/form-data"}
    form = spec["components"]["schemas"]["AnalyzeForm"]["properties"]
    assert form["video"]["format"] == "binary" and "task" in form
    chat = spec["paths"]["/v1/chat/completions"]["post"]
    assert set(chat["responses"]["200"]["content"]) == {"application/json", "text/event-stream"}
    for path in ("/v1/analyze", "/v1/chat/completions", "/v1/models", "/v1/clips"):
        for operation in spec["paths"][path].values():
            assert operation["responses"]["401"]["content"]["application/json"]["schema"] == {
                "$ref": "#/components/schemas/ErrorBody"}
    refs = set()

    def collect(node):
        if isinstance(node, dict):
            refs.update([node["$ref"]] if "$ref" in node else [])
            for value in node.values():
                collect(value)
        elif isinstance(node, list):
            for value in node:
                collect(value)

    collect(spec)
    assert {r.rsplit("/", 1)[1] for r in refs} <= set(spec["components"]["schemas"])


def test_fuzzed_requests_never_get_a_5xx(client):
    """schemathesis generates requests from /openapi.json, valid and not, for every
    operation: each answer is a documented status with a documented content type, never
    a 5xx."""
    import schemathesis
    from hypothesis import HealthCheck, given, settings
    from schemathesis.checks import (content_type_conformance, not_a_server_error,
                                     status_code_conformance)

    schema = schemathesis.openapi.from_asgi("/openapi.json", client.app)
    operations = [result.ok() for result in schema.get_all_operations()]
    assert {op.label for op in operations} >= {"POST /v1/analyze", "POST /v1/chat/completions",
                                               "GET /v1/models", "GET /v1/clips", "GET /healthz"}
    for operation in operations:
        @given(case=operation.as_strategy())
        @settings(max_examples=40, deadline=None, derandomize=True, database=None,
                  suppress_health_check=list(HealthCheck))
        def fuzz(case):
            response = case.call(headers={"Authorization": f"Bearer {KEY}"})
            case.validate_response(response, checks=[
                not_a_server_error, status_code_conformance, content_type_conformance])

        fuzz()


def test_local_autoscaling_fits_the_machine():
    from emoverse.serving.config import sized_for_local

    args = ServeArgs(model="m")
    sized, change = sized_for_local(args, cpus=2, gpus=0)
    assert sized.model_server.autoscaling.max_replicas == 1 and "2 -> 1" in change
    assert sized.model_server.autoscaling.min_replicas == 1
    assert sized_for_local(args, cpus=8, gpus=0) == (args, None)  # room for 2: as configured
    gpu = ServeArgs(model="m", model_server={"num_gpus": 1})
    assert sized_for_local(gpu, cpus=16, gpus=1)[0].model_server.autoscaling.max_replicas == 1
    chosen = ServeArgs(model="m", model_server={"autoscaling": {"max_replicas": 4}})
    assert sized_for_local(chosen, cpus=2, gpus=0) == (chosen, None)  # the user's choice
    fixed = ServeArgs(model="m", model_server={"autoscaling": None, "num_replicas": 2})
    assert sized_for_local(fixed, cpus=2, gpus=0) == (fixed, None)


# ---------------------------------------------------------------- on Ray Serve

def http():
    """A client session carrying the test server's API key."""
    import requests

    session = requests.Session()
    session.headers["Authorization"] = f"Bearer {KEY}"
    return session



def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(served_run, demo_set, tmp_path_factory):
    """The Serve application on a free port; yields its base URL."""
    import ray
    from ray import serve

    from emoverse.serving.app import build_app

    root = tmp_path_factory.mktemp("media")  # the demo clips, and the bad ones beside them
    shutil.copytree(demo_set.parent / "clips", root / "clips")
    outside = tmp_path_factory.mktemp("outside")
    write_clip(outside / "secret.mp4", 8, 8)
    (root / "link.mp4").symlink_to(outside / "secret.mp4")
    write_clip(root / "long.mp4", 32, 8)  # 4 s
    write_clip(root / "many.mp4", 120, 60)  # 120 frames
    keys = tmp_path_factory.mktemp("secret") / "api-keys"  # as a mounted Secret would be
    keys.write_text(f"{KEY}\n")
    args = ServeArgs(
        model=str(served_run), media_root=str(root),
        limits={"max_upload_mb": 0.25, "max_video_seconds": 3, "max_video_frames": 100},
        batching={"max_batch_size": 4, "batch_wait_timeout_s": 0.05},
        # small queues so that a burst overloads the model deployment
        model_server={"num_cpus": 0.5, "autoscaling": None, "max_ongoing_requests": 4,
                      "max_queued_requests": 2},
        gateway={"num_cpus": 0.5}, auth={"api_keys_file": str(keys), "api_keys_env": None})
    port = free_port()
    ray.init(num_cpus=2, include_dashboard=False, _metrics_export_port=free_port())
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        serve.run(build_app(args), name="emoverse", route_prefix="/")
        yield f"http://127.0.0.1:{port}"
    finally:
        serve.shutdown()
        ray.shutdown()


def analyze(url, manifest, task="msa", header=None, **extra):
    row = row_of(manifest, task)
    body = {"task": task, "transcript": row.transcript, "video_path": rel(row), **extra}
    if task == "ecpe":
        body["conversation"] = [dict(u) for u in row.context]
    headers = {"serve_multiplexed_model_id": header} if header else {}
    return http().post(f"{url}/v1/analyze", json=body, headers=headers, timeout=60)


@pytest.mark.integration
def test_health_and_models(server):
    health = http().get(f"{server}/healthz", timeout=30).json()
    assert health["status"] == "ok" and health["default_model"] == STAGE2
    models = http().get(f"{server}/v1/models", timeout=30).json()
    assert [(m["id"], m["kind"], m["default"]) for m in models["data"]] == [
        (STAGE1, "weights", False), (STAGE2, "adapter", True)]


@pytest.mark.integration
def test_adapter_switch_between_requests_is_seen_in_the_answers(server, manifest):
    answers = [analyze(server, manifest, header=m).json() for m in (STAGE1, STAGE2, STAGE1)]
    assert [a["answer"] for a in answers] == [{"label": "negative"}, {"label": "positive"},
                                              {"label": "negative"}]
    assert [a["model"] for a in answers] == [STAGE1, STAGE2, STAGE1]
    assert answers[1]["media_cached"] and answers[1]["timing"]["total_ms"] > 0
    # so does the body's `model` field (it wins over the header)
    assert analyze(server, manifest, header=STAGE2, model=STAGE1).json()["answer"] == {
        "label": "negative"}


@pytest.mark.integration
def test_analyze_every_task_with_real_clips(server, manifest):
    for task in ("msa", "mer", "fer", "eri", "ecpe"):
        r = analyze(server, manifest, task=task)
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["task"] == task and isinstance(body["raw"], str)
        assert body["usage"]["prompt_tokens"] > 0 and body["timing"]["batch_size"] >= 1


@pytest.mark.integration
def test_analyze_a_multipart_upload(server, manifest):
    row = row_of(manifest, "mer")
    with open(row.media_path, "rb") as f:
        r = http().post(f"{server}/v1/analyze", timeout=60,
                          data={"task": "mer", "transcript": row.transcript, "model": STAGE1},
                          files={"video": ("clip.mp4", f, "video/mp4")})
    assert r.status_code == 200, r.text
    assert r.json()["raw"] == "Negative." and r.json()["model"] == STAGE1


@pytest.mark.integration
def test_chat_completions_with_a_video_part(server, manifest):
    row = row_of(manifest, "msa")
    data = base64.b64encode(Path(row.media_path).read_bytes()).decode()
    for model, url, label in [(STAGE2, f"data:video/mp4;base64,{data}", "positive"),
                              (STAGE1, f"file://{rel(row)}", "negative")]:
        body = {"model": model, "task": "msa", "temperature": 0.7, "messages": [
            {"role": "system", "content": "ignored"},
            {"role": "user", "content": [{"type": "video_url", "video_url": {"url": url}},
                                         {"type": "text", "text": row.transcript}]}]}
        r = http().post(f"{server}/v1/chat/completions", json=body, timeout=60)
        assert r.status_code == 200, r.text
        out = r.json()
        assert out["object"] == "chat.completion" and out["model"] == model
        assert out["choices"][0]["message"]["content"] == label.capitalize() + "."
        assert out["emoverse"]["answer"] == {"label": label}
    # without `task`, the text is the prompt verbatim (here the training prompt)
    body["messages"][1]["content"][1]["text"] = row.prompt
    del body["task"]
    out = http().post(f"{server}/v1/chat/completions", json=body, timeout=60).json()
    assert out["emoverse"]["task"] == "msa" and out["emoverse"]["answer"] == {"label": "negative"}


BAD_ANALYZE = {
    "malformed JSON": (dict(data=b"{not json", headers={"content-type": "application/json"}),
                       400, "body", "malformed JSON"),
    "unknown task": (dict(json={"task": "joke", "transcript": "x", "video_path": "a.mp4"}),
                     422, "task", "unknown task 'joke'"),
    "missing transcript": (dict(json={"task": "mer", "video_path": "a.mp4"}),
                           422, "body", "needs `transcript`"),
    "missing video": (dict(json={"task": "mer", "transcript": "x"}), 422, "video", "required"),
    "missing conversation": (dict(json={"task": "ecpe", "video_path": "a.mp4"}),
                             422, "body", "needs `conversation`"),
    "unknown model": (dict(json={"task": "fer", "video_path": "a.mp4", "model": "nope"}),
                      404, "model", "unknown model 'nope'"),
    "wrong content type": (dict(data=b"task=msa", headers={"content-type": "text/plain"}),
                           415, "content-type", "send application/json"),
    "non-video upload": (dict(data={"task": "fer"}, files={"video": ("a.mp4", b"not a video " * 50,
                                                                     "video/mp4")}),
                         415, "video", "not a decodable video"),
    "text upload": (dict(data={"task": "fer"}, files={"video": ("a.txt", b"hello", "text/plain")}),
                    415, "video", "content type 'text/plain' is not a video"),
    "oversize upload": (dict(data={"task": "fer"}, files={"video": ("a.mp4", b"0" * 300_000,
                                                                    "video/mp4")}),
                        413, "video", "over the 0.25 MiB limit"),
    "oversize body": (dict(data=b"{" + b" " * 2_000_000 + b"}",
                           headers={"content-type": "application/json"}),
                      413, "body", "request body is over"),
    "video too long": (dict(json={"task": "fer", "video_path": "long.mp4"}),
                       413, "video_path", "over the 3s limit"),
    "too many frames": (dict(json={"task": "fer", "video_path": "many.mp4"}),
                        413, "video_path", "over the 100-frame limit"),
    "dot-dot path": (dict(json={"task": "fer", "video_path": "../outside/secret.mp4"}),
                     403, "video_path", "outside the media root"),
    "absolute path": (dict(json={"task": "fer", "video_path": "/etc/passwd"}),
                      403, "video_path", "outside the media root"),
    "symlink out of the root": (dict(json={"task": "fer", "video_path": "link.mp4"}),
                                403, "video_path", "outside the media root"),
    "missing file": (dict(json={"task": "fer", "video_path": "clips/none.mp4"}),
                     404, "video_path", "no video at"),
    "conversation too long": (dict(json={"task": "ecpe", "video_path": "clips/demo-ecpe-00000.mp4",
                                         "conversation": [
        {"speaker": "Anna", "text": "I read the report this morning " * 3, "emotion": "neutral"}
    ] * 40}), 422, "conversation", "too long for the model"),
}


@pytest.mark.integration
@pytest.mark.parametrize("name", list(BAD_ANALYZE))
def test_bad_input_is_a_4xx_naming_the_input(server, name):
    kwargs, status, field, words = BAD_ANALYZE[name]
    r = http().post(f"{server}/v1/analyze", timeout=60, **kwargs)
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert error["field"] == field and words in error["message"], error


@pytest.mark.integration
@pytest.mark.parametrize("change, status, words", [
    ({"n": 2}, 400, "only n=1 is supported"),
    ({"messages": []}, 422, "messages"),
    ({"max_tokens": 10_000}, 422, "over the 256-token cap"),
    ({"video": "https://example.com/a.mp4"}, 400, "remote video URLs are not fetched"),
    ({"video": "data:video/mp4;base64,@@@"}, 422, "malformed base64"),
    ({"video": "../../etc/passwd"}, 403, "outside the media root"),
])
def test_bad_chat_input_is_a_4xx(server, change, status, words):
    video = change.pop("video", "clips/none.mp4")
    body = {"model": STAGE2, "task": "fer", "messages": [{"role": "user", "content": [
        {"type": "video_url", "video_url": {"url": video}}]}], **change}
    r = http().post(f"{server}/v1/chat/completions", json=body, timeout=60)
    assert r.status_code == status and words in r.json()["error"]["message"], r.text


@pytest.mark.integration
def test_overload_answers_503_and_the_server_keeps_serving(server, manifest):
    # 32 at once overrun the model deployment's 4 ongoing + 2 queued requests
    with ThreadPoolExecutor(32) as pool:
        answers = list(pool.map(lambda _: analyze(server, manifest, task="mer"), range(32)))
    codes = [r.status_code for r in answers]
    assert set(codes) <= {200, 503} and codes.count(503) > 0 and codes.count(200) >= 4
    assert all(r.headers["retry-after"] == "1" for r in answers if r.status_code == 503)
    r = http().post(f"{server}/v1/analyze", timeout=60, json={"task": "eri"})
    assert r.status_code == 422
    assert analyze(server, manifest).json()["answer"] == {"label": "positive"}
    assert http().get(f"{server}/healthz", timeout=30).status_code == 200


@pytest.mark.integration
def test_the_openai_client_streams_and_keys_are_checked(server, manifest):
    import openai

    row = row_of(manifest, "msa")
    messages = [{"role": "user", "content": [
        {"type": "video_url", "video_url": {"url": rel(row)}},
        {"type": "text", "text": row.transcript}]}]
    client = openai.OpenAI(base_url=f"{server}/v1", api_key=KEY, max_retries=0)
    assert [m.id for m in client.models.list()] == [STAGE1, STAGE2]
    whole = client.chat.completions.create(model=STAGE2, messages=messages,
                                           extra_body={"task": "msa"})
    stream = client.chat.completions.create(model=STAGE2, messages=messages, stream=True,
                                            stream_options={"include_usage": True},
                                            extra_body={"task": "msa"})
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content == "Positive."
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == \
        whole.choices[0].finish_reason
    assert chunks[-1].usage.total_tokens == whole.usage.total_tokens
    # several streams at once share generation batches with each other
    with ThreadPoolExecutor(4) as pool:
        texts = list(pool.map(lambda _: "".join(
            c.choices[0].delta.content or "" for c in client.chat.completions.create(
                model=STAGE1, messages=messages, stream=True, extra_body={"task": "msa"})),
            range(4)))
    assert texts == ["Negative."] * 4
    with pytest.raises(openai.AuthenticationError, match="invalid API key"):
        openai.OpenAI(base_url=f"{server}/v1", api_key="sk-wrong", max_retries=0
                      ).chat.completions.create(model=STAGE2, messages=messages)
    import requests

    r = requests.post(f"{server}/v1/chat/completions", json={}, timeout=30)
    assert r.status_code == 401 and "missing API key" in r.json()["error"]["message"]
    assert requests.get(f"{server}/healthz", timeout=30).status_code == 200  # open


@pytest.mark.integration
def test_metrics_reach_the_prometheus_endpoint(server, manifest):
    import time

    import ray
    import requests

    analyze(server, manifest, task="fer")
    node = next(n for n in ray.nodes() if n["Alive"])
    url = f"http://{node['NodeManagerAddress']}:{node['MetricsExportPort']}/metrics"
    wanted = ["ray_emoverse_requests_total", "ray_emoverse_request_ms_bucket",
              "ray_emoverse_media_ms_bucket", "ray_emoverse_queue_ms_bucket",
              "ray_emoverse_generate_ms_bucket", "ray_emoverse_batch_size_bucket",
              "ray_emoverse_clips_total", "ray_emoverse_first_token_ms_bucket"]
    deadline = time.monotonic() + 90  # Ray exports every few seconds
    while True:
        text = requests.get(url, timeout=10).text
        lines = [line for line in text.splitlines() if line.startswith("ray_emoverse_")]
        missing = [name for name in wanted if not any(line.startswith(name) for line in lines)]
        if not missing or time.monotonic() > deadline:
            break
        time.sleep(2)
    assert not missing, f"not exported: {missing}"
    fer_ok = [line for line in lines if line.startswith("ray_emoverse_requests_total")
              and 'route="/v1/analyze"' in line and 'task="fer"' in line
              and 'status="200"' in line]
    assert fer_ok and float(fer_ok[0].rsplit(" ", 1)[1]) >= 1
    assert any('status="401"' in line for line in lines if "requests_total" in line)
    assert any('face_found="' in line for line in lines if "clips_total" in line)


def browser(profile: Path):
    """Headless Chromium under Selenium (Debian's chromium and chromium-driver), its
    profile in `profile` (chromium leaves it behind otherwise)."""
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    if not (chromium and driver):
        if os.environ.get("EMOVERSE_REQUIRE_BROWSER"):
            pytest.fail("chromium and chromedriver are required (apt-get install chromium "
                        "chromium-driver)")
        pytest.skip("no chromium / chromedriver here (CI installs them)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service as ChromeService

    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                 f"--user-data-dir={profile}"):
        options.add_argument(flag)
    return webdriver.Chrome(service=ChromeService(executable_path=driver), options=options)


@pytest.mark.integration
def test_the_page_in_a_real_browser(server, manifest, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ready
    from selenium.webdriver.support.ui import Select, WebDriverWait

    row = row_of(manifest, "mer")
    big = tmp_path / "big.mp4"
    big.write_bytes(os.urandom(300_000))  # over the server's 0.25 MiB
    driver = browser(tmp_path / "chromium-profile")

    class Waiting(WebDriverWait):
        def until(self, condition, message=""):
            try:
                return super().until(condition, message)
            except Exception:  # say what the page showed
                raise AssertionError(f"page error: {driver.find_element(By.ID, 'error').text!r}; "
                                     f"console: {driver.get_log('browser')}") from None

    try:
        wait = Waiting(driver, 120)
        driver.get(server + "/")
        key = wait.until(ready.visibility_of_element_located((By.ID, "key")))
        key.send_keys(KEY)
        key.send_keys("\t")  # change: the page lists the clips with the key
        wait.until(lambda d: len(Select(d.find_element(By.ID, "clip-select")).options) > 1)
        driver.find_element(By.ID, "clip-filter").send_keys("-mer-")
        wait.until(lambda d: all("-mer-" in o.text for o in Select(d.find_element(
            By.ID, "clip-select")).options[1:]))
        assert rel(row) in [o.text for o in Select(driver.find_element(
            By.ID, "clip-select")).options]
        driver.find_element(By.ID, "clip-file").send_keys(str(Path(row.media_path).resolve()))
        driver.find_element(By.ID, "transcript").send_keys(row.transcript)
        Select(driver.find_element(By.ID, "task")).select_by_value("all")
        driver.find_element(By.ID, "analyze").click()
        wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#results .result")) == 5)
        cards = {c.get_attribute("data-task"): c for c in
                 driver.find_elements(By.CSS_SELECTOR, "#results .result")}
        assert sorted(cards) == ["ecpe", "eri", "fer", "mer", "msa"]
        assert not driver.find_elements(By.CSS_SELECTOR, "#results .failed")
        for card in cards.values():
            assert card.find_element(By.CLASS_NAME, "answer").text.strip()
            assert "ms" in card.find_element(By.CLASS_NAME, "timing").text
        assert cards["msa"].find_element(By.CLASS_NAME, "answer").text == "positive"
        crops = driver.find_elements(By.CSS_SELECTOR, "#frames img")
        assert len(crops) == 4 and all(driver.execute_script(
            "return arguments[0].complete && arguments[0].naturalWidth", img) == 56
            for img in crops)
        # a clip over the upload limit is refused with the server's words
        driver.find_element(By.ID, "clip-file").send_keys(str(big))
        driver.find_element(By.ID, "analyze").click()
        wait.until(lambda d: d.find_element(By.ID, "error").text)
        assert driver.find_element(By.ID, "error").text == \
            "video: upload is over the 0.25 MiB limit"
    finally:
        driver.quit()
