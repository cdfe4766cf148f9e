"""A sentence-transformers model of the common shape, run without importing sentence-transformers.

Importing sentence-transformers takes ~4.7 of the ~7 s an idle 2-core machine spends on imports
before an agent's first embedding (it pulls scikit-learn, scipy and pandas in through its training
and evaluation code), and an agent that Ray restarts pays it again before it serves: that is
most of a gateway's recovery time after an agent dies (issue 12).

A directory whose ``modules.json`` is exactly Transformer -> Pooling (mean or CLS) -> Normalize
(optional), with no prompts, no truncated dimension and no lower-casing, is the shape of
all-MiniLM-L6-v2, all-mpnet-base-v2 and most sentence-transformers models: it is run here with
transformers' ``AutoModel`` and sentence-transformers' own pooling arithmetic. Any other
directory (``lean_model`` returns ``None``) loads through sentence-transformers as before.
``tests/test_embed_models.py`` checks that both give the same token ids and vectors.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

_TRANSFORMER = "sentence_transformers.models.Transformer"
_POOLING = "sentence_transformers.models.Pooling"
_NORMALIZE = "sentence_transformers.models.Normalize"
_MODES = {"pooling_mode_mean_tokens": "mean", "pooling_mode_cls_token": "cls"}
_OTHER_MODES = ("pooling_mode_max_tokens", "pooling_mode_mean_sqrt_len_tokens",
                "pooling_mode_weightedmean_tokens", "pooling_mode_lasttoken")


def _read(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text()) if path.is_file() else {}


def lean_plan(path: str) -> tuple[str, bool, int | None] | None:
    """(pooling mode, normalize, max_seq_length) when ``path`` has the common shape, else None."""
    root = Path(path)
    try:
        modules = json.loads((root / "modules.json").read_text())
        types = [m["type"] for m in modules]
        if types not in ([_TRANSFORMER, _POOLING], [_TRANSFORMER, _POOLING, _NORMALIZE]):
            return None
        if modules[0].get("path", "") != "":
            return None
        bert = _read(root / "sentence_bert_config.json")
        if bert.get("do_lower_case") or set(bert) - {"max_seq_length", "do_lower_case"}:
            return None
        pooling = _read(root / modules[1]["path"] / "config.json")
        st = _read(root / "config_sentence_transformers.json")
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if any(st.get(k) for k in ("prompts", "default_prompt_name", "truncate_dim")):
        return None
    modes = [mode for key, mode in _MODES.items() if pooling.get(key)]
    if len(modes) != 1 or any(pooling.get(k) for k in _OTHER_MODES) \
            or pooling.get("include_prompt") is False:
        return None
    return modes[0], len(types) == 3, bert.get("max_seq_length")


class LeanSentenceModel(torch.nn.Module):
    """What ``Encoder`` uses of a ``SentenceTransformer``: ``tokenizer``, ``max_seq_length``,
    ``preprocess``, a forward pass giving ``sentence_embedding``, ``encode`` and the dimension."""

    def __init__(self, path: str, mode: str, normalize: bool, max_seq_length: int | None,
                 device: str) -> None:
        from transformers import AutoModel, AutoTokenizer

        super().__init__()
        self.auto_model = AutoModel.from_pretrained(path, local_files_only=True)
        self.tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        limit = min(self.tokenizer.model_max_length,
                    getattr(self.auto_model.config, "max_position_embeddings", 10**9))
        self.max_seq_length = int(max_seq_length or limit)
        self.mode, self.normalize = mode, normalize
        self.to(device)

    @property
    def device(self) -> torch.device:
        return next(self.auto_model.parameters()).device

    def preprocess(self, texts: list[str]) -> dict[str, Any]:
        return dict(self.tokenizer(list(texts), padding=True, truncation="longest_first",
                                   max_length=self.max_seq_length, return_tensors="pt"))

    def forward(self, features: dict[str, Any]) -> dict[str, Any]:
        inputs = {k: features[k] for k in ("input_ids", "attention_mask", "token_type_ids")
                  if k in features}
        tokens = self.auto_model(**inputs, return_dict=True)[0]
        mask = features["attention_mask"]
        if self.mode == "cls":
            first = mask.to(torch.int).argmax(dim=1)
            pooled = tokens[torch.arange(tokens.shape[0], device=tokens.device), first]
        else:  # sentence-transformers' mean: summed in float32 for half precision
            acc = torch.float32 if tokens.dtype in (torch.float16, torch.bfloat16) else tokens.dtype
            weights = mask.unsqueeze(-1).to(tokens.dtype)
            total = (tokens * weights).sum(dim=1, dtype=acc)
            count = torch.clamp(weights.sum(dim=1, dtype=acc), min=1e-9)
            pooled = (total / count).to(tokens.dtype)
        if self.normalize:
            pooled = torch.nn.functional.normalize(pooled, p=2, dim=-1)
        return {"token_embeddings": tokens, "sentence_embedding": pooled}

    def get_embedding_dimension(self) -> int:
        return int(self.auto_model.config.hidden_size)

    def encode(self, texts: list[str], batch_size: int = 32, **_: Any) -> np.ndarray:
        """float32 (n, dim), in batches of ``batch_size`` texts."""
        parts = []
        with torch.inference_mode():
            for start in range(0, len(texts), batch_size):
                batch = self.preprocess(texts[start:start + batch_size])
                batch = {k: v.to(self.device) for k, v in batch.items()}
                parts.append(self(batch)["sentence_embedding"].float().cpu().numpy())
        if not parts:
            return np.zeros((0, self.get_embedding_dimension()), np.float32)
        return np.concatenate(parts)


def lean_model(path: str, device: str) -> LeanSentenceModel | None:
    """The model at ``path`` run without sentence-transformers, or None if it is not of the
    common shape."""
    plan = lean_plan(path)
    if plan is None:
        return None
    return LeanSentenceModel(path, *plan, device=device)
