"""The layers stay apart: Ray is imported only by the Ray layer (and Serve's deployments),
and imports only go down: CLI and benchmarks -> drivers -> Ray layer -> Ray-free packages."""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "emoverse"
RAY_FREE = ["tasks", "emt", "media", "model", "train", "evaluation", "serving", "recipe.py",
            "sweep_space.py", "submission.py", "rundir.py", "config_file.py", "atomic_dir.py",
            "console.py", "figures.py"]
# Serve's deployments; the Serve config's schema is Ray's own pydantic model (no runtime).
RAY_ALLOWED = {"serving/app.py": "ray", "serving/config.py": "ray.serve.schema"}
ABOVE = {"ray-free": ("emoverse.distributed", "emoverse.drivers", "emoverse.cli",
                      "emoverse.benchmarks"),
         "distributed": ("emoverse.drivers", "emoverse.cli", "emoverse.benchmarks"),
         "drivers": ("emoverse.cli", "emoverse.benchmarks")}


def modules(where: str) -> list[Path]:
    path = PACKAGE / where
    return sorted(path.rglob("*.py")) if path.is_dir() else [path]


def imports(path: Path) -> set[str]:
    """Every module `path` imports, at the top or inside a function."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            names.add(node.module)
    return names


def under(name: str, package: str) -> bool:
    return name == package or name.startswith(package + ".")


@pytest.mark.parametrize("path", [p for w in RAY_FREE for p in modules(w)],
                         ids=lambda p: str(p.relative_to(PACKAGE)))
def test_ray_free_modules_import_neither_ray_nor_the_layers_above(path):
    relative = str(path.relative_to(PACKAGE))
    allowed = RAY_ALLOWED.get(relative)
    for name in imports(path):
        if under(name, "ray"):
            assert allowed and under(name, allowed), f"{relative} imports {name}"
        if relative != "serving/app.py":
            assert not any(under(name, above) for above in ABOVE["ray-free"]), \
                f"{relative} imports {name}"


@pytest.mark.parametrize("layer", ["distributed", "drivers"])
def test_lower_layers_never_import_the_layers_above(layer):
    for path in modules(layer):
        for name in imports(path):
            assert not any(under(name, above) for above in ABOVE[layer]), \
                f"{path.relative_to(PACKAGE)} imports {name}"
