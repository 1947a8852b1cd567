"""Shared fixtures: a tiny model and a small demo set, built once per session."""

from pathlib import Path

import pytest

from emoverse.model.architectures import ARCH_NAMES, DEFAULT_ARCH

SHARED = Path(__file__).resolve().parents[2] / "shared"
YUNET = SHARED / "models" / "face_detection_yunet_2026may.onnx"
FORMATS = SHARED / "formats"


@pytest.fixture(scope="session")
def yunet() -> Path:
    """YuNet weights (shared with the project, never committed); tests skip without them."""
    if not YUNET.is_file():
        pytest.skip(f"YuNet weights not found at {YUNET}")
    return YUNET


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    from emoverse.model.tiny import write_tiny_model
    from emoverse.model.vocabulary import instruction_corpus

    return write_tiny_model(tmp_path_factory.mktemp("tiny"), instruction_corpus())


@pytest.fixture(scope="session", params=ARCH_NAMES)
def arch_model(request, tmp_path_factory) -> tuple[str, Path]:
    """(architecture name, tiny model directory), once per architecture; the default
    architecture's is `tiny_model` above."""
    from emoverse.model.tiny import write_tiny_model
    from emoverse.model.vocabulary import instruction_corpus

    if request.param == DEFAULT_ARCH:
        return request.param, request.getfixturevalue("tiny_model")
    out = tmp_path_factory.mktemp(f"tiny-{request.param}")
    return request.param, write_tiny_model(out, instruction_corpus(), arch=request.param)


@pytest.fixture(scope="session")
def demo_set(tmp_path_factory) -> Path:
    from emoverse.emt.demo import build_demo

    return build_demo(tmp_path_factory.mktemp("demo"), size=60, seed=1, workers=2)
