"""The demo world: invented classes defined by visual attributes, and what an LLM would say about them.

Every demo class is one full attribute combination (shape, colour, surface pattern, size). Its name is an
invented word, so the name alone tells a vision-language model nothing; only descriptions of its attributes do.
Several classes come in one-attribute pairs (they differ in exactly one attribute) and their generic
descriptors leave that attribute out, as an LLM asked about one class alone would: under Classification by
Description such a pair stays confused, and only differential follow-ups (FuDD) tell it apart.

Pure Python on purpose: the fake LLM server imports this module, so it must load in a few milliseconds.
"""

from __future__ import annotations

__all__ = [
    "ATTRIBUTES",
    "ATTRIBUTE_PHRASES",
    "DEMO_CLASSES",
    "ONE_ATTRIBUTE_PAIRS",
    "class_attributes",
    "generic_descriptors",
    "differential_descriptions",
    "write_attribute_distances",
    "UNKNOWN_COMBINATIONS",
    "TWO_OBJECT_PAIRS",
    "near_miss_negatives",
]

# Attribute type -> its values. Few values per type so a small CLIP trained in minutes on a CPU can learn them all.
ATTRIBUTES: dict[str, list[str]] = {
    "shape": ["circle", "square", "triangle", "star"],
    "colour": ["red", "green", "blue", "yellow", "purple"],
    "pattern": ["plain", "striped", "dotted"],
    "size": ["small", "large"],
}

# Attribute type -> value -> the short CbD-style descriptor an LLM would write for it ("a red colour").
ATTRIBUTE_PHRASES: dict[str, dict[str, str]] = {
    "shape": {
        "circle": "a round shape",
        "square": "a square shape",
        "triangle": "a triangular shape",
        "star": "a star shape",
    },
    "colour": {colour: f"a {colour} colour" for colour in ATTRIBUTES["colour"]},
    "pattern": {
        "plain": "a plain surface pattern",
        "striped": "a striped surface pattern",
        "dotted": "a dotted surface pattern",
    },
    "size": {size: f"a {size} size" for size in ATTRIBUTES["size"]},
}


def _define(shape: str, colour: str, pattern: str, size: str) -> dict[str, str]:
    return {"shape": shape, "colour": colour, "pattern": pattern, "size": size}


# Invented name -> its attributes. Pairs are listed together; the comment names the one attribute that differs.
DEMO_CLASSES: dict[str, dict[str, str]] = {
    # pattern only
    "zorblax": _define("circle", "red", "striped", "large"),
    "quintor": _define("circle", "red", "dotted", "large"),
    # colour only
    "flimber": _define("triangle", "blue", "plain", "large"),
    "vostrel": _define("triangle", "yellow", "plain", "large"),
    # size only
    "marnik": _define("square", "green", "striped", "large"),
    "trelloq": _define("square", "green", "striped", "small"),
    # shape only
    "bexapod": _define("star", "purple", "dotted", "large"),
    "skarnel": _define("square", "purple", "dotted", "large"),
    # pattern only
    "plovix": _define("star", "blue", "dotted", "small"),
    "drumelt": _define("star", "blue", "plain", "small"),
    # singles: no one-attribute partner
    "yantrok": _define("triangle", "red", "dotted", "small"),
    "gleebis": _define("circle", "blue", "striped", "small"),
}


def _differing_attributes(a: dict[str, str], b: dict[str, str]) -> list[str]:
    return [attr_type for attr_type in ATTRIBUTES if a[attr_type] != b[attr_type]]


# The pairs of demo classes that differ in exactly one attribute: (class_a, class_b, attr_type).
ONE_ATTRIBUTE_PAIRS: list[tuple[str, str, str]] = [
    (a, b, differing[0])
    for i, a in enumerate(DEMO_CLASSES)
    for b in list(DEMO_CLASSES)[i + 1 :]
    if len(differing := _differing_attributes(DEMO_CLASSES[a], DEMO_CLASSES[b])) == 1
]


def class_attributes(class_name: str) -> dict[str, str]:
    """The attributes that define a demo class; KeyError naming the known classes if it is not one."""
    try:
        return dict(DEMO_CLASSES[class_name])
    except KeyError:
        known = ", ".join(DEMO_CLASSES)
        raise KeyError(f"'{class_name}' is not a demo class. Known demo classes: {known}") from None


def _salient_attributes(class_name: str) -> list[str]:
    """Attribute types an LLM asked about this class alone would mention: all but the one its pair partner shares.

    The attribute that separates a one-attribute pair is left out on purpose, so that generic descriptors alone
    cannot tell the pair apart — the situation differential follow-ups are built for.
    """
    attributes = class_attributes(class_name)
    left_out = {attr_type for a, b, attr_type in ONE_ATTRIBUTE_PAIRS if class_name in (a, b)}
    return [attr_type for attr_type in ATTRIBUTES if attr_type not in left_out and attributes[attr_type]]


def generic_descriptors(class_name: str) -> list[str]:
    """CbD-style descriptors for one class, as an LLM asked about it alone would write them ("a red colour")."""
    attributes = class_attributes(class_name)
    return [ATTRIBUTE_PHRASES[attr_type][attributes[attr_type]] for attr_type in _salient_attributes(class_name)]


def _differential_caption(class_name: str, attr_type: str, value: str) -> str:
    return f"a photo of a {class_name}, which has {ATTRIBUTE_PHRASES[attr_type][value]}"


def differential_descriptions(a: str, b: str) -> list[tuple[str, str, str]]:
    """FuDD follow-ups for two classes: (attr_type, caption_for_a, caption_for_b) per attribute that differs."""
    attributes_a, attributes_b = class_attributes(a), class_attributes(b)
    return [
        (
            attr_type,
            _differential_caption(a, attr_type, attributes_a[attr_type]),
            _differential_caption(b, attr_type, attributes_b[attr_type]),
        )
        for attr_type in _differing_attributes(attributes_a, attributes_b)
    ]


def write_attribute_distances(path, class_names=None):
    """A named distance-matrix CSV (the Fréchet-mean metric): how many attributes two demo classes differ in."""
    import csv
    from pathlib import Path

    names = list(class_names or DEMO_CLASSES)
    with open(path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow([""] + names)
        for a in names:
            writer.writerow([a] + [len(_differing_attributes(class_attributes(a), class_attributes(b))) for b in names])
    return Path(path)


def _combinations() -> list[dict[str, str]]:
    import itertools

    return [dict(zip(ATTRIBUTES, values)) for values in itertools.product(*ATTRIBUTES.values())]


# "None of these": attribute combinations no demo class has, at least two attributes away from every class (so a
# picture of one is not just a class with one thing changed). A fixed dozen, for the demo's unknown/ folder.
_FAR = [combo for combo in _combinations()
        if min(len(_differing_attributes(combo, attrs)) for attrs in DEMO_CLASSES.values()) >= 2]
UNKNOWN_COMBINATIONS: list[dict[str, str]] = _FAR[:: max(1, len(_FAR) // 12)][:12]

# Two small demo objects in one picture (the multi-label images): pairs that differ in at least two attributes.
TWO_OBJECT_PAIRS: list[tuple[str, str]] = [("trelloq", "yantrok"), ("gleebis", "trelloq"), ("yantrok", "plovix"),
                                            ("gleebis", "drumelt"), ("trelloq", "drumelt"), ("gleebis", "yantrok")]


def near_miss_negatives(class_name: str) -> list[str]:
    """What an LLM asked for look-alikes of one class would name: the class with one attribute changed, where that
    makes no other demo class ("a large red striped square"), worded as the demo model's captions are."""
    attrs = class_attributes(class_name)
    taken = [dict(a) for a in DEMO_CLASSES.values()]
    out = []
    for attr_type, values in ATTRIBUTES.items():
        for value in values:
            if value == attrs[attr_type]:
                continue
            changed = {**attrs, attr_type: value}
            if changed in taken:
                continue
            out.append(f"{changed['size']} {changed['colour']} {changed['pattern']} {changed['shape']}")
    return out
