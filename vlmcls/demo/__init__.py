"""The offline demo world: procedural images, invented classes, and a small CLIP trained on them.

Nothing here downloads anything. `world` is pure Python (the fake LLM server imports it); `render` draws the
images; `train` rebuilds the shipped model in `vlmcls/data/demo_model` deterministically.
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["DEMO_DATA_DIR", "DEMO_MODEL_DIR", "DEMO_MODEL_ID", "DEMO_CLASSES_FILE", "DEMO_DESCRIPTORS_FILE"]

_DATA_DIR = Path(__file__).resolve().parent.parent / "data"
DEMO_DATA_DIR = _DATA_DIR / "demo"  # classes.txt and descriptors.json
DEMO_MODEL_DIR = _DATA_DIR / "demo_model"  # open_clip_config.json + open_clip_model.safetensors
DEMO_MODEL_ID = f"local-dir:{DEMO_MODEL_DIR}"  # what open_clip (and vlmcls) accept as the model id
DEMO_CLASSES_FILE = DEMO_DATA_DIR / "classes.txt"
DEMO_DESCRIPTORS_FILE = DEMO_DATA_DIR / "descriptors.json"
