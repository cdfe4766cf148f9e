"""Dynamic batching: encode requests that arrive together run as one forward pass.

Several ``encode`` ops run at once in the agent's thread pool. Each puts its texts on a queue
and then takes the device lock; whoever holds the lock drains the queue, oldest first, into
one batch of at most ``token_budget`` padded tokens (texts x longest text) and queues its pass
on the device (``Encoder.launch``); it then lets the lock go and waits for the pass outside it,
so the next holder prepares and queues the next batch while the device runs this one. Requests
that arrived meanwhile are merged into the next batch, so under load the device sees few large
batches instead of many small ones, and an idle agent adds no wait at all (``max_wait_s`` can
trade a little latency for bigger batches on a GPU).

No thread of its own: the callers' threads take turns doing the work ("flat combining").
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np

from kiln.embeddings._encoder import Encoder
from kiln.embeddings._tokens import Tokens
from kiln.errors import CancelledError


def _never() -> bool:
    return False


class Encoded(NamedTuple):
    """The result for one request, in its input order."""

    vectors: np.ndarray      # float32 (n, dim)
    tokens: list[int]        # tokens per text after truncation
    truncated: list[bool]    # whether each text was cut at the model's max length


@dataclass
class _Item:
    encoder: Encoder
    texts: list[str]
    lengths: list[int]
    tokens: Tokens | None = None
    cancelled: Callable[[], bool] = _never
    done: threading.Event = field(default_factory=threading.Event)
    result: np.ndarray | None = None
    error: BaseException | None = None


class Batcher:
    """Merges concurrent ``encode`` calls for one device; see the module docstring."""

    def __init__(self, token_budget: int = 16_384, max_wait_s: float = 0.0) -> None:
        if token_budget < 1:
            raise ValueError("token_budget must be >= 1")
        self.token_budget = token_budget
        self.max_wait_s = max_wait_s
        self._queue: deque[_Item] = deque()
        self._queue_lock = threading.Lock()
        self._device = threading.Lock()
        self.batches = 0            # forward passes run
        self.requests = 0           # requests served
        self.merged_batches = 0     # batches that served more than one request
        self.max_requests_per_batch = 0
        self.texts = 0
        self.truncated = 0
        self.dropped = 0            # requests cancelled by their caller before their pass ran
        # Seconds with a pass in flight: over a window, busy_s / window is how much of the time
        # the device had work; the rest it waited for callers to feed it.
        self.busy_s = 0.0
        self.longest_pass_ms = 0.0
        self._in_flight = 0
        self._busy_since = 0.0

    def encode(self, encoder: Encoder, texts: list[str],
               cancelled: Callable[[], bool] = _never) -> Encoded:
        """Encode ``texts`` with ``encoder``, batched with whatever else is waiting.

        ``cancelled`` is the caller's flag: a request whose caller gave up (timeout, a retry
        elsewhere) is dropped before its pass runs and raises ``CancelledError``.
        """
        if not texts:
            return Encoded(np.zeros((0, encoder.dim), np.float32), [], [])
        item, cut = _prepare(encoder, texts)
        item.cancelled = cancelled
        with self._queue_lock:
            self._queue.append(item)
        while not item.done.is_set():
            with self._device:
                if item.done.is_set():
                    break
                batch = self._take()
                finish = self._launch(batch) if batch else None
            if finish is not None:
                finish()  # outside the device lock: the next batch is queued meanwhile
            elif not batch:
                item.done.wait()  # another caller launched it, and finishes it
        if item.error is not None:
            raise item.error
        with self._queue_lock:
            self.truncated += sum(cut)
        return Encoded(item.result, item.lengths, cut)

    def depth(self) -> int:
        """Requests waiting for the device."""
        return len(self._queue)

    def stats(self) -> dict[str, float]:
        return {"batches": self.batches, "requests": self.requests,
                "merged_batches": self.merged_batches,
                "max_requests_per_batch": self.max_requests_per_batch,
                "texts": self.texts, "truncated": self.truncated, "waiting": self.depth(),
                "dropped": self.dropped, "busy_s": round(self.busy_s, 4),
                "longest_pass_ms": round(self.longest_pass_ms, 2),
                "token_budget": self.token_budget}

    # -- inside the device lock ------------------------------------------------------------
    def _take(self) -> list[_Item]:
        batch = self._take_fitting([])
        if self.max_wait_s > 0 and batch and self._cost(batch) < self.token_budget:
            time.sleep(self.max_wait_s)
            batch = self._take_fitting(batch)
        return batch

    def _take_fitting(self, batch: list[_Item]) -> list[_Item]:
        with self._queue_lock:
            keep: deque[_Item] = deque()
            while self._queue:
                item = self._queue.popleft()
                if item.cancelled():
                    item.error = CancelledError("the request was cancelled before its pass ran")
                    item.done.set()
                    self.dropped += 1
                    continue
                if not batch:
                    batch.append(item)  # the oldest always runs, even when alone it is over budget
                elif item.encoder is batch[0].encoder and self._cost(batch + [item]) <= self.token_budget:
                    batch.append(item)
                else:
                    keep.append(item)
            self._queue.extendleft(reversed(keep))
        return batch

    @staticmethod
    def _cost(batch: list[_Item]) -> int:
        n = sum(len(i.texts) for i in batch)
        longest = max((max(i.lengths) for i in batch), default=0)
        return n * max(longest, 1)

    def _launch(self, batch: list[_Item]) -> Callable[[], None] | None:
        """Queue ``batch``'s pass on the device (under the device lock); the function returned
        waits for it and hands each request its rows (outside the lock). None when the launch
        itself failed: every request of the batch has its error already."""
        encoder = batch[0].encoder
        tokens = [item.tokens for item in batch]
        began = self._busy(+1)
        try:
            if all(t is not None for t in tokens):
                wait = encoder.launch(Tokens.concat(tokens))
            else:
                texts = [t for item in batch for t in item.texts]
                longest = max(max(i.lengths) for i in batch)
                done = encoder.encode(texts, batch_size=max(1, self.token_budget // max(longest, 1)))
                wait = lambda: done  # noqa: E731 - an encoder without tokens runs synchronously
        except BaseException as err:  # noqa: BLE001 - not hidden: each text's caller gets it
            self._busy(-1, began)
            _fail(batch, err)
            return None

        def finish() -> None:
            try:
                vectors = wait()
            except BaseException as err:  # noqa: BLE001 - as above
                _fail(batch, err)
                return
            finally:
                self._busy(-1, began)
            start = 0
            for item in batch:
                item.result = vectors[start:start + len(item.texts)]
                start += len(item.texts)
            with self._queue_lock:
                self.batches += 1
                self.requests += len(batch)
                self.merged_batches += len(batch) > 1
                self.max_requests_per_batch = max(self.max_requests_per_batch, len(batch))
                self.texts += start
            for item in batch:
                item.done.set()

        return finish

    def _busy(self, change: int, began: float = 0.0) -> float:
        """Passes in flight up (+1, returns now) or down (-1, after the pass that ``began``):
        ``busy_s`` grows by the time at least one pass was in flight."""
        now = time.perf_counter()
        with self._queue_lock:
            if change > 0 and self._in_flight == 0:
                self._busy_since = now
            self._in_flight += change
            if change < 0:
                self.longest_pass_ms = max(self.longest_pass_ms, (now - began) * 1000)
                if self._in_flight == 0:
                    self.busy_s += now - self._busy_since
        return now


def _fail(batch: list[_Item], err: BaseException) -> None:
    for item in batch:
        item.error = err
        item.done.set()


def _prepare(encoder: Encoder, texts: list[str]) -> tuple[_Item, list[bool]]:
    """The queue item for ``texts`` and which of them get cut, tokenised in the caller's thread,
    outside the device lock. An encoder with ``tokenize`` does it once and the device pass
    reuses its ids; one with only ``lengths`` and ``encode`` tokenises again under the lock."""
    tokenize = getattr(encoder, "tokenize", None)
    if tokenize is not None:
        tokens = tokenize(texts)
        return _Item(encoder, list(texts), tokens.lengths.tolist(), tokens), tokens.truncated.tolist()
    raw = encoder.lengths(texts)
    return (_Item(encoder, list(texts), [min(n, encoder.max_length) for n in raw]),
            [n > encoder.max_length for n in raw])
