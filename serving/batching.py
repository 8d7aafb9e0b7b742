"""Optional server-side batching: concurrent small requests for one signature run as one call.

Off by default (``vae-tf serve --enable-batching`` turns it on). A request with fewer than
``max_batch_size`` rows waits in a queue for its signature (and inner input shapes) at most
``batch_timeout_ms``; whatever has arrived by then, up to ``max_batch_size`` rows, is
concatenated along dimension 0, run once, and the outputs are split back by rows. Requests
bigger than ``max_batch_size`` run on their own. At most ``max_enqueued_rows`` rows may wait;
beyond that a request is refused with UNAVAILABLE and TF Serving's message (the client retries).

Why it helps: one call on 32 rows costs about as much as one call on 1 row for the small models
served here, so under many concurrent single-row clients throughput rises; a lone client pays
up to ``batch_timeout_ms`` extra latency. If a merged call fails, every request in it is run
alone, so one request's error never becomes another's.

The semantics are TF Serving's ``--enable_batching`` with ``max_batch_size``,
``batch_timeout_micros`` and ``max_enqueued_batches`` (expressed in rows here); there is no
padding, since every input must already share its inner dimensions to be merged.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Mapping

import numpy as np

from serving.status import Code, ServingError

log = logging.getLogger("serving.batching")


@dataclass(frozen=True)
class BatchingOptions:
    max_batch_size: int = 32
    batch_timeout_ms: float = 1.0
    max_enqueued_rows: int = 4096
    num_batch_threads: int = 1

    def __post_init__(self):
        from vae_tf.errors import ConfigError

        if self.max_batch_size < 1 or self.num_batch_threads < 1 or self.max_enqueued_rows < self.max_batch_size:
            raise ConfigError("batching needs max_batch_size >= 1, num_batch_threads >= 1 and max_enqueued_rows >= "
                              f"max_batch_size (got {self.max_batch_size}, {self.num_batch_threads}, "
                              f"{self.max_enqueued_rows})")
        if not self.batch_timeout_ms >= 0:
            raise ConfigError(f"batch_timeout_ms must be >= 0, got {self.batch_timeout_ms}")


@dataclass
class _Task:
    signature: object
    arrays: Mapping[str, np.ndarray]
    rows: int
    enqueued: float
    done: threading.Event = field(default_factory=threading.Event)
    result: dict | None = None
    error: BaseException | None = None


def _common_rows(arrays: Mapping[str, np.ndarray]) -> int | None:
    rows = {arr.shape[0] if arr.ndim else None for arr in arrays.values()}
    return rows.pop() if len(rows) == 1 and None not in rows else None


class Batcher:
    """Callable like ``Signature.run``: ``batcher.run(signature, arrays) -> outputs``."""

    def __init__(self, options: BatchingOptions = BatchingOptions()):
        self.options = options
        self._cond = threading.Condition()
        self._queues: dict[tuple, collections.deque[_Task]] = {}
        self._queued_rows: dict[tuple, int] = {}
        self._total_rows = 0
        self._closed = False
        self._threads = [threading.Thread(target=self._work, name=f"batcher-{i}", daemon=True)
                         for i in range(options.num_batch_threads)]
        for thread in self._threads:
            thread.start()

    def run(self, signature, arrays: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        rows = _common_rows(arrays)
        if rows is None or rows == 0 or rows >= self.options.max_batch_size:
            return signature.run(arrays)
        key = (id(signature),) + tuple((k, v.shape[1:], v.dtype.str) for k, v in sorted(arrays.items()))
        task = _Task(signature, arrays, rows, time.monotonic())
        with self._cond:
            if self._closed:
                return signature.run(arrays)
            if self._total_rows + rows > self.options.max_enqueued_rows:
                raise ServingError(Code.UNAVAILABLE, "The batch scheduling queue to which this task was submitted "
                                                     "is full")
            self._queues.setdefault(key, collections.deque()).append(task)
            self._queued_rows[key] = self._queued_rows.get(key, 0) + rows
            self._total_rows += rows
            self._cond.notify()
        task.done.wait()
        if task.error is not None:
            raise task.error
        return task.result

    def close(self) -> None:
        """Finish what is queued, then stop the worker threads."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        for thread in self._threads:
            thread.join(timeout=30)

    # -- workers ---------------------------------------------------------------------------

    def _take_batch(self) -> list[_Task] | None:
        timeout = self.options.batch_timeout_ms / 1000.0
        with self._cond:
            while True:
                while not self._queues and not self._closed:
                    self._cond.wait()
                if not self._queues:
                    return None  # closed and drained
                key = min(self._queues, key=lambda k: self._queues[k][0].enqueued)
                deadline = self._queues[key][0].enqueued + timeout
                while (not self._closed and key in self._queues
                       and self._queued_rows[key] < self.options.max_batch_size):
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        break
                    self._cond.wait(remaining)
                queue = self._queues.get(key)
                if not queue:
                    continue  # another worker took it
                batch, rows = [], 0
                while queue and rows + queue[0].rows <= self.options.max_batch_size:
                    task = queue.popleft()
                    batch.append(task)
                    rows += task.rows
                self._queued_rows[key] -= rows
                self._total_rows -= rows
                if not queue:
                    del self._queues[key], self._queued_rows[key]
                return batch

    def _work(self) -> None:
        while True:
            batch = self._take_batch()
            if batch is None:
                return
            try:
                self._run_batch(batch)
            except BaseException as err:  # never leave a waiting request hanging
                for task in batch:
                    if not task.done.is_set():
                        task.error = err if isinstance(err, ServingError) else ServingError(Code.INTERNAL, str(err))
                        task.done.set()

    @staticmethod
    def _run_alone(task: _Task) -> None:
        try:
            task.result = task.signature.run(task.arrays)
        except BaseException as err:
            task.error = err
        task.done.set()

    def _run_batch(self, batch: list[_Task]) -> None:
        if len(batch) == 1:
            self._run_alone(batch[0])
            return
        signature = batch[0].signature
        merged = {name: np.concatenate([t.arrays[name] for t in batch]) for name in batch[0].arrays}
        total = sum(t.rows for t in batch)
        try:
            outputs = signature.run(merged)
        except BaseException:
            log.info("a merged batch of %d requests failed; running them one by one", len(batch))
            for task in batch:
                self._run_alone(task)
            return
        if any(v.ndim == 0 or v.shape[0] != total for v in outputs.values()):
            for task in batch:  # outputs are not batch-leading: cannot split them by rows
                self._run_alone(task)
            return
        start = 0
        for task in batch:
            task.result = {name: value[start:start + task.rows] for name, value in outputs.items()}
            start += task.rows
            task.done.set()


__all__ = ["Batcher", "BatchingOptions"]
