"""The whole-model example of docs/model-language.md (the README's) runs as written and
samples Stan's posterior (posteriordb's arma11 reference)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from posteriordb import models, reference

from kiln.bayes import _engine as engine

DOC = Path(__file__).resolve().parents[1] / "docs" / "model-language.md"


def _example() -> str:
    text = DOC.read_text()
    section = text[text.index("## A whole model"):]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


@pytest.mark.slow
def test_the_documented_arma11_matches_stans_posterior():
    namespace: dict = {}
    exec(compile(_example(), str(DOC), "exec"), namespace)
    data, ref = reference.load("arma-arma11")
    run = models.module("arma-arma11").RUN
    model = namespace["arma11"](data["y"]).validate()
    r = engine.run(model.to_dict(), run.chains, seed=run.seed, warmup=run.warmup,
                   draws=run.draws, log_likelihood=False)
    assert not r["failed_chains"], r["warnings"]
    reference.check(reference.stan_names(r["samples"]), ref)
