"""Dynamic batching: requests that arrive together share one forward pass."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from kiln.embeddings._batcher import Batcher
from kiln.embeddings._encoder import Encoder
from kiln.embeddings._models import resolve


class Gated:
    """The real encoder, whose first forward pass waits for the test to open the gate."""

    def __init__(self, encoder: Encoder) -> None:
        self.inner = encoder
        self.dim, self.max_length = encoder.dim, encoder.max_length
        self.gate = threading.Event()
        self.entered = threading.Event()
        self.calls: list[int] = []

    def lengths(self, texts):
        return self.inner.lengths(texts)

    def encode(self, texts, batch_size=32):
        if not self.calls:
            self.entered.set()
            self.gate.wait(30)
        self.calls.append(len(texts))
        return self.inner.encode(texts, batch_size)


@pytest.fixture(scope="module")
def encoder():
    return Encoder(resolve("default"), "cpu")


def run_queued(batcher: Batcher, gated: Gated, requests: list[list[str]]):
    """One request holds the device; ``requests`` queue behind it; then the gate opens."""
    results: dict[int, object] = {}
    first = threading.Thread(target=lambda: results.__setitem__(-1, batcher.encode(gated, ["first"])))
    first.start()
    assert gated.entered.wait(30)
    threads = [threading.Thread(target=lambda i=i, r=r: results.__setitem__(i, batcher.encode(gated, r)))
               for i, r in enumerate(requests)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 30
    while batcher.depth() < len(requests) and time.monotonic() < deadline:
        time.sleep(0.005)
    assert batcher.depth() == len(requests)
    gated.gate.set()
    for t in [first, *threads]:
        t.join(30)
    return results


def test_requests_waiting_together_run_as_one_batch(encoder):
    batcher = Batcher(token_budget=8192)
    gated = Gated(encoder)
    requests = [[f"request {i} text {j}" for j in range(i % 3 + 1)] for i in range(8)]
    results = run_queued(batcher, gated, requests)
    assert batcher.batches == 2 and batcher.merged_batches == 1
    assert batcher.max_requests_per_batch == 8
    assert gated.calls == [1, sum(len(r) for r in requests)]
    for i, texts in enumerate(requests):
        alone = encoder.encode(texts)
        got = results[i].vectors
        cos = (alone * got).sum(1) / np.linalg.norm(alone, axis=1) / np.linalg.norm(got, axis=1)
        assert cos.min() >= 0.9999


def test_a_batch_stays_within_the_token_budget(encoder):
    # "hello world" is 4 tokens with [CLS] and [SEP]: a budget of 16 holds 4 of them.
    batcher = Batcher(token_budget=16)
    gated = Gated(encoder)
    run_queued(batcher, gated, [["hello world"]] * 8)
    assert gated.calls == [1, 4, 4]
    assert batcher.batches == 3


def test_truncation_is_counted_and_reported(encoder):
    batcher = Batcher()
    out = batcher.encode(encoder, ["short", "word " * 1000])
    assert out.truncated == [False, True]
    assert out.tokens[1] == encoder.max_length and out.tokens[0] == 3
    assert batcher.truncated == 1


def test_an_error_reaches_every_request_of_its_batch(encoder):
    class Broken(Gated):
        def encode(self, texts, batch_size=32):
            super().encode(texts, batch_size)
            raise RuntimeError("device fell over")

    batcher = Batcher()
    broken = Broken(encoder)
    broken.gate.set()
    with pytest.raises(RuntimeError, match="device fell over"):
        batcher.encode(broken, ["x"])
    assert batcher.depth() == 0


class Launched:
    """The real encoder, whose first pass is queued at once but finishes only when the test
    opens the gate: a device still running the first batch."""

    def __init__(self, encoder: Encoder) -> None:
        self.inner = encoder
        self.dim, self.max_length = encoder.dim, encoder.max_length
        self.gate = threading.Event()
        self.launches: list[int] = []
        self.first, self.second = threading.Event(), threading.Event()

    def tokenize(self, texts):
        return self.inner.tokenize(texts)

    def launch(self, tokens):
        wait = self.inner.launch(tokens)
        self.launches.append(len(tokens))
        if len(self.launches) == 1:
            self.first.set()
            return lambda: (self.gate.wait(30), wait())[1]
        self.second.set()
        return wait


def test_the_next_batch_is_launched_while_the_last_one_runs(encoder):
    # the lock holder waits for its pass outside the device lock (Encoder.launch)
    batcher = Batcher()
    launched = Launched(encoder)
    results: dict[str, object] = {}
    first = threading.Thread(target=lambda: results.__setitem__("a", batcher.encode(launched, ["a", "b"])))
    first.start()
    assert launched.first.wait(30)
    second = threading.Thread(target=lambda: results.__setitem__("c", batcher.encode(launched, ["c"])))
    second.start()
    assert launched.second.wait(30), "the second batch waited for the first one's pass"
    second.join(30)
    assert "c" in results and "a" not in results
    launched.gate.set()
    first.join(30)
    assert launched.launches == [2, 1] and batcher.batches == 2 and batcher.texts == 3
    for key, texts in (("a", ["a", "b"]), ("c", ["c"])):
        np.testing.assert_allclose(results[key].vectors, encoder.encode(texts), atol=1e-5)
    # one stretch with a pass in flight, however the passes overlapped
    assert 0 < batcher.busy_s and batcher.longest_pass_ms / 1000 <= batcher.busy_s + 1e-6
