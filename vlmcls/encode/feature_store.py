"""Image features on shared storage, for the Ray engine: Parquet shards of (content digest, unit feature).

One folder per feature key (model × weights × preprocessing × JPEG decoding size: the parts of the single engine's
keys, :meth:`vlmcls.encode.embeddings.Encoder.image_key_parts`), so a feature is reused only by the model and decoding that
made it; inside, each encoder batch writes one shard ``part-<random>.parquet`` (written under a temporary name, then
renamed: a reader never sees half a shard). A later run — other classes, another
method — reads the features of the images it knows instead of encoding them again.

Nothing read here is trusted: only ``part-*.parquet`` files directly inside the folder are read, a shard whose
columns or feature size are not what this model writes is skipped with a warning, and nothing is unpickled.
"""

from __future__ import annotations

import logging
import os
import uuid
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from .store import cache_key, default_cache_dir
from ..errors import CacheError

__all__ = ["FeatureStore", "default_feature_root"]

log = logging.getLogger(__name__)

_SHARD_GLOB = "part-*.parquet"


def default_feature_root(cache_dir: str | os.PathLike | None = None) -> Path:
    """``<cache>/features``: beside the embedding store (give a shared folder for a multi-node cluster)."""
    return Path(cache_dir) / "features" if cache_dir is not None else default_cache_dir() / "features"


class FeatureStore:
    """The shards of one feature key under ``root``."""

    def __init__(self, root: str | os.PathLike, image_key_parts: dict, dim: int):
        self.folder = Path(root).expanduser() / cache_key("image-features", **image_key_parts).replace(":", "-")
        self.dim = dim

    def shards(self) -> list[Path]:
        if not self.folder.is_dir():
            return []
        return sorted(p for p in self.folder.glob(_SHARD_GLOB) if p.is_file() and not p.is_symlink())

    def index(self) -> dict[str, Path]:
        """digest -> the shard holding its feature; reads only the digest column of each shard."""
        import pyarrow.parquet as pq

        where: dict[str, Path] = {}
        for shard in self.shards():
            try:
                schema = pq.read_schema(shard)
                if "digest" not in schema.names or "feats" not in schema.names:
                    raise ValueError(f"columns {schema.names}")
                size = getattr(schema.field("feats").type, "list_size", None)
                if size != self.dim:
                    raise ValueError(f"feature size {size}, expected {self.dim}")
                digests = pq.read_table(shard, columns=["digest"]).column("digest").to_pylist()
            except Exception as exc:  # a foreign or damaged file must not end the run: it is just not used
                log.warning("feature store: skipping shard '%s' (%s)", shard.name, exc)
                continue
            for digest in digests:
                where.setdefault(str(digest), shard)
        return where

    def write_shard(self, digests: Sequence[str], feats: np.ndarray) -> Path:
        """One shard of unit features [B, D] keyed by content digest; written whole or not at all."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        feats = np.ascontiguousarray(feats, dtype=np.float32)
        if feats.ndim != 2 or feats.shape != (len(digests), self.dim):
            raise CacheError(f"features of shape {feats.shape} for {len(digests)} images of size {self.dim}.")
        self.folder.mkdir(parents=True, exist_ok=True)
        name = f"part-{uuid.uuid4().hex}.parquet"
        column = pa.FixedSizeListArray.from_arrays(pa.array(feats.reshape(-1)), self.dim)
        table = pa.table({"digest": pa.array(list(digests), pa.string()), "feats": column})
        tmp = self.folder / f".{name}.tmp"
        pq.write_table(table, tmp)
        os.replace(tmp, self.folder / name)
        return self.folder / name


def read_feats(table, dim: int) -> np.ndarray:
    """The feats column of a shard (or a batch of one) as float32 [B, D]."""
    column = table.column("feats").combine_chunks()
    return np.asarray(column.flatten().to_numpy(zero_copy_only=False), dtype=np.float32).reshape(-1, dim)


def shards_for(index: dict[str, Path], digests: Iterable[str]) -> list[str]:
    return sorted({str(index[d]) for d in digests if d in index})
