"""The demo world packed at test time as webdataset shards in CLIP_benchmark's layout (no download)."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

from PIL import Image

DEMO = Path(__file__).resolve().parents[1] / "vlmcls" / "data" / "demo"
DEMO_MODEL = "local-dir:" + str(DEMO.parent / "demo_model")
TEMPLATES = ["a photo of a {c}.", "a drawing of a {c}."]


def demo_as_jpeg_folder(root: Path) -> list[tuple[str, bytes]]:
    """The demo images re-encoded once as JPEG into ``root/CLASS/N.jpg``; (class, JPEG bytes) in listing order,
    so the shards and the folder hold the very same bytes."""
    samples = []
    for folder in sorted(p for p in (DEMO / "images").iterdir() if p.is_dir()):
        for image in sorted(folder.iterdir()):
            buffer = io.BytesIO()
            Image.open(image).convert("RGB").save(buffer, "JPEG", quality=95)
            target = root / folder.name / (image.stem + ".jpg")
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(buffer.getvalue())
            samples.append((folder.name, buffer.getvalue()))
    return samples


def add_member(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def write_clip_benchmark(root: Path, samples: list[tuple[str, bytes]], shards: int = 4, *,
                         with_cls: bool = True) -> Path:
    """``root/test/0.tar`` … with ``NNN.jpg``/``NNN.cls`` members, ``test/nshards.txt``, ``classnames.txt`` and the
    templates file: what CLIP_benchmark's own ``build_wds_dataset`` reads."""
    classes = [line.strip() for line in (DEMO / "classes.txt").read_text().splitlines() if line.strip()]
    (root / "test").mkdir(parents=True, exist_ok=True)
    (root / "classnames.txt").write_text("\n".join(classes) + "\n")
    (root / "zeroshot_classification_templates.txt").write_text("\n".join(TEMPLATES) + "\n")
    (root / "test" / "nshards.txt").write_text(f"{shards}\n")  # CLIP_benchmark's loader requires it
    per_shard = -(-len(samples) // shards)
    for n in range(shards):
        with tarfile.open(root / "test" / f"{n}.tar", "w") as tar:
            for i in range(n * per_shard, min(len(samples), (n + 1) * per_shard)):
                label, data = samples[i]
                add_member(tar, f"{i:03d}.jpg", data)
                if with_cls:
                    add_member(tar, f"{i:03d}.cls", str(classes.index(label)).encode())
    return root


def demo_classes() -> list[str]:
    return [line.strip() for line in (DEMO / "classes.txt").read_text().splitlines() if line.strip()]


def demo_as_hf_dataset():
    """The demo images (their own PNG bytes, in the folder's listing order) as a ``datasets.Dataset`` with an
    Image column and a ClassLabel column named after classes.txt."""
    import datasets

    classes = demo_classes()
    images, labels = [], []
    for folder in sorted(p for p in (DEMO / "images").iterdir() if p.is_dir()):
        for image in sorted(folder.iterdir()):
            images.append({"bytes": image.read_bytes(), "path": None})
            labels.append(classes.index(folder.name))
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=classes)})
    return datasets.Dataset.from_dict({"image": images, "label": labels}, features=features)


def write_hf_parquet(root: Path, files: int = 2, row_group: int = 8, split: str = "test") -> Path:
    """``root/data/SPLIT-0000N-of-0000F.parquet``, a hub dataset repository's layout (what ``datasets.load_dataset``
    reads from a clone), ``row_group`` rows per row group."""
    dataset = demo_as_hf_dataset()
    (root / "data").mkdir(parents=True, exist_ok=True)
    per_file = -(-len(dataset) // files)
    for n in range(files):
        part = dataset.select(range(n * per_file, min(len(dataset), (n + 1) * per_file)))
        part.to_parquet(str(root / "data" / f"{split}-{n:05d}-of-{files:05d}.parquet"), batch_size=row_group)
    return root
