"""What `pip install -e .` brings: the base install classifies; Ray, onnxruntime and the test stack are extras."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

PYPROJECT = Path(__file__).resolve().parents[1] / "pyproject.toml"


def _names(requirements: list[str]) -> set[str]:
    return {re.split(r"[\[<>=!~ ;]", req, maxsplit=1)[0].lower() for req in requirements}


def test_the_base_install_has_no_ray_no_onnxruntime_and_no_test_stack():
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    project = tomllib.loads(PYPROJECT.read_text(encoding="utf-8"))["project"]
    base = _names(project["dependencies"])
    assert {"torch", "torchvision", "open_clip_torch"} <= base
    assert not base & {"ray", "onnxruntime", "onnx", "pytest"}
    extras = {name: _names(reqs) for name, reqs in project["optional-dependencies"].items()}
    assert "ray" in extras["ray"] and "onnxruntime" in extras["int8"]
    assert extras["ray"] | extras["int8"] | {"pytest"} <= extras["dev"]  # the tests run every engine and precision
