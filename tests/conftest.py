import builtins
import io
import os
from pathlib import Path

# No test may touch the network: any hub access must fail at once.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# pytest-xdist's workers inherit COLUMNS=80/LINES=24, which would fix every console's width when it is made; the
# tests give each command its width (CliRunner env, terminal_width), as in a run without workers.
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ.pop("COLUMNS", None)
    os.environ.pop("LINES", None)

import pytest  # noqa: E402

from tiny_models import make_hf_clip_dir, make_open_clip_dir  # noqa: E402


def pytest_collection_modifyitems(config, items):
    """With pytest-xdist (the default run: ``-n auto --dist loadgroup`` in pyproject.toml) every test that starts
    Ray runs on one worker, one after another: one Ray instance at a time, its module fixture shared; the other
    tests fill the other workers."""
    for item in items:
        if item.get_closest_marker("ray") is not None or "ray_local" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.xdist_group("ray"))


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path, monkeypatch):
    """Every test gets its own cache folder, so no test sees another's cached values."""
    monkeypatch.setenv("VLMCLS_CACHE", str(tmp_path / "vlmcls-cache"))
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)


@pytest.fixture(scope="session")
def tiny_open_clip(tmp_path_factory):
    """Folder of a tiny open_clip model, loadable as 'local-dir:<folder>'."""
    return make_open_clip_dir(tmp_path_factory.mktemp("tiny_open_clip"))


@pytest.fixture(scope="session")
def tiny_hf_clip(tmp_path_factory):
    """Folder of a tiny transformers CLIP model, loadable as 'hf:<folder>'."""
    return make_hf_clip_dir(tmp_path_factory.mktemp("tiny_hf_clip"))


@pytest.fixture(scope="session")
def ray_local():
    """Ray on this machine, started once for the whole run (or the cluster a test already started), listening on
    127.0.0.1, shut down at the end: a start costs seconds, and the Ray tests run one after another on one worker."""
    ray = pytest.importorskip("ray")
    started_here = not ray.is_initialized()
    if started_here:
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, _node_ip_address="127.0.0.1")
    yield ray
    if started_here:
        ray.shutdown()


@pytest.fixture
def labelled_folder(tmp_path):
    """3 cat and 2 dog images, one loose (unlabelled) image and one empty file."""
    import imagegen

    root = tmp_path / "photos"
    imagegen.make_class_tree(root, {"cat": [(200, 30, 30), (180, 40, 20), (210, 60, 50)], "dog": [(20, 30, 200), (30, 60, 190)]})
    imagegen.write_noise_jpeg(root / "loose.jpg")
    imagegen.write_empty(root / "dog" / "empty.jpg")
    return root


@pytest.fixture
def photo_folder(labelled_folder):
    """The labelled folder plus the classic bad files: a truncated JPEG and a text file named .png."""
    import imagegen

    imagegen.write_truncated_jpeg(labelled_folder / "cat" / "truncated.jpg")
    imagegen.write_text_as_image(labelled_folder / "notes.png")
    return labelled_folder


@pytest.fixture
def count_opens(monkeypatch):
    """Counts every open of a file under a folder, through builtins.open, io.open and os.open."""
    counts: dict[str, int] = {}
    roots: list[str] = []

    def counting(real):
        def opener(file, *args, **kwargs):
            if isinstance(file, (str, os.PathLike)) and any(os.fspath(file).startswith(r) for r in roots):
                counts[os.fspath(file)] = counts.get(os.fspath(file), 0) + 1
            return real(file, *args, **kwargs)
        return opener

    monkeypatch.setattr(builtins, "open", counting(builtins.open))
    monkeypatch.setattr(io, "open", counting(io.open))
    monkeypatch.setattr(os, "open", counting(os.open))

    def watch(folder: Path) -> dict[str, int]:
        roots.append(str(folder))
        return counts
    return watch


@pytest.fixture
def interrupt_encoding(monkeypatch):
    """``interrupt_encoding(n)``: the open_clip backend's n-th image batch raises KeyboardInterrupt (as Ctrl-C
    there would); returns ``restore()``, which puts the real encoder back for the run that resumes."""
    from vlmcls import models

    real = models.OpenClipBackend.encode_images

    def arm(nth: int):
        calls = {"n": 0}

        def encode_images(self, pixels):
            calls["n"] += 1
            if calls["n"] == nth:
                raise KeyboardInterrupt
            return real(self, pixels)

        monkeypatch.setattr(models.OpenClipBackend, "encode_images", encode_images)
        return lambda: monkeypatch.setattr(models.OpenClipBackend, "encode_images", real)
    return arm
