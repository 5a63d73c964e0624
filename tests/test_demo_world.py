"""The demo world: deterministic images, the invented classes, and a shipped small CLIP that really learned them."""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from vlmcls.demo import DEMO_CLASSES_FILE, DEMO_DESCRIPTORS_FILE, DEMO_MODEL_DIR, DEMO_MODEL_ID
from vlmcls.demo.render import image_rng, render_dataset, render_image
from vlmcls.demo.train import filler_names, make_caption
from vlmcls.demo.world import (
    ATTRIBUTES,
    DEMO_CLASSES,
    ONE_ATTRIBUTE_PAIRS,
    differential_descriptions,
    generic_descriptors,
)

os.environ.setdefault("HF_HUB_OFFLINE", "1")

HELD_OUT_SEED = 7  # training renders with seed 1_000_000 + its seed; this stream is never seen in training
RED_TRIANGLE = {"shape": "triangle", "colour": "red", "pattern": "striped", "size": "small"}


# ---- the generator ----------------------------------------------------------------------------------------------

def test_same_seed_renders_identical_pixels_and_other_seeds_differ():
    first = np.asarray(render_image(RED_TRIANGLE, np.random.default_rng(3)))
    again = np.asarray(render_image(RED_TRIANGLE, np.random.default_rng(3)))
    other = np.asarray(render_image(RED_TRIANGLE, np.random.default_rng(4)))
    assert first.shape == (64, 64, 3) and first.dtype == np.uint8
    assert np.array_equal(first, again)
    assert not np.array_equal(first, other)


def test_render_dataset_writes_class_folders_reproducibly(tmp_path):
    written = render_dataset(tmp_path / "a", ["zorblax", "quintor"], n_per_class=3, seed=11)
    render_dataset(tmp_path / "b", ["quintor"], n_per_class=3, seed=11)  # other subset, other order
    assert sorted(p.relative_to(tmp_path / "a").as_posix() for p in written) == [
        "quintor/0.png", "quintor/1.png", "quintor/2.png", "zorblax/0.png", "zorblax/1.png", "zorblax/2.png",
    ]
    assert (tmp_path / "a/quintor/2.png").read_bytes() == (tmp_path / "b/quintor/2.png").read_bytes()
    assert (tmp_path / "a/quintor/1.png").read_bytes() != (tmp_path / "a/quintor/2.png").read_bytes()


def test_attributes_are_visible_in_pixels():
    red_large = np.asarray(render_image({**RED_TRIANGLE, "size": "large"}, image_rng(1, "x", 0))).astype(float)
    red_small = np.asarray(render_image(RED_TRIANGLE, image_rng(1, "x", 0))).astype(float)
    # a red object makes some pixels strongly red; a large one makes many more of them
    reddish = lambda img: ((img[..., 0] - img[..., 1:].max(-1)) > 60).sum()  # noqa: E731
    assert reddish(red_small) > 40
    assert reddish(red_large) > 2.5 * reddish(red_small)


def test_unknown_class_or_attribute_value_raises_keyerror_naming_it():
    with pytest.raises(KeyError, match="'nosuch'"):
        generic_descriptors("nosuch")
    with pytest.raises(KeyError, match="nosuch"):
        differential_descriptions("zorblax", "nosuch")
    with pytest.raises(KeyError, match="'hexagon'"):
        render_image({**RED_TRIANGLE, "shape": "hexagon"}, np.random.default_rng(0))


# ---- the class set and what the LLM would say -------------------------------------------------------------------

def test_world_module_needs_neither_torch_nor_pil():
    # loaded by file path: the fake LLM server needs world.py to stay light whatever the package imports
    world_path = Path(generic_descriptors.__code__.co_filename)
    code = (
        "import importlib.util, sys\n"
        f"spec = importlib.util.spec_from_file_location('world_alone', {str(world_path)!r})\n"
        "module = importlib.util.module_from_spec(spec); spec.loader.exec_module(module)\n"
        "assert module.generic_descriptors('zorblax')\n"
        "assert not {'torch', 'PIL', 'numpy'} & set(sys.modules), sorted(sys.modules)\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_every_class_is_a_distinct_full_attribute_combination_with_one_attribute_pairs():
    combos = [tuple(attrs[t] for t in ATTRIBUTES) for attrs in DEMO_CLASSES.values()]
    assert len(set(combos)) == len(DEMO_CLASSES) >= 10
    assert all(attrs[t] in ATTRIBUTES[t] for attrs in DEMO_CLASSES.values() for t in ATTRIBUTES)
    assert len(ONE_ATTRIBUTE_PAIRS) >= 4
    assert len({attr_type for _, _, attr_type in ONE_ATTRIBUTE_PAIRS}) >= 3  # pattern, colour, size, shape...


def test_generic_descriptors_leave_one_attribute_pairs_indistinguishable_and_differentials_resolve_them():
    for a, b, attr_type in ONE_ATTRIBUTE_PAIRS:
        assert generic_descriptors(a) == generic_descriptors(b)
        [(differing, text_a, text_b)] = differential_descriptions(a, b)
        assert differing == attr_type
        assert text_a.startswith(f"a photo of a {a}, which has ")
        assert DEMO_CLASSES[a][attr_type] in text_a and DEMO_CLASSES[b][attr_type] in text_b


def test_differential_descriptions_cover_every_differing_attribute():
    differing = {t for t in ATTRIBUTES if DEMO_CLASSES["zorblax"][t] != DEMO_CLASSES["trelloq"][t]}
    assert {t for t, _, _ in differential_descriptions("zorblax", "trelloq")} == differing
    assert differential_descriptions("zorblax", "zorblax") == []


def test_shipped_class_and_descriptor_files_match_the_world():
    assert DEMO_CLASSES_FILE.read_text().split() == list(DEMO_CLASSES)
    assert json.loads(DEMO_DESCRIPTORS_FILE.read_text()) == {name: generic_descriptors(name) for name in DEMO_CLASSES}


def test_training_captions_never_use_demo_class_names():
    names = filler_names(4000, seed=0)
    assert not set(names) & set(DEMO_CLASSES)
    rng = np.random.default_rng(0)
    captions = [make_caption(RED_TRIANGLE, names, rng)[0] for _ in range(2000)]
    assert not any(demo in caption for caption in captions for demo in DEMO_CLASSES)
    assert any(", which has a red colour" in c for c in captions)
    assert any(", which is a red colour" in c for c in captions)


# ---- the shipped model ------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def demo_model():
    torch = pytest.importorskip("torch")
    import open_clip

    torch.set_num_threads(min(2, torch.get_num_threads()))
    model, _, preprocess = open_clip.create_model_and_transforms(DEMO_MODEL_ID)
    tokenizer = open_clip.get_tokenizer(DEMO_MODEL_ID)
    model.eval()

    def encode_images(images):
        with torch.no_grad():
            return model.encode_image(torch.stack([preprocess(im) for im in images]), normalize=True)

    def encode_texts(texts):
        with torch.no_grad():
            return model.encode_text(tokenizer(texts), normalize=True)

    return encode_images, encode_texts


def test_shipped_weights_are_small_fp16_safetensors():
    from safetensors import safe_open

    weights = DEMO_MODEL_DIR / "open_clip_model.safetensors"
    assert weights.stat().st_size <= 15 * 1024 * 1024
    with safe_open(str(weights), framework="numpy") as f:
        dtypes = {f.get_slice(k).get_dtype() for k in f.keys()}
    assert "F16" in dtypes and not dtypes & {"F32", "F64", "BF16"}, dtypes


def test_model_names_shape_and_colour_of_held_out_images(demo_model):
    encode_images, encode_texts = demo_model
    rng = np.random.default_rng([HELD_OUT_SEED, 0])
    shape_colours = list(itertools.product(ATTRIBUTES["shape"], ATTRIBUTES["colour"]))
    truth, images = [], []
    for index in range(120):
        attrs = {t: str(rng.choice(values)) for t, values in ATTRIBUTES.items()}
        images.append(render_image(attrs, image_rng(HELD_OUT_SEED, "attributes", index)))
        truth.append(shape_colours.index((attrs["shape"], attrs["colour"])))
    text_feats = encode_texts([f"a photo of a {colour} {shape}" for shape, colour in shape_colours])  # [20, D]
    predicted = (encode_images(images) @ text_feats.T).argmax(1).numpy()  # [N]
    accuracy = float((predicted == np.asarray(truth)).mean())
    assert accuracy >= 0.80, f"shape x colour zero-shot accuracy {accuracy:.2f} (chance 0.05)"


@pytest.fixture(scope="module")
def demo_scores(demo_model):
    """Demo-class images scored by name only, by CbD descriptors, and by FuDD differential captions per pair."""
    encode_images, encode_texts = demo_model
    import torch

    names = list(DEMO_CLASSES)
    per_class = 10
    images = [render_image(DEMO_CLASSES[n], image_rng(HELD_OUT_SEED, n, i)) for n in names for i in range(per_class)]
    image_feats = encode_images(images)  # [C*per_class, D]
    labels = np.repeat(np.arange(len(names)), per_class)
    name_scores = image_feats @ encode_texts([f"a photo of a {n}." for n in names]).T  # [N, C]
    # CbD: "{name}, which is {d}" (the reference rule for descriptors starting with 'a'), mean of similarities
    descriptor_feats = [encode_texts([f"{n}, which is {d}" for d in generic_descriptors(n)]) for n in names]
    descriptor_scores = torch.stack([(image_feats @ feats.T).mean(1) for feats in descriptor_feats], dim=1)  # [N, C]
    pair_results = []
    for a, b, _ in ONE_ATTRIBUTE_PAIRS:
        rows = np.isin(labels, [names.index(a), names.index(b)])
        is_b = labels[rows] == names.index(b)
        cbd = descriptor_scores[rows][:, [names.index(a), names.index(b)]].argmax(1).numpy() == is_b
        captions = differential_descriptions(a, b)[0][1:]
        fudd = (image_feats[rows] @ encode_texts(list(captions)).T).argmax(1).numpy() == is_b
        pair_results.append((cbd.mean(), fudd.mean()))
    return {
        "name_only": float((name_scores.argmax(1).numpy() == labels).mean()),
        "descriptors": float((descriptor_scores.argmax(1).numpy() == labels).mean()),
        "pairs_descriptors": float(np.mean([cbd for cbd, _ in pair_results])),
        "pairs_differential": float(np.mean([fudd for _, fudd in pair_results])),
        "chance": 1 / len(names),
    }


def test_class_names_alone_are_near_chance_and_descriptors_far_above(demo_scores):
    assert demo_scores["name_only"] <= 0.25, demo_scores
    assert demo_scores["descriptors"] >= 0.45, demo_scores
    assert demo_scores["descriptors"] >= demo_scores["name_only"] + 0.3, demo_scores


def test_one_attribute_pairs_stay_confused_until_differential_captions(demo_scores):
    assert demo_scores["pairs_descriptors"] <= 0.7, demo_scores
    assert demo_scores["pairs_differential"] >= 0.85, demo_scores
    assert demo_scores["pairs_differential"] >= demo_scores["pairs_descriptors"] + 0.2, demo_scores
