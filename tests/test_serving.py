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

    async def status(self):
        return {"loaded": self.engine.loaded}


def test_the_app_without_ray(served_run, demo_set, manifest):
    from fastapi.testclient import TestClient

    from emoverse.serving.api import create_app
    from emoverse.serving.model_pool import ModelPool
    from emoverse.serving.requests import Service

    args = ServeArgs(model=str(served_run), media_root=str(demo_set.parent),
                     limits={"max_upload_mb": 0.25})
    service = Service.create(args, None)
    service.backend = PoolBackend(ModelPool(service.catalog))
    client = TestClient(create_app(service))
    row = row_of(manifest, "msa")
    body = {"task": "msa", "transcript": row.transcript, "video_path": rel(row)}
    answer = client.post("/v1/analyze", json=body).json()
    assert answer["answer"] == {"label": "positive"} and answer["model"] == STAGE2
    # a body streamed without a length is cut off at the limit
    chunks = (b"x" * 65536 for _ in range(40))  # 2.5 MiB
    r = client.post("/v1/analyze", content=chunks, headers={"content-type": "application/json"})
    assert r.status_code == 413 and r.json()["error"]["field"] == "body"
    assert client.get("/healthz").json()["model_server"]["loaded"] == [STAGE2]


# ---------------------------------------------------------------- on Ray Serve


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
    args = ServeArgs(
        model=str(served_run), media_root=str(root),
        limits={"max_upload_mb": 0.25, "max_video_seconds": 3, "max_video_frames": 100},
        batching={"max_batch_size": 4, "batch_wait_timeout_s": 0.05},
        # small queues so that a burst overloads the model deployment
        model_server={"num_cpus": 0.5, "autoscaling": None, "max_ongoing_requests": 4,
                      "max_queued_requests": 2},
        gateway={"num_cpus": 0.5})
    port = free_port()
    ray.init(num_cpus=2, include_dashboard=False)
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        serve.run(build_app(args), name="emoverse", route_prefix="/")
        yield f"http://127.0.0.1:{port}"
    finally:
        serve.shutdown()
        ray.shutdown()


def analyze(url, manifest, task="msa", header=None, **extra):
    import requests

    row = row_of(manifest, task)
    body = {"task": task, "transcript": row.transcript, "video_path": rel(row), **extra}
    if task == "ecpe":
        body["conversation"] = [dict(u) for u in row.context]
    headers = {"serve_multiplexed_model_id": header} if header else {}
    return requests.post(f"{url}/v1/analyze", json=body, headers=headers, timeout=60)


@pytest.mark.integration
def test_health_and_models(server):
    import requests

    health = requests.get(f"{server}/healthz", timeout=30).json()
    assert health["status"] == "ok" and health["default_model"] == STAGE2
    models = requests.get(f"{server}/v1/models", timeout=30).json()
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
    import requests

    row = row_of(manifest, "mer")
    with open(row.media_path, "rb") as f:
        r = requests.post(f"{server}/v1/analyze", timeout=60,
                          data={"task": "mer", "transcript": row.transcript, "model": STAGE1},
                          files={"video": ("clip.mp4", f, "video/mp4")})
    assert r.status_code == 200, r.text
    assert r.json()["raw"] == "Negative." and r.json()["model"] == STAGE1


@pytest.mark.integration
def test_chat_completions_with_a_video_part(server, manifest):
    import requests

    row = row_of(manifest, "msa")
    data = base64.b64encode(Path(row.media_path).read_bytes()).decode()
    for model, url, label in [(STAGE2, f"data:video/mp4;base64,{data}", "positive"),
                              (STAGE1, f"file://{rel(row)}", "negative")]:
        body = {"model": model, "task": "msa", "temperature": 0.7, "messages": [
            {"role": "system", "content": "ignored"},
            {"role": "user", "content": [{"type": "video_url", "video_url": {"url": url}},
                                         {"type": "text", "text": row.transcript}]}]}
        r = requests.post(f"{server}/v1/chat/completions", json=body, timeout=60)
        assert r.status_code == 200, r.text
        out = r.json()
        assert out["object"] == "chat.completion" and out["model"] == model
        assert out["choices"][0]["message"]["content"] == label.capitalize() + "."
        assert out["emoverse"]["answer"] == {"label": label}
    # without `task`, the text is the prompt verbatim (here the training prompt)
    body["messages"][1]["content"][1]["text"] = row.prompt
    del body["task"]
    out = requests.post(f"{server}/v1/chat/completions", json=body, timeout=60).json()
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
    import requests

    kwargs, status, field, words = BAD_ANALYZE[name]
    r = requests.post(f"{server}/v1/analyze", timeout=60, **kwargs)
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert error["field"] == field and words in error["message"], error


@pytest.mark.integration
@pytest.mark.parametrize("change, status, words", [
    ({"stream": True}, 400, "streaming is not supported"),
    ({"messages": []}, 422, "messages"),
    ({"max_tokens": 10_000}, 422, "over the 256-token cap"),
    ({"video": "https://example.com/a.mp4"}, 400, "remote video URLs are not fetched"),
    ({"video": "data:video/mp4;base64,@@@"}, 422, "malformed base64"),
    ({"video": "../../etc/passwd"}, 403, "outside the media root"),
])
def test_bad_chat_input_is_a_4xx(server, change, status, words):
    import requests

    video = change.pop("video", "clips/none.mp4")
    body = {"model": STAGE2, "task": "fer", "messages": [{"role": "user", "content": [
        {"type": "video_url", "video_url": {"url": video}}]}], **change}
    r = requests.post(f"{server}/v1/chat/completions", json=body, timeout=60)
    assert r.status_code == status and words in r.json()["error"]["message"], r.text


@pytest.mark.integration
def test_overload_answers_503_and_the_server_keeps_serving(server, manifest):
    import requests

    # 32 at once overrun the model deployment's 4 ongoing + 2 queued requests
    with ThreadPoolExecutor(32) as pool:
        codes = list(pool.map(lambda _: analyze(server, manifest, task="mer").status_code,
                              range(32)))
    assert set(codes) <= {200, 503} and codes.count(503) > 0 and codes.count(200) >= 4
    r = requests.post(f"{server}/v1/analyze", timeout=60, json={"task": "eri"})
    assert r.status_code == 422
    assert analyze(server, manifest).json()["answer"] == {"label": "positive"}
    assert requests.get(f"{server}/healthz", timeout=30).status_code == 200
