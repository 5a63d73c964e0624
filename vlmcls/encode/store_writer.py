"""A first run's store writes on a thread of their own: one transaction per batch, bounded waits, and every
handed-over batch stored even when the run ends on an error or Ctrl-C."""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
from typing import TYPE_CHECKING, Callable

import numpy as np

from ..errors import CacheError
from .store import Store, stat_key

if TYPE_CHECKING:
    from .images import ImageRecord

log = logging.getLogger(__name__)

class _StoreWriter:
    """Stores each batch's new features and the digests of the files read, on a thread of its own, in batch order,
    one transaction per batch (:meth:`Store.set_many`), so the model never waits on SQLite: its commits and
    checkpoints wait on the disk, and the keys and rows are Python work. At most ``DEPTH`` batches wait."""

    DEPTH = 2
    STALL_S = 600.0  # the longest wait for the writer to take a batch or finish, before the run gives up

    def __init__(self, store: Store, image_key: Callable[[str], str]):
        self._store, self._image_key = store, image_key
        self._queue: queue.Queue = queue.Queue(self.DEPTH)
        self._error: BaseException | None = None
        self._raised = False  # the error went to the run already
        self._thread = threading.Thread(target=self._run, name="vlmcls-store-writer", daemon=True)
        self._thread.start()

    def put(self, batch, out: np.ndarray | None) -> None:
        """Hands over one batch (``out``: the features of ``batch.records_ok``; its pixels are not kept); raises the
        writer's error, if any."""
        self._raise_error()
        if not self._offer((batch.records_ok, batch.digests, batch.file_stats, batch.known, out)):
            self._raise_error()
            raise CacheError(f"the cache in '{self._store.directory}' took no batch for {self.STALL_S:.0f} s.")

    def close(self, raise_error: bool = True) -> None:
        """Waits until every batch handed over is stored (bounded); then raises the writer's error, if any."""
        if self._offer(None):
            self._thread.join(self.STALL_S)
        if self._thread.is_alive():
            message = f"the cache in '{self._store.directory}' did not finish writing within {self.STALL_S:.0f} s."
            if raise_error:
                raise CacheError(message)
            log.warning(message)
        elif raise_error:
            self._raise_error()
        elif self._error is not None and not self._raised:
            log.warning("storing the last batches in the cache failed: %s", self._error)

    def _offer(self, item) -> bool:
        deadline = time.monotonic() + self.STALL_S
        while self._thread.is_alive() and time.monotonic() < deadline:
            try:
                self._queue.put(item, timeout=0.5)
                return True
            except queue.Full:
                continue
        return False

    def _raise_error(self) -> None:
        if self._error is not None:
            self._raised = True
            raise self._error

    def _run(self) -> None:
        while (item := self._queue.get()) is not None:
            if self._error is None:
                try:
                    self._write(*item)
                except BaseException as exc:  # handed to the run at its next batch, or at the end
                    self._error = exc

    def _write(self, records, digests_read, file_stats, known, out: np.ndarray | None) -> None:
        digests: dict[str, str] = {}  # stat key -> digest, for the next process
        for rec, digest, file_stat, _value, _thumbnail in known:
            digests.update(_stat_digest(rec, file_stat, digest))
        new: dict[str, np.ndarray] = {}
        for j, rec in enumerate(records):
            new[self._image_key(digests_read[j])] = out[j]
            digests.update(_stat_digest(rec, file_stats[j], digests_read[j]))
        if new or digests:
            self._store.set_many(arrays=new, jsons=digests)  # one transaction per batch

def _stat_digest(record: ImageRecord, file_stat: os.stat_result | None, digest: str) -> dict[str, str]:
    """{stat key of the file as it was read: digest of the bytes read}, so a later run need not read it again."""
    if file_stat is None or record.path is None:
        return {}
    key = stat_key(record.path, file_stat)
    return {key: digest} if key is not None else {}
