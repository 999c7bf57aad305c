"""The micro-batcher: faces of requests that arrive together are classified in one call.

The first waiting item opens a batch; every item already queued joins it at once. Then the
batch closes, and one `classify` call (one forward pass) runs on the concatenated crops, each
caller getting its own rows back, as soon as any of these holds:
  * it holds `max_batch` faces;
  * no request is on its way: the pending count (expect() when a request starts detection,
    arrived() once it has submitted its faces or failed; or `with batcher.expecting():`) is
    zero, so a lone client's face is classified without waiting;
  * `max_wait_ms` has passed since it opened, whether or not the pending requests arrived.
Waiting only for requests known to be coming (Triton's and TorchServe's batchers wait out
their delay regardless) means batching never adds latency to a single client. Items that
queued while a forward pass ran are all taken at once by the next batch, so under load
batches fill without waiting at all.

One worker thread runs every `classify` call, so the classifier is never entered by two
threads at once and its own threads (onnxruntime / torch intra-op) are not oversubscribed.
Callers get a concurrent.futures.Future: usable from threads and, wrapped with
asyncio.wrap_future, from the event loop.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np

# While requests are pending, an open batch looks for them this often (and closes as soon
# as none is pending): well under the default max_wait_ms, and at most a few wake-ups a batch.
PENDING_POLL_S = 0.001

Classify = Callable[[np.ndarray], np.ndarray]  # uint8 crops (N, 48, 48) -> probabilities (N, C)
# After each forward pass: (faces in it, each request's seconds in the queue, seconds of the pass)
OnBatch = Callable[[int, list[float], float], None]


@dataclass
class _Item:
    crops: np.ndarray  # (n, 48, 48) uint8, n >= 1
    future: Future = field(default_factory=Future)
    queued: float = field(default_factory=time.monotonic)


@dataclass
class BatchStats:
    """Counters for /healthz and the tests: how many forward passes, how full."""

    batches: int = 0
    faces: int = 0
    largest: int = 0

    def as_dict(self) -> dict[str, float]:
        return {"batches": self.batches, "faces": self.faces, "largest": self.largest,
                "mean": round(self.faces / self.batches, 2) if self.batches else 0.0}


class MicroBatcher:
    """submit(crops) -> Future of probabilities; see the module docstring.

    An item with more faces than max_batch (a crowd photo) is classified alone, whole: it is
    never split, so one request's faces always come from one forward pass.
    """

    def __init__(self, classify: Classify, *, max_batch: int, max_wait_ms: float,
                 on_batch: OnBatch | None = None) -> None:
        if max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {max_batch}")
        self.classify = classify
        self.max_batch = max_batch
        self.max_wait_s = max_wait_ms / 1000.0
        self.stats = BatchStats()
        self.on_batch = on_batch
        self.waiting_faces = 0  # submitted, forward pass not yet begun (for fer_queue_faces)
        self._waiting_lock = threading.Lock()
        self._queue: queue.Queue[_Item | None] = queue.Queue()
        self._closed = False
        self._pending = 0  # requests on their way to submit(): expect() minus arrived()
        self._pending_lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="fer-batcher", daemon=True)
        self._thread.start()

    def submit(self, crops: np.ndarray, *, arrived: bool = False) -> Future:
        """Queue one request's faces. With `arrived`, the request announced by expect() is
        counted as arrived in the same step as its faces are queued (under one lock), so an open
        batch never waits for a request whose faces are already in the queue."""
        try:
            if self._closed:
                raise RuntimeError("the batcher is closed")
            if crops.ndim != 3 or crops.shape[0] == 0:
                raise ValueError(f"crops must be (n>=1, H, W), got {crops.shape}")
            item = _Item(crops)
            with self._waiting_lock:
                self.waiting_faces += len(crops)
            with self._pending_lock:
                self._queue.put(item)
                if arrived:
                    self._pending = max(0, self._pending - 1)
                    arrived = False
            return item.future
        finally:
            if arrived:  # refused: the request will not come
                self.arrived()

    def expect(self) -> None:
        """A request is on its way (detecting its faces): an open batch may wait for it."""
        with self._pending_lock:
            self._pending += 1

    def arrived(self) -> None:
        """The request announced by expect() has submitted its faces, or will not (no face,
        an error): call it after submit(), so the batch sees the item before the count drops."""
        with self._pending_lock:
            self._pending = max(0, self._pending - 1)

    @property
    def pending(self) -> int:
        return self._pending

    @contextmanager
    def expecting(self) -> Iterator[Callable[[np.ndarray], Future]]:
        """expect() on entry; yields the submit of this request (which counts it as arrived as
        its faces are queued); arrived() on exit if it never submitted, however the block ends."""
        self.expect()
        submitted = False

        def submit(crops: np.ndarray) -> Future:
            nonlocal submitted
            submitted = True  # submit(arrived=True) counts it down, even when it refuses
            return self.submit(crops, arrived=True)

        try:
            yield submit
        finally:
            if not submitted:
                self.arrived()

    def close(self, timeout: float = 30.0) -> None:
        """Finish the queued items, then stop the worker thread (waiting at most `timeout` s)."""
        if not self._closed:
            self._closed = True
            self._queue.put(None)
            self._thread.join(timeout=timeout)

    # ------------------------------------------------------------------ worker thread

    def _collect(self, first: _Item) -> tuple[list[_Item], _Item | None, bool]:
        """(the batch opened by `first`, an item that did not fit, whether close was asked)."""
        items, n = [first], len(first.crops)
        deadline = time.monotonic() + self.max_wait_s
        while n < self.max_batch:
            try:  # queued items are taken without waiting
                nxt = self._queue.get_nowait()
            except queue.Empty:  # then wait, up to the deadline, only while some are pending
                remaining = deadline - time.monotonic()
                if remaining <= 0 or self._pending <= 0:
                    break
                try:
                    nxt = self._queue.get(timeout=min(remaining, PENDING_POLL_S))
                except queue.Empty:
                    continue
            if nxt is None:
                return items, None, True
            if n + len(nxt.crops) > self.max_batch:
                return items, nxt, False
            items.append(nxt)
            n += len(nxt.crops)
        return items, None, False

    def _run(self) -> None:
        carry: _Item | None = None
        stop = False
        while True:
            first = carry if carry is not None else (None if stop else self._queue.get())
            if first is None:
                return
            items, carry, asked = self._collect(first)
            stop = stop or asked
            self._classify(items)
            if stop and carry is None:
                return

    def _classify(self, items: list[_Item]) -> None:
        began = time.monotonic()
        with self._waiting_lock:
            self.waiting_faces -= sum(len(it.crops) for it in items)
        live = [it for it in items if it.future.set_running_or_notify_cancel()]
        if not live:
            return
        crops = np.concatenate([it.crops for it in live]) if len(live) > 1 else live[0].crops
        try:
            probs = self.classify(crops)
        except BaseException as exc:  # every caller of this batch hears about it
            for it in live:
                it.future.set_exception(exc)
            return
        self.stats.batches += 1
        self.stats.faces += len(crops)
        self.stats.largest = max(self.stats.largest, len(crops))
        if self.on_batch is not None:
            self.on_batch(len(crops), [began - it.queued for it in live], time.monotonic() - began)
        start = 0
        for it in live:
            it.future.set_result(probs[start:start + len(it.crops)])
            start += len(it.crops)
