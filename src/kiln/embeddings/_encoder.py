"""The encode path of an agent: a loaded model run from texts tokenised once.

sentence-transformers' ``encode`` tokenises each call again and pads every batch to its longest
text; the batcher already holds the tokens, so ``Encoder`` runs them in length-sorted passes
through the model's own modules, from CUDA graphs on a GPU (bench/embed_encoder.py measures it
against sentence-transformers).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import numpy as np

from kiln.embeddings._graphs import CudaGraphs
from kiln.embeddings._models import ModelSpec, dimension, dtype_for, load
from kiln.embeddings._tokens import Tokens, fast_path


def pass_rows(left: int, width: int, budget: int, batch_size: int | None,
              graphs: CudaGraphs | None) -> int:
    """How many of the ``left`` texts (the longest ``width`` tokens) the next pass takes: as
    many as ``budget`` padded tokens hold; with graphs, a whole row bucket of them unless the
    rest fit one graph (its padded rows within the budget), so every pass has a graph."""
    if graphs is not None:
        width = graphs.width(width)
    rows = max(1, budget // max(width, 1))
    if batch_size:
        rows = min(rows, batch_size)
    if graphs is not None and (rows < left or graphs.shape(left, width) is None):
        rows = graphs.whole_rows(rows)
    return min(rows, left)


class Encoder:
    """A loaded model as the batcher sees it: ``tokenize`` once, then ``encode_tokens``.

    The texts of a call are tokenised in one batched call of the fast tokenizer, sorted by
    length, split into forward passes of at most ``token_budget`` padded tokens each padded only
    to its own longest text, run through the model's modules (so its own pooling and
    normalisation apply) and copied to the host once. ``encode`` does both steps.
    """

    def __init__(self, spec: ModelSpec, device: str = "cpu", dtype: str = "auto", *,
                 token_budget: int | None = None, graph_tokens: int | None = None) -> None:
        self.spec = spec
        self.device = device
        self.dtype = dtype_for(device, dtype)
        self.model = load(spec, device, self.dtype)
        self.dim = dimension(self.model)
        self.max_length = int(self.model.max_seq_length)
        gpu = device.startswith("cuda")
        # A GPU pass over 64k padded tokens of MiniLM takes a few ms (16k passes ran a third
        # slower on an H200); on a CPU passes of ~2k tokens (64 short texts) ran fastest.
        self.token_budget = token_budget or (65_536 if gpu else 2_048)
        self._text, self._names, self._extras, self.slow_reason = fast_path(self.model, self.max_length)
        self._lock = threading.Lock()
        self._graphs = None
        self.graphs_ready = threading.Event()  # the common shapes are captured (or no graphs)
        graph_tokens = self.token_budget if graph_tokens is None else graph_tokens
        if gpu and self._text is not None and graph_tokens > 0:
            self._graphs = CudaGraphs(self._embed, device, graph_tokens, self.max_length, self._names)
            threading.Thread(target=self._capture_ahead, name="kiln-cuda-graphs", daemon=True).start()
        else:
            self.graphs_ready.set()

    def _capture_ahead(self) -> None:
        """Capture the common graph shapes now, one at a time under the encode lock, so that
        requests find them ready (a request between two captures waits for one, tens of ms)."""
        import torch

        assert self._graphs is not None
        try:
            for shape in self._graphs.common_shapes():
                with self._lock, torch.inference_mode():
                    if not self._graphs.prepare(shape):
                        return
        finally:
            self.graphs_ready.set()

    @property
    def name(self) -> str:
        return self.spec.name

    def lengths(self, texts: list[str]) -> list[int]:
        """Tokens per text, special tokens included, before truncation."""
        ids = self.model.tokenizer(texts, add_special_tokens=True, truncation=False, verbose=False,
                                   return_attention_mask=False, return_token_type_ids=False)
        return [len(x) for x in ids["input_ids"]]

    def tokenize(self, texts: list[str]) -> Tokens:
        """``texts`` tokenised once: token counts, truncation flags and (fast path) the ids."""
        if self._text is not None:
            return self._text(list(texts))
        raw = np.asarray(self.lengths(texts), dtype=np.int64).reshape(len(texts))
        return Tokens(list(texts), np.minimum(raw, self.max_length), raw > self.max_length)

    def encode(self, texts: list[str], batch_size: int | None = None) -> np.ndarray:
        """float32 (n, dim); inputs longer than ``max_length`` tokens are cut by the tokenizer."""
        return self.encode_tokens(self.tokenize(texts), batch_size=batch_size)

    def encode_tokens(self, tokens: Tokens, batch_size: int | None = None,
                      token_budget: int | None = None) -> np.ndarray:
        """float32 (n, dim) for ``tokens``, in their order: forward passes of at most
        ``token_budget`` padded tokens (and ``batch_size`` texts, where given)."""
        return self.launch(tokens, batch_size, token_budget)()

    def launch(self, tokens: Tokens, batch_size: int | None = None,
               token_budget: int | None = None) -> Callable[[], np.ndarray]:
        """``encode_tokens`` in two halves: the passes are queued on the device now, under the
        encoder's lock, and the function returned waits for them and gives the vectors.

        The wait is outside the lock: a GPU runs one caller's passes while the next caller
        pads and queues its own, instead of idling while each caller copies its vectors back
        and the next one prepares (an agent's device was busy 70% of a bulk ``kiln.embed`` on
        an H100). One stream orders it all: the next pass's inputs are written after this
        pass has read them, and this pass's vectors are copied out before the next overwrites
        the graph's output."""
        n, dim = len(tokens), self.dim
        if not n:
            return lambda: np.zeros((0, dim), np.float32)
        if tokens.ids is None or self._text is None:
            slow = self._encode_slow(tokens.texts, batch_size)
            return lambda: slow
        import torch

        budget = token_budget or self.token_budget
        order = np.argsort(-tokens.lengths, kind="stable")
        offsets = np.concatenate(([0], np.cumsum(tokens.lengths)[:-1]))
        ready = None
        with self._lock, torch.inference_mode():
            parts = [self._forward(tokens, rows, offsets)
                     for rows in self._sub_batches(tokens.lengths, order, budget, batch_size)]
            vectors = torch.cat(parts) if len(parts) > 1 else parts[0]
            if vectors.is_cuda:
                host = torch.empty(vectors.shape, dtype=torch.float32, pin_memory=True)
                host.copy_(vectors, non_blocking=True)
                ready = torch.cuda.Event()
                ready.record(torch.cuda.current_stream(vectors.device))
            else:
                host = vectors

        def wait() -> np.ndarray:
            if ready is not None:
                ready.synchronize()
            out = np.empty((n, dim), np.float32)
            out[order] = host.numpy().reshape(n, dim)
            return out

        return wait

    def _sub_batches(self, lengths: np.ndarray, order: np.ndarray, budget: int,
                     batch_size: int | None):
        start = 0
        while start < len(order):
            width = int(lengths[order[start]])  # the longest: ``order`` sorts longest first
            rows = pass_rows(len(order) - start, width, budget, batch_size, self._graphs)
            yield order[start:start + rows]
            start += rows

    def _forward(self, tokens: Tokens, rows: np.ndarray, offsets: np.ndarray) -> Any:
        import torch

        assert self._text is not None
        n, width = len(rows), int(tokens.lengths[rows].max())
        shape = self._graphs.shape(n, width) if self._graphs is not None else None
        if shape is not None:
            block = self._text.pad(tokens, rows, offsets, shape, self._names)
            out = self._graphs.run(block)
            if out is not None:
                return out[:n].to(torch.float32, copy=True)  # the graph overwrites it next call
        block = self._text.pad(tokens, rows, offsets, (n, width), self._names)
        return self._embed(torch.from_numpy(block).to(self.device)).to(torch.float32)

    def _embed(self, block: Any) -> Any:
        features = {name: block[k] for k, name in enumerate(self._names)}
        features.update(self._extras)
        return self.model(features)["sentence_embedding"]

    def _encode_slow(self, texts: list[str], batch_size: int | None) -> np.ndarray:
        out = self.model.encode(texts, batch_size=batch_size or 32, convert_to_numpy=True,
                                show_progress_bar=False)
        return np.asarray(out, dtype=np.float32).reshape(len(texts), self.dim)

    def describe(self) -> dict[str, Any]:
        return {"name": self.spec.name, "repo_id": self.spec.repo_id, "path": self.spec.path,
                "dim": self.dim, "max_length": self.max_length, "device": self.device,
                "dtype": self.dtype, "token_budget": self.token_budget,
                "fast_path": self._text is not None,
                "slow_reason": self.slow_reason,
                "cuda_graphs": len(self._graphs) if self._graphs is not None else 0,
                "cuda_graphs_ready": self.graphs_ready.is_set(),
                "cuda_graph_error": self._graphs.error if self._graphs is not None else ""}
