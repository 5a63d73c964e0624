"""Train the small demo CLIP on rendered attribute images and varied attribute captions; deterministic by seed.

    python -m vlmcls.demo.train --out vlmcls/data/demo_model

The captions describe random subsets of an image's attributes in many phrasings, including the sentence forms
vlmcls's scorer sends ("a photo of a {name}.", "{name}, which has a red colour", FuDD's "a photo of a {name},
which has a striped surface pattern"), with invented filler names that are never demo class names. Because a
caption usually describes only some attributes, the loss treats every caption consistent with an image as a
positive for it (multi-positive contrastive loss), not only the caption drawn for that image.
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import json
import logging
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from vlmcls.demo.render import IMAGE_SIZE, image_rng, render_image
from vlmcls.llm.descriptors import cbd_sentence
from vlmcls.demo.world import ATTRIBUTE_PHRASES, ATTRIBUTES, DEMO_CLASSES

__all__ = [
    "TrainConfig", "model_config", "open_clip_config", "make_caption", "filler_names", "combination_key", "evaluate",
    "train", "main",
]

logger = logging.getLogger(__name__)

ATTRIBUTE_TYPES = list(ATTRIBUTES)  # fixed order: shape, colour, pattern, size
PIXEL_MEAN = (0.5, 0.5, 0.5)
PIXEL_STD = (0.25, 0.25, 0.25)


@dataclass
class TrainConfig:
    seed: int = 0  # everything random (init, images, captions, batches) derives from this
    steps: int = 1000  # optimiser steps: ~8 minutes on two idle CPU cores, ~15 on two busy ones
    batch_size: int = 96  # more small steps beat fewer big ones at this budget
    learning_rate: float = 2e-3
    warmup_steps: int = 100
    weight_decay: float = 0.05
    images_per_combination: int = 100  # pool size = 120 attribute combinations x this
    threads: int = 2
    initial_logit_scale: float = 30.0  # CLIP starts at 14.3; learnable, capped at 100
    shape_first_steps: int = 150  # curriculum: captions name only the shape for these first steps
    attribute_loss_weight: float = 1.0  # weight of the per-attribute caption contrast (0: plain CLIP loss only)
    eval_every: int = 0  # log held-out accuracies every this many steps (0: only at the end)


def model_config() -> dict:
    """The open_clip `model_cfg`: a tiny 64 px ResNet and a narrow text tower, so fp16 weights stay under 10 MB."""
    return {
        "embed_dim": 128,
        # a tiny ResNet rather than a ViT: twice as fast per step on a CPU than a patch-8 ViT of similar quality,
        # and its convolutions pick up the corners and edges that tell shapes apart
        "vision_cfg": {"image_size": IMAGE_SIZE, "layers": [1, 1, 1, 1], "width": 16, "head_width": 32},
        # the 49408-token embedding table dominates the file size, hence width 64
        "text_cfg": {"context_length": 32, "vocab_size": 49408, "width": 64, "heads": 4, "layers": 4},
    }


def open_clip_config() -> dict:
    """The whole `open_clip_config.json`: model config plus the preprocessing the model was trained with."""
    return {
        "model_cfg": model_config(),
        "preprocess_cfg": {
            "size": IMAGE_SIZE, "mean": list(PIXEL_MEAN), "std": list(PIXEL_STD),
            "interpolation": "bicubic", "resize_mode": "shortest",
        },
    }


# ---- captions ---------------------------------------------------------------------------------------------------

_SHAPE_NOUNS = {"circle": ["circle", "disc", "round shape"], "square": ["square", "square shape"],
                "triangle": ["triangle", "triangular shape"], "star": ["star", "star shape"]}
_GENERIC_NOUNS = ["object", "shape", "thing", "figure", "item"]
_ADJECTIVES = {
    "colour": {c: [c] for c in ATTRIBUTES["colour"]},
    "pattern": {"plain": ["plain", "unpatterned"], "striped": ["striped", "stripy"], "dotted": ["dotted", "spotted"]},
    "size": {"small": ["small", "little", "tiny"], "large": ["large", "big"]},
}
_WITH_PHRASES = {  # "a red triangle with stripes"
    "pattern": {"plain": ["no pattern", "a plain surface"], "striped": ["stripes", "a striped pattern"],
                "dotted": ["dots", "spots", "a dotted pattern"]},
    "colour": {c: [f"a {c} colour", f"a {c} color"] for c in ATTRIBUTES["colour"]},
    "size": {s: [f"a {s} size"] for s in ATTRIBUTES["size"]},
    "shape": {"circle": ["a round shape"], "square": ["a square shape"], "triangle": ["a triangular shape"],
              "star": ["a star shape"]},
}
_DESCRIPTOR_VARIANTS = {  # other wordings of world.ATTRIBUTE_PHRASES, the phrases generic_descriptors returns
    "shape": {"circle": ["a circular shape", "a round outline", "a circular outline"],
              "square": ["a square outline", "four equal sides"],
              "triangle": ["a triangular outline", "three corners"],
              "star": ["a star-shaped outline", "five pointed tips"]},
    "colour": {c: [f"a {c} color", f"{c} colour", f"a {c} body"] for c in ATTRIBUTES["colour"]},
    "pattern": {"plain": ["a plain surface", "no surface pattern", "a plain, unpatterned surface"],
                "striped": ["a striped surface", "stripes", "a pattern of stripes"],
                "dotted": ["a dotted surface", "dots", "a pattern of dots", "spots"]},
    "size": {"small": ["a little size", "a small body"], "large": ["a big size", "a large body"]},
}
_DESCRIPTORS = {  # CbD-style descriptor phrases, the exact LLM wording first
    attr_type: {value: [ATTRIBUTE_PHRASES[attr_type][value], *variants] for value, variants in by_value.items()}
    for attr_type, by_value in _DESCRIPTOR_VARIANTS.items()
}
_MENTION_WEIGHT = {"shape": 0.4, "colour": 0.15, "pattern": 0.25, "size": 0.2}
_PHOTO_PREFIXES = ["", "a ", "a photo of a ", "an image of a ", "a picture of a ", "a drawing of a ", "this is a ",
                   "a rendering of a ", "a close-up photo of a "]
_ATTRIBUTE_STEMS = ("red", "green", "blue", "yellow", "purple", "violet", "circ", "round", "squar", "triang", "star",
                    "strip", "dot", "spot", "plain", "small", "large", "big", "tiny", "little", "size", "colo")


def filler_names(count: int, seed: int) -> list[str]:
    """Invented pseudo-words standing in for class names; never a demo class name and never an attribute word."""
    rng = np.random.default_rng([seed, 7919])
    onsets = ["b", "d", "f", "g", "k", "l", "m", "n", "p", "qu", "r", "s", "t", "v", "z", "bl", "br", "dr", "fl",
              "gl", "kr", "pl", "sk", "sn", "st", "tr", "vr", "zh", "y", "j", "th", "gr", "x", "w", "h", "sh"]
    vowels = ["a", "e", "i", "o", "u", "ee", "oo", "ai", "ou", "y"]
    codas = ["", "", "", "x", "k", "n", "r", "l", "m", "s", "t", "q", "th", "nd", "rk", "lt", "p", "b", "z", "g"]
    banned = set(DEMO_CLASSES)
    names: list[str] = []
    seen: set[str] = set()
    while len(names) < count:
        syllables = int(rng.integers(1, 4))
        word = "".join(
            str(rng.choice(onsets)) + str(rng.choice(vowels)) + str(rng.choice(codas)) for _ in range(syllables)
        )
        if word in banned or word in seen or any(stem in word for stem in _ATTRIBUTE_STEMS):
            continue
        seen.add(word)
        names.append(word)
    return names


def _pick(rng: np.random.Generator, options: list[str]) -> str:
    return options[int(rng.integers(len(options)))]


def _describe_subset(rng: np.random.Generator) -> list[str]:
    """Which attribute types a caption mentions: single attributes most often, as single descriptors are."""
    count = int(rng.choice([1, 2, 3, 4], p=[0.4, 0.25, 0.15, 0.2]))
    # shape is the hardest attribute to see, colour the easiest: mention them accordingly often
    weights = np.array([_MENTION_WEIGHT[t] for t in ATTRIBUTE_TYPES])
    chosen = rng.choice(4, size=count, replace=False, p=weights / weights.sum())
    return [ATTRIBUTE_TYPES[i] for i in sorted(chosen)]


def _noun_phrase(attrs: dict[str, str], mentioned: list[str], rng: np.random.Generator) -> str:
    """'small red striped triangle' (any adjective order), or '... object' when the shape is not mentioned."""
    adjectives = [_pick(rng, _ADJECTIVES[t][attrs[t]]) for t in ("size", "colour", "pattern") if t in mentioned]
    if rng.random() < 0.3:
        adjectives = [adjectives[i] for i in rng.permutation(len(adjectives))]
    noun = _pick(rng, _SHAPE_NOUNS[attrs["shape"]]) if "shape" in mentioned else _pick(rng, _GENERIC_NOUNS)
    return " ".join([*adjectives, noun])


def _descriptor_list(attrs: dict[str, str], mentioned: list[str], rng: np.random.Generator) -> str:
    phrases = [_pick(rng, _DESCRIPTORS[t][attrs[t]]) for t in mentioned]
    phrases = [phrases[i] for i in rng.permutation(len(phrases))]
    if len(phrases) == 1:
        return phrases[0]
    return ", ".join(phrases[:-1]) + _pick(rng, [" and ", ", ", ", and "]) + phrases[-1]


def make_caption(
    attrs: dict[str, str], names: list[str], rng: np.random.Generator, mentioned: list[str] | None = None
) -> tuple[str, list[str]]:
    """One random caption for an image with `attrs`, and the attribute types it mentions (empty: name only).

    `mentioned` fixes which attribute types to describe; by default a random subset is drawn.
    """
    mentioned = _describe_subset(rng) if mentioned is None else mentioned
    name = _pick(rng, names)
    form = rng.random()
    end = _pick(rng, ["", "", "."])
    if form < 0.04:  # the scorer's bare template: says nothing about the image, so must not favour any
        template = _pick(rng, ["a photo of a {}.", "a photo of a {}", "{}", "an image of a {}.", "a {}."])
        return template.format(name), []
    if form < 0.30:  # plain attribute caption, optionally "with" a pattern/colour phrase
        phrase = _noun_phrase(attrs, mentioned, rng)
        if rng.random() < 0.25 and len(mentioned) >= 2:
            moved = mentioned[int(rng.integers(len(mentioned)))]
            kept = [t for t in mentioned if t != moved]
            if moved != "shape" or "shape" in kept:
                phrase = _noun_phrase(attrs, kept, rng) + " with " + _pick(rng, _WITH_PHRASES[moved][attrs[moved]])
        return _pick(rng, _PHOTO_PREFIXES) + phrase + end, mentioned
    descriptors = _descriptor_list(attrs, mentioned, rng)
    if form < 0.65:  # CbD: "{name}, which has/is {descriptor}"
        verb = _pick(rng, ["has", "is", "has", "is", "shows"])
        subject = name if rng.random() < 0.85 else _pick(rng, _GENERIC_NOUNS + ["a thing", "an object"])
        return f"{subject}, which {verb} {descriptors}{end}", mentioned
    if form < 0.85:  # FuDD differential caption
        verb = _pick(rng, ["has", "has", "is", "with"])
        joiner = " with " if verb == "with" else f", which {verb} "
        return f"{_pick(rng, _PHOTO_PREFIXES[2:])}{name}{joiner}{descriptors}{end}", mentioned
    if form < 0.93:  # descriptor alone, no name at all
        return descriptors + end, mentioned
    return f"a photo of a {name}, a {_noun_phrase(attrs, mentioned, rng)}{end}", mentioned  # name plus appearance


# ---- images -----------------------------------------------------------------------------------------------------

def _combinations() -> list[dict[str, str]]:
    return [dict(zip(ATTRIBUTE_TYPES, values)) for values in itertools.product(*ATTRIBUTES.values())]


def combination_key(attrs: dict[str, str]) -> str:
    """'circle-red-striped-large': the per-combination key that seeds each rendered image."""
    return "-".join(attrs[t] for t in ATTRIBUTE_TYPES)


def _attribute_codes(attrs: dict[str, str]) -> list[int]:
    return [ATTRIBUTES[t].index(attrs[t]) for t in ATTRIBUTE_TYPES]


def _render_pool(config: TrainConfig, cache_dir: Path) -> tuple[np.ndarray, np.ndarray]:
    """All training images as uint8 [N, H, W, 3] plus their attribute codes [N, 4]; cached under /tmp."""
    # keyed by the code that draws the images, so an edited renderer never trains on stale pixels
    sources = b"".join((Path(__file__).parent / name).read_bytes() for name in ("render.py", "world.py"))
    tag = hashlib.sha256(sources + f"{config.seed}-{config.images_per_combination}".encode()).hexdigest()[:16]
    cache_path = cache_dir / f"vlmcls-demo-pool-{tag}.npz"
    if cache_path.exists():
        cached = np.load(cache_path)
        return cached["images"], cached["codes"]
    images, codes = [], []
    for attrs in _combinations():
        for index in range(config.images_per_combination):
            rng = image_rng(config.seed + 1_000_000, combination_key(attrs), index)  # training-only seed space
            images.append(np.asarray(render_image(attrs, rng)))
            codes.append(_attribute_codes(attrs))
    pool = np.stack(images), np.asarray(codes, dtype=np.int64)
    cache_dir.mkdir(parents=True, exist_ok=True)
    np.savez(cache_path, images=pool[0], codes=pool[1])
    return pool


# ---- evaluation -------------------------------------------------------------------------------------------------

def _encode_images(model, images, torch):
    with torch.no_grad():
        return model.encode_image(_to_model_input(np.stack([np.asarray(im) for im in images]), torch), normalize=True)


def _encode_texts(model, tokenizer, texts, torch):
    with torch.no_grad():
        return model.encode_text(tokenizer(texts), normalize=True)


def evaluate(model, tokenizer, seed: int = 424242, per_class: int = 20) -> dict[str, float]:
    """Held-out accuracies: shape x colour zero-shot, each attribute alone, and the demo classes three ways."""
    import torch

    from vlmcls.demo.world import differential_descriptions, generic_descriptors, ONE_ATTRIBUTE_PAIRS

    model.eval()
    results: dict[str, float] = {}
    rng = np.random.default_rng([seed, 1])
    combos = _combinations()
    picked = [combos[i] for i in rng.integers(len(combos), size=per_class * 12)]
    images = [render_image(a, image_rng(seed, combination_key(a), i)) for i, a in enumerate(picked)]
    image_feats = _encode_images(model, images, torch)  # [N, D]
    pairs = list(itertools.product(ATTRIBUTES["shape"], ATTRIBUTES["colour"]))
    text_feats = _encode_texts(model, tokenizer, [f"a photo of a {c} {s}." for s, c in pairs], torch)
    predicted = (image_feats @ text_feats.T).argmax(1)
    truth = torch.tensor([pairs.index((a["shape"], a["colour"])) for a in picked])
    results["shape_x_colour"] = (predicted == truth).float().mean().item()
    for attr_type, values in ATTRIBUTES.items():
        prompts = [f"a photo of a {v}." if attr_type == "shape" else f"a photo of a {v} object." for v in values]
        predicted = (image_feats @ _encode_texts(model, tokenizer, prompts, torch).T).argmax(1)
        truth = torch.tensor([values.index(a[attr_type]) for a in picked])
        results[attr_type] = (predicted == truth).float().mean().item()

    names = list(DEMO_CLASSES)
    demo_images = [render_image(DEMO_CLASSES[n], image_rng(seed, n, i)) for n in names for i in range(per_class)]
    demo_feats = _encode_images(model, demo_images, torch)  # [C*per_class, D]
    labels = torch.arange(len(names)).repeat_interleave(per_class)
    name_feats = _encode_texts(model, tokenizer, [f"a photo of a {n}." for n in names], torch)  # [C, D]
    results["demo_name_only"] = ((demo_feats @ name_feats.T).argmax(1) == labels).float().mean().item()
    descriptor_feats = [
        _encode_texts(model, tokenizer, [cbd_sentence(n, d) for d in generic_descriptors(n)], torch) for n in names
    ]  # C x [M, D]
    descriptor_scores = torch.stack([(demo_feats @ feats.T).mean(1) for feats in descriptor_feats], dim=1)  # [N, C]
    results["demo_descriptors"] = (descriptor_scores.argmax(1) == labels).float().mean().item()
    cbd_pair, fudd_pair = [], []
    for a, b, _ in ONE_ATTRIBUTE_PAIRS:
        rows = (labels == names.index(a)) | (labels == names.index(b))
        pair_labels = (labels[rows] == names.index(b)).long()
        pair_scores = descriptor_scores[rows][:, [names.index(a), names.index(b)]]  # [n, 2]
        cbd_pair.append((pair_scores.argmax(1) == pair_labels).float().mean())
        _, text_a, text_b = differential_descriptions(a, b)[0]
        diff_feats = _encode_texts(model, tokenizer, [text_a, text_b], torch)  # [2, D]
        fudd_pair.append(((demo_feats[rows] @ diff_feats.T).argmax(1) == pair_labels).float().mean())
    results["pairs_descriptors"] = torch.stack(cbd_pair).mean().item()
    results["pairs_differential"] = torch.stack(fudd_pair).mean().item()
    model.train()
    return results


# ---- training ---------------------------------------------------------------------------------------------------

def _to_model_input(images_uint8, torch):
    """uint8 [B, H, W, 3] -> normalised float [B, 3, H, W], as open_clip's preprocess would produce."""
    pixels = torch.from_numpy(images_uint8).permute(0, 3, 1, 2).float() / 255.0
    mean = torch.tensor(PIXEL_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(PIXEL_STD).view(1, 3, 1, 1)
    return (pixels - mean) / std


def _multi_positive_loss(image_feats, text_feats, logit_scale, consistent, torch):
    """Contrastive loss where every caption consistent with an image (and vice versa) counts as a positive."""
    logits = logit_scale * image_feats @ text_feats.T  # [B, B]
    targets = consistent.float()  # [B images, B captions]
    image_to_text = -(targets / targets.sum(1, keepdim=True) * logits.log_softmax(1)).sum(1).mean()
    text_to_image = -(targets / targets.sum(0, keepdim=True) * logits.log_softmax(0)).sum(0).mean()
    return (image_to_text + text_to_image) / 2


def _attribute_captions(rng: np.random.Generator, names: list[str], attr_types: list[str]) -> list[str]:
    """One single-attribute caption per value of each type, freshly phrased: 'a photo of a star', 'x, which is red'."""
    captions = []
    for attr_type in attr_types:
        for value in ATTRIBUTES[attr_type]:
            attrs = {t: (value if t == attr_type else ATTRIBUTES[t][0]) for t in ATTRIBUTE_TYPES}
            while True:  # make_caption stays the one source of phrasings; redraw the rare name-only template
                caption, mentioned = make_caption(attrs, names, rng, mentioned=[attr_type])
                if mentioned:
                    break
            captions.append(caption)
    return captions


def _attribute_loss(image_feats, attribute_feats, logit_scale, codes, attr_types, torch):
    """Per attribute type, InfoNCE of each image against that type's value captions (e.g. the four shapes)."""
    losses, start = [], 0
    for attr_type in attr_types:
        column = ATTRIBUTE_TYPES.index(attr_type)
        count = len(ATTRIBUTES[attr_type])
        logits = logit_scale * image_feats @ attribute_feats[start : start + count].T  # [B, values]
        losses.append(torch.nn.functional.cross_entropy(logits, torch.from_numpy(codes[:, column])))
        start += count
    return torch.stack(losses).mean()


def train(config: TrainConfig, out_dir: Path, cache_dir: Path = Path("/tmp")):
    """Train from scratch and write `open_clip_config.json` + fp16 `open_clip_model.safetensors` to out_dir."""
    import open_clip
    import torch
    from safetensors.torch import save_file

    torch.set_num_threads(config.threads)
    torch.manual_seed(config.seed)
    torch.use_deterministic_algorithms(True)
    started = time.perf_counter()
    images, codes = _render_pool(config, cache_dir)
    logger.info("pool of %d images ready in %.0f s", len(images), time.perf_counter() - started)

    model = open_clip.CLIP(**model_config())
    with torch.no_grad():  # a sharper start than CLIP's 1/0.07 breaks the shape-word/shape-pixel stalemate sooner
        model.logit_scale.fill_(math.log(config.initial_logit_scale))
    tokenizer = open_clip.get_tokenizer("ViT-B-32", context_length=model_config()["text_cfg"]["context_length"])
    no_decay = [p for n, p in model.named_parameters() if p.ndim < 2 or "embedding" in n or "logit_scale" in n]
    decay = [p for n, p in model.named_parameters() if not (p.ndim < 2 or "embedding" in n or "logit_scale" in n)]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": config.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=config.learning_rate, betas=(0.9, 0.98), eps=1e-6,
    )

    def learning_rate(step: int) -> float:
        if step < config.warmup_steps:
            return config.learning_rate * (step + 1) / config.warmup_steps
        progress = (step - config.warmup_steps) / max(1, config.steps - config.warmup_steps)
        return config.learning_rate * 0.5 * (1 + math.cos(math.pi * progress))

    names = filler_names(4000, config.seed)
    caption_rng = np.random.default_rng([config.seed, 31337])
    model.train()
    for step in range(config.steps):
        # Shape first: learned alongside the easy attributes, the text tower collapses all shape words together
        # before the image tower sees shapes, and neither side can then pull them apart for hundreds of steps.
        focus = ["shape"] if step < config.shape_first_steps else None
        batch_index = caption_rng.choice(len(images), size=config.batch_size, replace=False)
        batch_images = images[batch_index]  # [B, H, W, 3]
        flips = caption_rng.random(config.batch_size) < 0.5  # mirror images keep every attribute (and uprightness)
        batch_images = np.where(flips[:, None, None, None], batch_images[:, :, ::-1], batch_images)
        batch_codes = codes[batch_index]  # [B, 4]
        captions, caption_codes = [], np.full((config.batch_size, 4), -1, dtype=np.int64)  # -1: not mentioned
        for row, image_codes in enumerate(batch_codes):
            attrs = {t: ATTRIBUTES[t][c] for t, c in zip(ATTRIBUTE_TYPES, image_codes)}
            caption, mentioned = make_caption(attrs, names, caption_rng, mentioned=focus)
            captions.append(caption)
            for t in mentioned:
                caption_codes[row, ATTRIBUTE_TYPES.index(t)] = image_codes[ATTRIBUTE_TYPES.index(t)]
        # consistent[i, j]: caption j says nothing that contradicts image i
        consistent = torch.from_numpy(
            ((caption_codes[None, :, :] == -1) | (caption_codes[None, :, :] == batch_codes[:, None, :])).all(-1)
        )  # [B, B]
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(step)
        image_feats = model.encode_image(_to_model_input(np.ascontiguousarray(batch_images), torch), normalize=True)
        text_feats = model.encode_text(tokenizer(captions), normalize=True)
        loss = _multi_positive_loss(image_feats, text_feats, model.logit_scale.exp(), consistent, torch)
        if config.attribute_loss_weight:
            # every image also meets a caption for each attribute value every step: the direct signal that
            # makes shape learnable in minutes (random captions alone name a rival shape too rarely)
            attr_types = focus or ATTRIBUTE_TYPES
            attribute_captions = _attribute_captions(caption_rng, names, attr_types)
            attribute_feats = model.encode_text(tokenizer(attribute_captions), normalize=True)
            loss = loss + config.attribute_loss_weight * _attribute_loss(
                image_feats, attribute_feats, model.logit_scale.exp(), batch_codes, attr_types, torch
            )
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0, math.log(100))
        if config.eval_every and (step + 1) % config.eval_every == 0:
            logger.info("step %d eval %s", step + 1, {k: round(v, 3) for k, v in evaluate(model, tokenizer).items()})
        if step % 50 == 0 or step == config.steps - 1:
            logger.info("step %d/%d loss %.3f scale %.1f (%.0f s)", step, config.steps, loss.item(),
                        model.logit_scale.exp().item(), time.perf_counter() - started)

    logger.info("final eval %s", {k: round(v, 3) for k, v in evaluate(model, tokenizer).items()})
    out_dir.mkdir(parents=True, exist_ok=True)
    state = {  # fp16 halves the file; integer buffers (BatchNorm step counts) stay as they are
        k: (v.detach().to(torch.float16) if v.is_floating_point() else v.detach()).contiguous()
        for k, v in model.state_dict().items()
    }
    metadata = {"train_config": json.dumps(asdict(config))}
    save_file(state, str(out_dir / "open_clip_model.safetensors"), metadata=metadata)
    (out_dir / "open_clip_config.json").write_text(json.dumps(open_clip_config(), indent=2) + "\n")
    logger.info("wrote %s in %.0f s", out_dir, time.perf_counter() - started)
    return model


def main(argv: list[str] | None = None) -> None:
    """Command line: `python -m vlmcls.demo.train --out DIR [--steps N] [--seed S]`."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="folder to write the open_clip local-dir model to")
    defaults = TrainConfig()
    for field, value in asdict(defaults).items():
        parser.add_argument(f"--{field.replace('_', '-')}", type=type(value), default=value)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    config = TrainConfig(**{field: getattr(args, field) for field in asdict(defaults)})
    train(config, args.out)


if __name__ == "__main__":
    main()
