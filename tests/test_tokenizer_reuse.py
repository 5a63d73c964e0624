"""Loading the same open_clip model twice in one process builds its tokenizer once (the BPE parse is ~0.2 s)."""

from __future__ import annotations

import json
import os

from vlmcls.encode.models import load_model


def test_a_second_load_reuses_the_tokenizer_and_an_edited_config_builds_a_new_one(tiny_open_clip, tmp_path):
    first = load_model(f"local-dir:{tiny_open_clip}", device="cpu")
    again = load_model(f"local-dir:{tiny_open_clip}", device="cpu")
    assert again.tokenizer is first.tokenizer and again.model is not first.model
    assert again.encode_texts(["a cat"]).shape == first.encode_texts(["a cat"]).shape

    copy = tmp_path / "copy"
    copy.mkdir()
    for name in os.listdir(tiny_open_clip):
        (copy / name).write_bytes((tiny_open_clip / name).read_bytes())
    before = load_model(f"local-dir:{copy}", device="cpu").tokenizer
    config = json.loads((copy / "open_clip_config.json").read_text())
    config["model_cfg"]["text_cfg"]["context_length"] = 16  # the tokenizer pads to this: it must follow the edit
    (copy / "open_clip_config.json").write_text(json.dumps(config))
    edited = load_model(f"local-dir:{copy}", device="cpu")
    assert edited.tokenizer is not before and edited.tokenizer(["a cat"]).shape[-1] == 16
