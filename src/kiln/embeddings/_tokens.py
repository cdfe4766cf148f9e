"""Texts tokenised once: the token counts the batcher merges by and the ids a pass runs.

sentence-transformers tokenises again in every ``encode``, through a tokenizer that every
thread shares and reconfigures. Here one batched call of the model's Rust tokenizer (private
copies) serves both counting and encoding; ``fast_path`` takes it only where it gives exactly
sentence-transformers' own features, and any other model keeps sentence-transformers' path.
"""

from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from itertools import chain
from typing import Any

import numpy as np


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


class TextTokenizer:
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
_pool_lock = threading.Lock()


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
    with _pool_lock:
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


def fast_path(model: Any, max_length: int) -> tuple[TextTokenizer | None, tuple[str, ...], dict, str]:
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
        text = TextTokenizer(hf_tokenizer, max_length)
        tokens = text(probe)
        offsets = np.concatenate(([0], np.cumsum(tokens.lengths)[:-1]))
        rows = np.arange(len(probe))
        got = text.pad(tokens, rows, offsets, tuple(want["input_ids"].shape), names)
    except Exception as err:  # noqa: BLE001 - any surprise in a tokenizer's internals keeps the
        # slow, sure path; the reason is returned and the encoder reports it
        return None, (), {}, f"{type(err).__name__}: {err}"
    for k, name in enumerate(names):
        if not np.array_equal(got[k], want[name].cpu().numpy()):
            return None, (), {}, f"its {name} differ from sentence-transformers' own"
    return text, names, extras, ""
