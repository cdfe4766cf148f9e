"""`kiln up --preload embed`: a node's agents load the default embedding model as they start,
so a gateway's first request after a new head (or a new node) does not wait for it (issue 12)."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

import kiln


def _kiln(*args: str) -> subprocess.CompletedProcess:
    cli = os.path.join(os.path.dirname(sys.executable), "kiln")
    return subprocess.run([cli, *args], capture_output=True, text=True, timeout=120)


def test_preload_is_passed_to_the_nodes_agents_and_checked_first():
    r = _kiln("up", "--port", "6390", "--name", "head1", "--preload", "embed", "--dry-run")
    assert r.returncode == 0, r.stderr
    assert "KILN_AGENT_PRELOAD=embed" in r.stdout
    r = _kiln("join", "127.0.0.1:6390", "--name", "gpu2", "--preload", "embeddings", "--dry-run")
    assert r.returncode != 0
    assert "--preload embeddings: unknown embeddings; one of bayes, embed, code" in r.stderr
    assert "Traceback" not in r.stderr


@pytest.mark.slow
def test_an_agent_started_with_preload_has_the_default_model_before_any_job(no_cluster):
    cluster = kiln.connect(name="local", agent_env={"KILN_AGENT_PRELOAD": "embed"})
    try:
        agent = cluster.agents()[0]
        deadline = time.monotonic() + 240
        while agent.info(timeout=60)["rewarming"] and time.monotonic() < deadline:
            time.sleep(0.5)
        info = agent.info()
        assert "rewarm_s" in info["startup"], info["startup"]
        assert info["embed"]["models_loaded"] == ["default"]
        assert info["embed"]["requests"] == 0  # loaded by the start, not by a job
    finally:
        kiln.shutdown()


@pytest.mark.slow
def test_a_preload_that_fails_says_why_and_the_job_gets_the_same_clear_error(no_cluster, tmp_path):
    missing = str(tmp_path / "no-model-here")
    cluster = kiln.connect(name="local", agent_env={"KILN_AGENT_PRELOAD": "embed",
                                                     "KILN_EMBED_MODEL_DEFAULT": missing})
    try:
        agent = cluster.agents()[0]
        deadline = time.monotonic() + 240
        while agent.info(timeout=60)["rewarming"] and time.monotonic() < deadline:
            time.sleep(0.5)
        why = agent.info()["preload_errors"]["embed"]
        assert "ModelNotAvailableError" in why and missing in why
        with pytest.raises(kiln.errors.ModelNotAvailableError, match="no-model-here"):
            kiln.embed(["hello"])
    finally:
        kiln.shutdown()
