"""Audio as a modality: decoding and cutting the track, the demo set's voice, recipes that
hear, Qwen2.5-Omni's thinker taking the audio, and (integration) a model that learns from
what it hears: voice-decided held-out samples well above chance with audio, at chance
without. No Ray."""

from __future__ import annotations

import base64

import numpy as np
import pytest
import torch

from emoverse.emt.demo import FILLERS, VOICE_SOURCE, build_demo, plan
from emoverse.emt.demo_clips import write_mp4
from emoverse.emt.demo_voice import RATE, VOICE_LABELS, render_voice
from emoverse.media.audio import decode_audio
from emoverse.media.clips import MediaError, process_clip
from emoverse.media.faces import detector_for
from emoverse.model.checkpoint import load_model, load_processor
from emoverse.model.inputs import Collator
from emoverse.recipe import AudioConfig, MediaConfig, load_recipe

FRAMES = np.random.default_rng(0).integers(0, 255, (8, 64, 64, 3), dtype=np.uint8)


def tone(freq: float, seconds: float, rate: int) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    return (0.3 * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def peak_hz(samples: np.ndarray, rate: int) -> float:
    spectrum = np.abs(np.fft.rfft(samples.astype(np.float32)))
    return float(np.fft.rfftfreq(len(samples), 1 / rate)[np.argmax(spectrum)])


def centroid_hz(samples: np.ndarray, rate: int, top: float = 1000.0) -> float:
    """The power-weighted mean frequency below `top`: where a voice's pitch lies."""
    power = np.abs(np.fft.rfft(samples.astype(np.float32))) ** 2
    freqs = np.fft.rfftfreq(len(samples), 1 / rate)
    band = (freqs > 50) & (freqs < top)
    return float((freqs[band] * power[band]).sum() / power[band].sum())


@pytest.fixture(scope="module")
def omni(tmp_path_factory):
    from emoverse.model.tiny import write_tiny_model
    from emoverse.model.vocabulary import instruction_corpus

    return write_tiny_model(tmp_path_factory.mktemp("omni"), instruction_corpus(),
                            arch="qwen2.5-omni")


def test_the_track_is_resampled_mixed_and_cut_to_the_span(tmp_path):
    path = str(tmp_path / "c.mp4")
    write_mp4(FRAMES, path, fps=4, audio=tone(440, 2.0, 22050), audio_rate=22050)  # 2 s
    cfg = AudioConfig(sample_rate=16000, max_seconds=5)
    whole = decode_audio(path, cfg)
    assert whole.dtype == np.int16 and abs(len(whole) - 32000) < 2048  # AAC pads a frame
    assert abs(peak_hz(whole, 16000) - 440) < 5
    span = decode_audio(path, cfg, 0.5, 1.5)
    assert abs(len(span) - 16000) <= 2
    # a span longer than max_seconds keeps its middle
    middle = decode_audio(path, AudioConfig(max_seconds=0.5), 0.5, 1.5)
    assert len(middle) == 8000
    np.testing.assert_array_equal(middle, span[4000:12000])


def test_a_clip_without_audio_is_refused_or_silent_as_the_recipe_says(tmp_path):
    path = str(tmp_path / "mute.mp4")
    write_mp4(FRAMES, path, fps=4)  # 2 s of frames, no audio track
    with pytest.raises(MediaError, match="no audio track"):
        decode_audio(path, AudioConfig())
    strict = MediaConfig(num_frames=4, size=28, detector="none", audio=AudioConfig())
    with pytest.raises(MediaError, match="audio: the file has no audio track.*silence"):
        process_clip(path, strict, detector_for(strict))
    lenient = strict.model_copy(update={"audio": AudioConfig(missing="silence")})
    clip = process_clip(path, lenient, detector_for(lenient), 0.5, 1.5)
    assert clip.audio_error == "the file has no audio track"
    assert len(clip.audio) == 16000 and not clip.audio.any()
    assert clip.frames.shape == (4, 28, 28, 3)  # the frames are as without audio


def test_frames_only_settings_keep_their_cache_key_and_recipe_digest():
    media = MediaConfig()
    assert media.settings_json() == media.model_dump_json(exclude={"audio"})
    heard = MediaConfig(audio=AudioConfig())
    assert heard.key() != media.key() and "sample_rate" in heard.settings_json()
    # the digests these recipes had before audio existed: their runs still resume
    assert load_recipe("m2se-tiny").digest() == "0683762036eb8eb0"
    assert load_recipe("m2se-paper").digest() == "098c44ac92f3ae09"


def test_recipes_that_hear_are_checked():
    with pytest.raises(ValueError, match="stage 'stage1-multitask-pretraining' sets audio: "
                                         "true, but media.audio is not set"):
        load_recipe("m2se-tiny", ["stages.0.audio=true"])
    with pytest.raises(ValueError, match="no tiny architecture 'gpt-2'"):
        load_recipe("m2se-tiny", ["base_model=tiny:gpt-2"])
    recipe = load_recipe("m2se-tiny-audio")
    assert recipe.hears() and recipe.media.audio and recipe.data.demo_voice > 0
    assert recipe.base_model == "tiny:qwen2.5-omni"


def test_the_demo_set_gains_voice_samples_and_keeps_the_others():
    plain, voiced = plan(400, 3), plan(400, 3, voice=0.5)
    assert [s.row for s in plan(400, 3, voice=0.0)] == [s.row for s in plain]
    by_id = {s.row["sample_id"]: s for s in plain}
    heard = [s for s in voiced if s.row["source"] == VOICE_SOURCE]
    assert {s.row["task"] for s in heard} == {"msa", "mer"}
    assert 0.35 < len(heard) / sum(s.row["task"] in ("msa", "mer") for s in voiced) < 0.65
    for s in heard:
        assert s.row["transcript"] in FILLERS  # the words say nothing
        assert s.row["label_class"] == VOICE_LABELS[s.row["task"]][s.voice]
    assert {s.voice for s in heard} == {"bright", "dull"}
    assert {s.expression for s in heard} == {"neutral"}  # the face says nothing either
    for s in voiced:  # every other sample is the one the set without voice has
        if s.row["source"] != VOICE_SOURCE:
            assert s.row == by_id[s.row["sample_id"]].row and s.voice == "plain"


def test_demo_clips_speak_in_the_voice_of_their_label(tmp_path):
    rng = np.random.default_rng(0)
    pitch = {kind: [centroid_hz(render_voice(kind, rng, 1.0), RATE) for _ in range(20)]
             for kind in ("dull", "plain", "bright")}
    assert max(pitch["dull"]) < min(pitch["plain"]) and max(pitch["plain"]) < min(pitch["bright"])
    manifest = build_demo(tmp_path, size=60, seed=2, workers=1, voice=1.0)
    import pandas as pd

    rows = pd.read_parquet(manifest)
    rows = rows[rows.source == VOICE_SOURCE]
    heard = [decode_audio(p, AudioConfig()) for p in rows.media_path]
    assert all(abs(len(a) - RATE) < 2048 for a in heard)  # each clip's second of speech
    high = np.array([centroid_hz(a, RATE) for a in heard])
    bright = rows.label_class.isin(["positive", "joy"]).to_numpy()
    assert 0 < bright.sum() < len(rows)
    assert high[bright].min() > high[~bright].max()  # the voice alone tells them apart


def test_the_thinker_takes_the_audio(omni):
    processor = load_processor(omni)
    audio_id = processor.tokenizer.convert_tokens_to_ids("<|AUDIO|>")
    rng = np.random.default_rng(0)
    row = {"prompt": ["[MSA] okay", "[MSA] hmm"], "target": ["Positive.", "Negative."],
           "frames": [rng.integers(0, 255, (4, 56, 56, 3), dtype=np.uint8)] * 2,
           "audio": [np.zeros(16000, np.int16)] * 2, "audio_samples": [16000, 8000]}
    heard = Collator(processor, 512, hears=True)(row)
    assert (heard["input_ids"] == audio_id).sum(1).tolist() == [25, 12]  # 25 a second
    assert heard["input_features"].shape[-1] == 100  # padded to the longest, not 30 s
    deaf = Collator(processor, 512)(row)
    assert (deaf["input_ids"] == audio_id).sum() == 0 and "input_features" not in deaf
    # what it hears changes what it says
    model = load_model(omni).eval()
    loud = {**row, "audio": [(10000 * np.sin(np.arange(16000) / 3)).astype(np.int16)] * 2}
    with torch.no_grad():
        a = model(**heard).logits
        b = model(**Collator(processor, 512, hears=True)(loud)).logits
    assert not torch.allclose(a, b, atol=1e-4)


def test_a_model_that_cannot_hear_is_refused_by_name(tiny_model):
    with pytest.raises(ValueError, match="Qwen2VLProcessor.*takes no audio.*tiny:qwen2.5-omni"):
        Collator(load_processor(tiny_model), hears=True)


def test_sources_are_scored_apart():
    import pandas as pd

    from emoverse.evaluation.scoring import baselines_by_source, by_source, table

    manifest = pd.DataFrame({
        "sample_id": list("abcdefgh"), "task": ["msa"] * 8,
        "source": ["demo"] * 4 + [VOICE_SOURCE] * 4,
        "split": ["train"] * 2 + ["test"] * 2 + ["train"] * 2 + ["test"] * 2,
        "label_class": ["positive", "positive", "positive", "negative"] * 2})
    preds = pd.DataFrame({"sample_id": list("cdgh"), "task": ["msa"] * 4,
                          "prediction": ["Positive.", "Negative.", "Negative.", "Negative."]})
    per = by_source(manifest, preds)["msa"]
    assert per["demo"]["accuracy"] == 1.0 and per[VOICE_SOURCE]["accuracy"] == 0.5
    base = baselines_by_source(manifest, {"msa": list("cdgh")})["msa"]
    assert base["demo"]["accuracy"] == 0.5
    text = table({"model": {"msa": {"primary": "accuracy", "accuracy": 0.75}}},
                 {"model": {"msa": per}})
    assert f"MSA {VOICE_SOURCE}" in text and "0.500" in text


@pytest.mark.integration
def test_the_model_uses_what_it_hears(omni, tmp_path):
    """One stage on MSA and MER of a demo set whose voice decides half of them, trained
    with the audio and without (the same data, steps and seed): on held-out voice-decided
    samples the first is well above the majority baseline, the second at chance."""
    import pandas as pd

    from emoverse.evaluation.scoring import baselines_by_source, by_source
    from emoverse.model.generation import AnswerGenerator, answer_rows
    from emoverse.recipe import StageConfig
    from emoverse.train.stage import LocalSession, StageJob, train

    manifest = pd.read_parquet(build_demo(tmp_path / "data", size=1600, seed=0, workers=2,
                                          voice=0.5))
    rows = manifest[manifest.task.isin(["msa", "mer"])].reset_index(drop=True)
    media = MediaConfig(num_frames=4, size=56, detector="none",
                        audio=AudioConfig(max_seconds=1.0))
    clips = [process_clip(p, media, detector_for(media)) for p in rows.media_path]
    rows["frames"] = [c.frames for c in clips]
    rows["audio"] = [c.audio for c in clips]
    rows["audio_samples"] = [len(c.audio) for c in clips]
    test = rows[rows.split == "test"]
    results = {}
    for hears in (True, False):
        stage = StageConfig(name="s", mixture=[{"task": "msa", "weight": 1.0},
                                               {"task": "mer", "weight": 1.0}],
                            epochs=2, batch_size=16, lr=2e-3, weight_decay=0.01,
                            warmup_steps=50, min_lr_ratio=0.05, max_length=512,
                            trainable={"mode": "full", "vision": True}, audio=hears)
        columns = ["prompt", "target", "frames", *(["audio", "audio_samples"] if hears else [])]
        train_rows = rows[rows.split == "train"][columns].to_dict("records")
        session = LocalSession(train_rows, tmp_path / f"store-{hears}", seed=0)
        train(StageJob(stage=stage, init_from=str(omni), total_steps=len(train_rows) // 16 * 2,
                       torch_threads=2, frame_size=56), session)
        generator = AnswerGenerator(str(session.latest_checkpoint()), 4, 2)
        assert generator.hears == hears  # the checkpoint says whether to feed it audio
        results[hears] = by_source(manifest, answer_rows(generator, test, 64))
    chance = baselines_by_source(manifest, test.groupby("task").sample_id.apply(list).to_dict())
    for task in ("msa", "mer"):
        base = chance[task][VOICE_SOURCE]["accuracy"]
        with_audio = results[True][task][VOICE_SOURCE]["accuracy"]
        without = results[False][task][VOICE_SOURCE]["accuracy"]
        assert with_audio >= 0.9 and with_audio > base + 0.3, (task, with_audio, base)
        assert without < base + 0.2, (task, without, base)  # two labels, about even


# ---------------------------------------------------------------- serving


def wav_bytes(samples: np.ndarray, rate: int = RATE) -> bytes:
    import io
    import wave

    out = io.BytesIO()
    with wave.open(out, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes((np.clip(samples, -1, 1) * 32767).astype(np.int16).tobytes())
    return out.getvalue()


@pytest.fixture(scope="module")
def hearing_run(tmp_path_factory, omni):
    """A served run whose one stage heard: trained until a bright voice says "Positive."
    and a dull one "Negative." over the same frames and words; and its two clips."""
    from emoverse.model.checkpoint import apply_trainable, save_checkpoint
    from emoverse.recipe import dump_recipe
    from emoverse.train.engine import TorchEngine
    from emoverse.train.loop import train_epochs

    root = tmp_path_factory.mktemp("heard")
    recipe = load_recipe("m2se-tiny-audio")
    dump_recipe(recipe, root / "run" / "recipe.yaml")
    stage = recipe.stages[0]
    frames = np.random.default_rng(1).integers(0, 255, (8, 112, 112, 3), dtype=np.uint8)
    voices = {kind: render_voice(kind, np.random.default_rng(2), 1.0) for kind in ("bright", "dull")}
    clips = {}
    for kind, voice in voices.items():
        clips[kind] = root / "media" / f"{kind}.mp4"
        clips[kind].parent.mkdir(exist_ok=True)
        write_mp4(frames, str(clips[kind]), audio=voice, audio_rate=RATE)
    detector = detector_for(recipe.media)
    heard = {k: process_clip(str(p), recipe.media, detector) for k, p in clips.items()}
    rows = {"prompt": ["[MSA] The person says: okay"] * 2,
            "target": ["Positive.", "Negative."],
            "frames": [heard["bright"].frames, heard["dull"].frames],
            "audio": [heard["bright"].audio, heard["dull"].audio],
            "audio_samples": [len(heard["bright"].audio), len(heard["dull"].audio)]}
    processor = load_processor(omni)
    from emoverse.model.inputs import fit_processor

    fit_processor(processor, recipe.media.size)
    model = apply_trainable(load_model(omni), stage.trainable, hears=True)
    batch = Collator(processor, 512, hears=True)(rows)
    torch.manual_seed(0)
    steps = 60
    short = stage.model_copy(update={"epochs": steps, "warmup_steps": 0})
    train_epochs(TorchEngine(model, short, steps), lambda epoch: iter([batch]), short, steps)
    save_checkpoint(model, processor, root / "run" / "checkpoints" / stage.name,
                    {"parent": str(omni), "stage": stage.name, "audio": True})
    return root, stage.name, voices


def test_a_served_model_that_hears_gets_the_clips_and_the_chats_audio(hearing_run):
    from fastapi.testclient import TestClient

    from emoverse.serving.api import create_app
    from emoverse.serving.config import ServeArgs
    from emoverse.serving.model_pool import ModelPool
    from emoverse.serving.requests import Service
    from test_serving import PoolBackend  # tests/ is on the path (no package)

    root, stage, voices = hearing_run
    args = ServeArgs(model=str(root / "run"), media_root=str(root / "media"))
    service = Service.create(args, None)
    service.backend = PoolBackend(ModelPool(service.catalog))
    assert service.catalog.entry(stage).hears
    client = TestClient(create_app(service))

    def analyze(clip: str) -> dict:
        return client.post("/v1/analyze", json={"task": "msa", "transcript": "okay",
                                                "video_path": clip}).json()

    # the clip's own track reaches the model: the same frames and words, two answers
    assert analyze("bright.mp4")["answer"] == {"label": "positive"}
    assert analyze("dull.mp4")["answer"] == {"label": "negative"}

    def chat(voice: str | None, clip: str = "bright.mp4") -> dict:
        parts = [{"type": "video_url", "video_url": {"url": clip}},
                 {"type": "text", "text": "okay"}]
        if voice:
            data = base64.b64encode(wav_bytes(voices[voice])).decode()
            parts.append({"type": "input_audio", "input_audio": {"data": data, "format": "wav"}})
        return client.post("/v1/chat/completions", json={
            "messages": [{"role": "user", "content": parts}], "task": "msa"})

    assert chat(None).json()["emoverse"]["answer"] == {"label": "positive"}
    # an input_audio part is heard instead of the clip's track
    assert chat("dull").json()["emoverse"]["answer"] == {"label": "negative"}
    bad = client.post("/v1/chat/completions", json={"task": "msa", "messages": [{
        "role": "user", "content": [{"type": "video_url", "video_url": {"url": "bright.mp4"}},
                                    {"type": "text", "text": "okay"},
                                    {"type": "input_audio",
                                     "input_audio": {"data": "bm90IGF1ZGlv", "format": "wav"}}]}]})
    assert bad.status_code == 422, bad.json()
    assert bad.json()["error"]["field"] == "messages.0.content.2.input_audio", bad.json()
    assert "cannot use the audio" in bad.json()["error"]["message"]
    # a model trained without audio refuses audio by name
    service.catalog.entries[stage] = service.catalog.entry(stage).model_copy(
        update={"hears": False})
    deaf = chat("dull")
    assert deaf.status_code == 422 and "was not trained to hear" in deaf.json()["error"]["message"]


def test_a_hearing_model_is_not_served_without_audio_settings(hearing_run):
    from emoverse.serving.catalog import build_catalog
    from emoverse.serving.config import ServeArgs

    root, _, _ = hearing_run
    with pytest.raises(ValueError, match="trained to hear .* no media.audio"):
        build_catalog(ServeArgs(model=str(root / "run"), media=MediaConfig(size=56)))
