"""An encoder's forward pass replayed from CUDA graphs instead of launched kernel by kernel.

Only a GPU runs this part of the encode path, and it is the part a model may not suit: a pass
that cannot be captured leaves the encoder running eagerly, as it does on a CPU.
"""

from __future__ import annotations

from typing import Any

import numpy as np

# Rows pad up to the next of 1, 2, 3, 4, 6, 8, 12, ... 8192 (powers of two and the points
# halfway between): at most a third of a pass is padding, and every pass of up to 8k texts maps
# to one of 26 row counts, all captured ahead for short texts. Rows were once unpadded: each
# new count of texts in a pass (1 to 256 under load) was a graph captured in requests' time
# under the encode lock, tens of ms each, for the first ~40 s of a fresh agent's load and at
# random later (p99 250-450 ms at 256 clients on an H100, py-spy: 43% of the agent in capture).
_ROW_BUCKETS = tuple(sorted({2**k for k in range(14)} | {3 * 2**k for k in range(12)}))
# Steps of at most ~1/4 above 32 tokens: long texts pad by a few percent, not by half.
_WIDTH_BUCKETS = (8, 16, 24, 32, 40, 48, 56, 64, 80, 96, 112, 128, 160, 192, 224, 256, 320, 384,
                  448, 512)
# Captured ahead: every pass of texts up to this many tokens. Captured on first use instead, in
# requests' time, they cost a 4 s window at 64 clients on an H100 56% of the agent's time
# (bench/results/embed-h100-w4.json, py-spy) and its p99 (295 ms).
_WARM_WIDTH = 128


def _bucket(n: int, buckets: tuple[int, ...], cap: int) -> int:
    return min(next((b for b in buckets if b >= n), cap), cap)


class CudaGraphs:
    """The forward pass replayed from CUDA graphs, one per padded shape.

    Launched one at a time from Python, MiniLM's ~100 kernels cost ~3 ms for one text on an
    H200, replayed from a graph ~0.5 ms. Large passes gain too: run eagerly, transformers checks
    on the host whether the batch has padding (a device sync per pass, the GIL held meanwhile),
    which stalled the agent's tokenising threads: 8k graphed tokens a pass gave 39k texts/s
    through the batcher, graphing every pass 90-100k. Shapes are bucketed (rows to a power of
    two, width to a few steps) so a few graphs serve every batch. ``Encoder`` captures the
    ``common_shapes`` in the background once the model loads; any other shape is captured the
    first time it is needed (tens of ms, in that request's time).
    """

    def __init__(self, run: Any, device: str, max_tokens: int, max_width: int, names: tuple[str, ...]):
        self._run = run
        self.device = device
        self.max_tokens = max_tokens
        self.max_width = max_width
        self.names = names
        self._graphs: dict[tuple[int, int], tuple[Any, Any, Any]] = {}
        self._pool: Any = None
        self._inputs: Any = None  # one buffer under every graph's inputs: replays never overlap
        self.error = ""

    def shape(self, rows: int, width: int) -> tuple[int, int] | None:
        """The padded shape that serves ``rows`` texts of ``width`` tokens, or None: eager."""
        if self.error:
            return None
        # past the largest bucket, the rows as they are (a graph of its own, captured then)
        shape = (next((b for b in _ROW_BUCKETS if b >= rows), rows), self.width(width))
        return shape if shape[0] * shape[1] <= self.max_tokens else None

    @staticmethod
    def whole_rows(rows: int) -> int:
        """The most rows up to ``rows`` that fill a row bucket: no padded rows in the pass."""
        return max(b for b in _ROW_BUCKETS if b <= max(rows, 1))

    def width(self, width: int) -> int:
        """The padded width that serves texts of ``width`` tokens."""
        return _bucket(width, _WIDTH_BUCKETS, self.max_width)

    def __len__(self) -> int:
        return len(self._graphs)

    def run(self, block: np.ndarray) -> Any | None:
        """Sentence embeddings of the padded ``block`` (a view of the graph's output: copy it
        before the next call), or None when graphs failed and eager must do it."""
        import torch

        shape = (int(block.shape[1]), int(block.shape[2]))
        if not self.prepare(shape):
            return None
        graph, static, out = self._graphs[shape]
        static.copy_(torch.from_numpy(block))
        graph.replay()
        return out

    def common_shapes(self) -> list[tuple[int, int]]:
        """The shapes worth capturing ahead, smallest passes (one-text requests) first."""
        widths = [w for w in _WIDTH_BUCKETS if w <= min(_WARM_WIDTH, self.max_width)]
        shapes = [(r, w) for r in _ROW_BUCKETS for w in widths if r * w <= self.max_tokens]
        return sorted(shapes, key=lambda s: (s[0] * s[1], s))

    def prepare(self, shape: tuple[int, int]) -> bool:
        """Capture ``shape`` unless it is; False when graphs failed (the encoder runs eagerly).
        The caller holds the encoder's lock: captures and replays never overlap."""
        if shape not in self._graphs and not self.error:
            try:
                self._graphs[shape] = self._capture(shape)
            except Exception as err:  # noqa: BLE001 - a model whose forward cannot be captured
                # runs eagerly; the reason is kept and reported (cuda_graph_error)
                self.error = f"{type(err).__name__}: {err}"
        return not self.error

    def _capture(self, shape: tuple[int, int]) -> tuple[Any, Any, Any]:
        import torch

        if self._inputs is None:
            self._inputs = torch.zeros(len(self.names) * self.max_tokens, dtype=torch.int64,
                                       device=self.device)
        static = self._inputs[:len(self.names) * shape[0] * shape[1]].view(len(self.names), *shape)
        static.zero_()
        static[self.names.index("attention_mask")] = 1
        side = torch.cuda.Stream(self.device)
        side.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(side):
            for _ in range(2):  # warm up kernels' workspaces outside the capture
                self._run(static)
        torch.cuda.current_stream(self.device).wait_stream(side)
        if self._pool is None:
            self._pool = torch.cuda.graph_pool_handle()
        graph = torch.cuda.CUDAGraph()
        # thread_local: other threads of the agent (another capability on this GPU) may use CUDA
        # while this one captures; global mode would fail them or the capture.
        with torch.cuda.graph(graph, pool=self._pool, capture_error_mode="thread_local"):
            out = self._run(static)
        return graph, static, out
