"""kiln's ``Encoder`` against raw sentence-transformers, in one process on one device (no Ray).

The agent's hot path without the Ray round trip: bulk texts/s on distinct short texts (~20
tokens) and the p50 latency of one text, for sentence-transformers' own ``encode`` (batch 64,
the peer, and its best batch size) and for kiln's ``Encoder`` in several variants (dtype, TF32,
CUDA graphs, token budget, attention kernel), plus the tokenizer alone and kiln's ``Batcher``
fed 512-text requests from several threads the way an agent is. Printed, and saved as JSON.

    KILN_EMBED_MODEL_DEFAULT=/path/to/minilm python bench/embed_encoder.py --out results.json
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from kiln.embeddings._batcher import Batcher  # noqa: E402
from kiln.embeddings._encoder import Encoder  # noqa: E402
from kiln.embeddings._models import resolve  # noqa: E402


class Texts:
    """Distinct short sentences (about 20 tokens), never the same twice in a run."""

    def __init__(self) -> None:
        self.n = 0

    def take(self, k: int) -> list[str]:
        out = [f"sentence {self.n + i}: a cluster of GPUs answers one API call number {self.n + i}"
               for i in range(k)]
        self.n += k
        return out


def rate(fn, texts: list[str]) -> float:
    start = time.perf_counter()
    fn(texts)
    return round(len(texts) / (time.perf_counter() - start), 1)


def rates(fn, make, repeats: int = 3) -> dict[str, Any]:
    """texts/s of ``fn`` on ``repeats`` fresh inputs from ``make()``: median and all."""
    got = [rate(fn, make()) for _ in range(repeats)]
    return {"median": statistics.median(got), "runs": got}


def long_texts(texts: Texts, k: int, words: int) -> list[str]:
    """Paragraphs of about ``words`` tokens, distinct."""
    return [f"{t} " + "a cluster of GPUs answers one API call. " * (words // 9) for t in texts.take(k)]


def mixed_texts(texts: Texts, k: int) -> list[str]:
    """Lengths spread from ~20 tokens to past the max length, as real corpora are."""
    rng = np.random.default_rng(texts.n)
    return [f"{t} " + "word " * int(w) for t, w in zip(texts.take(k), rng.integers(0, 300, k), strict=True)]


def p50_ms(fn, texts: Texts, calls: int, per_call: int = 1) -> float:
    for _ in range(10):
        fn(texts.take(per_call))
    lat = []
    for _ in range(calls):
        batch = texts.take(per_call)
        t = time.perf_counter()
        fn(batch)
        lat.append(time.perf_counter() - t)
    return round(statistics.median(lat) * 1000, 3)


def cosine_min(a: np.ndarray, b: np.ndarray) -> float:
    return float(((a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)).min())


def check_texts(texts: Texts) -> list[str]:
    """Short, long (cut at the max length) and odd texts, for the equality check."""
    return texts.take(200) + ["", "  spaces  around ", "ÜNÏCÖDÉ çafé 東京 🙂", "word " * 600] + [
        "a cluster of GPUs answers one API call. " * k for k in range(1, 40)]


def raw_st(path: str, device: str, texts: Texts, bulk: int, calls: int, dtype: str | None,
           long: bool) -> dict:
    import torch
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(path, device=device, local_files_only=True)
    if dtype:
        model.to(getattr(torch, dtype))
    model.encode(texts.take(256), batch_size=64)
    out: dict[str, Any] = {"dtype": str(next(model.parameters()).dtype).replace("torch.", "")}
    out["bulk_b64_texts_per_s"] = rate(lambda t: model.encode(t, batch_size=64), texts.take(bulk))
    sweep = {b: rate(lambda t, b=b: model.encode(t, batch_size=b), texts.take(bulk // 2))
             for b in (256, 1024)}
    best = max(sweep, key=sweep.get)
    out.update({f"bulk_b{b}_texts_per_s": v for b, v in sweep.items()})
    out["best_batch"], out["best_texts_per_s"] = best, sweep[best]
    if long:
        out["bulk_long_200tok_b64"] = rate(lambda t: model.encode(t, batch_size=64),
                                           long_texts(texts, bulk // 10, 200))
        out["bulk_mixed_b64"] = rate(lambda t: model.encode(t, batch_size=64), mixed_texts(texts, bulk // 5))
    out["one_text_p50_ms"] = p50_ms(lambda t: model.encode(t, batch_size=64), texts, calls)
    out["64_texts_p50_ms"] = p50_ms(lambda t: model.encode(t, batch_size=64), texts, calls // 4, 64)
    return out


def kiln_variant(spec, device: str, texts: Texts, bulk: int, calls: int, reference: np.ndarray,
                 check: list[str], dtype: str, tf32: bool = False, graph_tokens: int | None = None,
                 token_budget: int = 65_536, attn: str | None = None,
                 tokenizers_parallelism: str = "false") -> dict:
    import torch

    os.environ["TOKENIZERS_PARALLELISM"] = tokenizers_parallelism

    torch.backends.cuda.matmul.allow_tf32 = tf32
    torch.backends.cudnn.allow_tf32 = tf32
    enc = Encoder(spec, device, dtype, token_budget=token_budget, graph_tokens=graph_tokens)
    inner = enc.model[0].auto_model
    previous = inner.config._attn_implementation
    if attn:
        inner.set_attn_implementation(attn)
    try:
        enc.encode(texts.take(bulk // 10))  # capture the graphs the bulk run needs
        enc.encode(mixed_texts(texts, 2000))
        out: dict[str, Any] = {"attn": inner.config._attn_implementation,
                               "cosine_min_vs_st_fp32": round(cosine_min(enc.encode(check), reference), 6)}
        out["bulk"] = rates(enc.encode, lambda: texts.take(bulk))
        out["bulk_long_200tok"] = rates(enc.encode, lambda: long_texts(texts, bulk // 10, 200))
        out["bulk_mixed"] = rates(enc.encode, lambda: mixed_texts(texts, bulk // 5))
        tokens = enc.tokenize(texts.take(bulk))
        start = time.perf_counter()
        enc.encode_tokens(tokens)
        out["forward_only_texts_per_s"] = round(bulk / (time.perf_counter() - start), 1)
        out["one_text_p50_ms"] = p50_ms(enc.encode, texts, calls)
        out["64_texts_p50_ms"] = p50_ms(enc.encode, texts, calls // 4, 64)
        out["512_texts_p50_ms"] = p50_ms(enc.encode, texts, calls // 10, 512)
        batcher = Batcher(token_budget=token_budget)
        out["one_text_batcher_p50_ms"] = p50_ms(lambda t: batcher.encode(enc, t), texts, calls)
        for threads in (16, 64):
            out[f"batcher_{threads}_threads_512"] = rates(
                lambda t, n=threads: threaded(batcher, enc, t, n, 512), lambda: texts.take(bulk), 2)
        d = enc.describe()
        out["cuda_graphs"], out["cuda_graph_error"] = d["cuda_graphs"], d["cuda_graph_error"][:300]
    finally:
        if attn:
            inner.set_attn_implementation(previous)
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
        os.environ["TOKENIZERS_PARALLELISM"] = "false"
    return out


def chunked(texts: list[str], size: int) -> list[list[str]]:
    return [texts[i:i + size] for i in range(0, len(texts), size)]


def threaded(batcher: Batcher, enc: Encoder, texts: list[str], threads: int, chunk: int) -> None:
    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(lambda c: batcher.encode(enc, c), chunked(texts, chunk)))


def tokenizer_rates(enc: Encoder, texts: Texts, bulk: int) -> dict:
    """The fast tokenizer alone: one call of ``bulk`` texts, and 512-text calls from threads,
    with the Rust tokenizer's own parallelism on and off (the agent turns it on)."""
    out = {}
    for parallel in ("true", "false"):
        os.environ["TOKENIZERS_PARALLELISM"] = parallel
        out[f"parallel_{parallel}_one_call"] = rate(enc.tokenize, texts.take(bulk))
        for threads in (1, 16, 64):
            with ThreadPoolExecutor(threads) as pool:
                out[f"parallel_{parallel}_512s_{threads}_threads"] = rate(
                    lambda t, pool=pool: list(pool.map(enc.tokenize, chunked(t, 512))), texts.take(bulk))
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    return out


def machine(device: str) -> dict:
    import sentence_transformers
    import torch
    import transformers

    info = {"platform": platform.platform(), "cpus": os.cpu_count(), "device": device,
            "torch": torch.__version__, "transformers": transformers.__version__,
            "sentence_transformers": sentence_transformers.__version__,
            "python": platform.python_version()}
    if device.startswith("cuda"):
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="default")
    parser.add_argument("--bulk", type=int, default=50_000)
    parser.add_argument("--calls", type=int, default=200)
    parser.add_argument("--variants", default="all", help="comma-separated names, or all")
    parser.add_argument("--default", default="fp16_sdpa_graphs", help="the variant Encoder() is")
    parser.add_argument("--out", default=str(REPO / "bench" / "results" / "embed-encoder.json"))
    args = parser.parse_args()
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # each variant sets its own
    import torch
    from sentence_transformers import SentenceTransformer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()

    device = "cuda" if torch.cuda.is_available() else "cpu"
    spec = resolve(args.model)
    texts = Texts()
    check = check_texts(texts)
    ref_model = SentenceTransformer(spec.path, device=device, local_files_only=True).to(torch.float32)
    reference = ref_model.encode(check, batch_size=64)
    del ref_model
    results: dict[str, Any] = {}
    print(f"model {spec.path} on {device}", flush=True)
    for name, dtype in (("raw_as_loaded", None), ("raw_fp32", "float32")):
        results[name] = raw_st(spec.path, device, texts, args.bulk, args.calls, dtype, dtype is None)
        print(name, results[name], flush=True)
    gpu = device.startswith("cuda")
    variants = {
        "fp16_sdpa_graphs": dict(dtype="float16"),
        "fp16_sdpa_graphs_rayon": dict(dtype="float16", tokenizers_parallelism="true"),
        "fp16_sdpa_graphs8k": dict(dtype="float16", graph_tokens=8192),
        "fp16_sdpa_nographs": dict(dtype="float16", graph_tokens=0),
        "fp16_eagerattn_nographs": dict(dtype="float16", graph_tokens=0, attn="eager"),
        "bf16_sdpa_graphs": dict(dtype="bfloat16"),
        "fp32_sdpa_graphs": dict(dtype="float32"),
        "tf32_sdpa_graphs": dict(dtype="float32", tf32=True),
    } if gpu else {"fp32": dict(dtype="float32", token_budget=2048)}
    wanted = set(variants) if args.variants == "all" else set(args.variants.split(","))
    for name, kw in variants.items():
        if name not in wanted:
            continue
        try:
            results[f"kiln_{name}"] = kiln_variant(spec, device, texts, args.bulk, args.calls,
                                                   reference, check, **kw)
        except Exception as err:  # one variant failing must not lose the others' figures
            results[f"kiln_{name}"] = {"error": f"{type(err).__name__}: {err}"[:500]}
        print(name, results[f"kiln_{name}"], flush=True)
    enc = Encoder(spec, device)
    results["tokenizer"] = tokenizer_rates(enc, texts, args.bulk)
    print("tokenizer", results["tokenizer"], flush=True)
    results["default_encoder"] = enc.describe()
    peer = results["raw_as_loaded"]
    kiln = {k: v for k, v in results.items() if k.startswith("kiln_") and "error" not in v}
    bulk_of = lambda k: kiln[k]["bulk"]["median"]  # noqa: E731
    agent_of = lambda k: max(kiln[k]["batcher_16_threads_512"]["median"],  # noqa: E731
                             kiln[k]["batcher_64_threads_512"]["median"])
    best_bulk = max(kiln, key=bulk_of)
    best_agent = max(kiln, key=agent_of)
    best_p50 = min(kiln, key=lambda k: kiln[k]["one_text_p50_ms"])
    ratios = {
        "peer": "raw sentence-transformers as loaded (fp16 weights), batch 64",
        "raw_b64_texts_per_s": peer["bulk_b64_texts_per_s"],
        "raw_best_texts_per_s": peer["best_texts_per_s"],
        "raw_one_text_p50_ms": peer["one_text_p50_ms"],
        "best_kiln_bulk_variant": best_bulk,
        "kiln_bulk_texts_per_s": bulk_of(best_bulk),
        "kiln_bulk_vs_raw_b64": round(bulk_of(best_bulk) / peer["bulk_b64_texts_per_s"], 2),
        "kiln_bulk_vs_raw_best": round(bulk_of(best_bulk) / peer["best_texts_per_s"], 2),
        "best_kiln_batcher_variant": best_agent,
        "kiln_batcher_texts_per_s": agent_of(best_agent),
        "kiln_batcher_vs_raw_b64": round(agent_of(best_agent) / peer["bulk_b64_texts_per_s"], 2),
        "best_kiln_p50_variant": best_p50,
        "kiln_one_text_p50_ms": kiln[best_p50]["one_text_p50_ms"],
    }
    default = f"kiln_{args.default}"
    if default in kiln:
        ratios["default_variant"] = default
        ratios["default_bulk_vs_raw_b64"] = round(bulk_of(default) / peer["bulk_b64_texts_per_s"], 2)
        ratios["default_batcher_vs_raw_b64"] = round(agent_of(default) / peer["bulk_b64_texts_per_s"], 2)
        ratios["default_one_text_p50_ms"] = kiln[default]["one_text_p50_ms"]
    report = {"benchmark": "embed_encoder", "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
              "machine": machine(device), "model": spec.path, "args": vars(args),
              "results": results, "ratios": ratios}
    print(json.dumps(ratios, indent=2))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    print("wrote", args.out)


if __name__ == "__main__":
    main()
