"""Every KILN_* variable is declared once, checked, documented, and reaches what it configures."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from kiln._settings import Settings, rows, settings, variable
from kiln.embeddings import _models as models
from kiln.embeddings import _worker as worker
from kiln.errors import SettingsError

ROOT = Path(__file__).resolve().parents[1]
# set by `kiln up`/`kiln join` in the processes they start, never by a user
INTERNAL = {"KILN_CLI_NODE"}


def declared() -> set[str]:
    return {variable(name) for name in Settings.model_fields}


def test_every_kiln_variable_the_code_reads_is_declared_in_the_settings():
    named = set()
    for path in (ROOT / "src" / "kiln").rglob("*.py"):
        named |= set(re.findall(r"\bKILN_[A-Z0-9_]*[A-Z0-9]\b", path.read_text()))
    named -= INTERNAL | {"KILN_FUNCS"}  # kiln.code._ipython's constant, not a variable
    assert named - declared() == set()


def test_every_variable_is_described_and_in_the_docs():
    docs = (ROOT / "docs" / "settings.md").read_text()
    for name, info in Settings.model_fields.items():
        assert info.description, name
        assert f"`{variable(name)}`" in docs, variable(name)


def test_every_model_alias_has_its_variable():
    assert {f"KILN_EMBED_MODEL_{a.upper()}" for a in models.ALIASES} <= declared()


def test_a_value_kiln_cannot_use_fails_naming_its_variable(monkeypatch):
    monkeypatch.setenv("KILN_EMBED_DTYPE", "float8")
    with pytest.raises(SettingsError, match="KILN_EMBED_DTYPE.*'float8'"):
        settings()


def test_a_negative_bound_is_refused(monkeypatch):
    monkeypatch.setenv("KILN_EMBED_CACHE_ENTRIES", "-1")
    with pytest.raises(SettingsError, match="KILN_EMBED_CACHE_ENTRIES"):
        settings()


def test_an_empty_variable_means_unset(monkeypatch):
    monkeypatch.setenv("KILN_EMBED_TOKEN_BUDGET", "")
    monkeypatch.setenv("KILN_GATEWAY_COALESCE", "0")
    s = settings()
    assert s.embed_token_budget is None and s.gateway_coalesce is False


def test_the_doctor_rows_show_what_is_set_here(monkeypatch):
    monkeypatch.setenv("KILN_EMBED_MAX_WAIT_MS", "3")
    by_name = {r[0]: r for r in rows()}
    assert by_name["KILN_EMBED_MAX_WAIT_MS"][1:3] == ("3", "0")
    assert set(by_name) == declared()


def test_an_agent_takes_its_embedding_cache_and_batch_from_its_environment(monkeypatch):
    from kiln._protocol import AgentContext

    monkeypatch.setenv("KILN_EMBED_CACHE_ENTRIES", "7")
    monkeypatch.setenv("KILN_EMBED_CACHE_ADMIT_TEXTS", "5")
    monkeypatch.setenv("KILN_EMBED_TOKEN_BUDGET", "512")
    monkeypatch.setenv("KILN_EMBED_THREADS", "1")
    state = worker.State(AgentContext("kiln-agent:n1:cpu", "n1", "cpu"))
    assert state.cache.max_entries == 7 and state.cache_admit == 5
    assert state.batcher.token_budget == 512


def test_a_model_alias_points_at_the_directory_its_variable_names(monkeypatch, tmp_path):
    (tmp_path / "config.json").write_text("{}")
    monkeypatch.setenv("KILN_EMBED_MODEL_LARGE", str(tmp_path))
    assert models.resolve("large").path == str(tmp_path.resolve())
