"""Every posteriordb posterior written as a kiln model matches its reference.

Each model (`models/`, written from posteriordb's Stan program) is sampled in-process
with NUTS at fixed seeds and checked against Stan's reference summary (`reference.py`):
ESS floor first, then R-hat < 1.01, means within 4 MCSE, sds within 10% + MCSE.
"""

from __future__ import annotations

import pytest

from kiln.bayes import _engine as engine

from . import models, reference

# the 37 posteriors of tests/data/posteriordb (their models are in models/)
POSTERIORS = [
    "arK-arK",
    "arma-arma11",
    "bball_drive_event_0-hmm_drive_0",
    "bball_drive_event_1-hmm_drive_1",
    "earnings-earn_height",
    "earnings-log10earn_height",
    "earnings-logearn_height",
    "earnings-logearn_height_male",
    "earnings-logearn_interaction_z",
    "earnings-logearn_logheight_male",
    "eight_schools-eight_schools_noncentered",
    "garch-garch11",
    "hudson_lynx_hare-lotka_volterra",
    "gp_pois_regr-gp_pois_regr",
    "gp_pois_regr-gp_regr",
    "hmm_example-hmm_example",
    "kidiq-kidscore_momhs",
    "kidiq-kidscore_momhsiq",
    "kidiq-kidscore_momiq",
    "kidiq_with_mom_work-kidscore_interaction_c",
    "kidiq_with_mom_work-kidscore_interaction_c2",
    "kidiq_with_mom_work-kidscore_mom_work",
    "kilpisjarvi_mod-kilpisjarvi",
    "mesquite-logmesquite",
    "mesquite-logmesquite_logva",
    "mesquite-logmesquite_logvas",
    "mesquite-logmesquite_logvolume",
    "mesquite-mesquite",
    "nes1972-nes",
    "nes1976-nes",
    "nes1980-nes",
    "nes1984-nes",
    "nes1988-nes",
    "nes1992-nes",
    "nes2000-nes",
    "one_comp_mm_elim_abs-one_comp_mm_elim_abs",
    "sblrc-blr",
]
# every posterior with a model in models/ (what bench/posteriordb.py runs)
ALL = sorted(POSTERIORS)


def _param(posterior: str) -> object:
    slow = models.module(posterior).RUN.slow
    return pytest.param(posterior, marks=[pytest.mark.slow] if slow else [], id=posterior)


def draws_of(posterior: str) -> tuple[dict, dict]:
    """Sample `posterior`'s model with its RUN settings: (draws under Stan's names, run)."""
    mod = models.module(posterior)
    data, _ = reference.load(posterior)
    run = mod.RUN
    r = engine.run(mod.model(data).validate().to_dict(), run.chains, seed=run.seed,
                   warmup=run.warmup, draws=run.draws, target_accept=run.target_accept,
                   log_likelihood=False, **dict(run.options))
    assert not r["failed_chains"], r["warnings"]
    return reference.stan_names(r["samples"]), r


@pytest.mark.parametrize("posterior", [_param(p) for p in POSTERIORS])
def test_posterior_matches_reference(posterior):
    draws, _ = draws_of(posterior)
    _, ref = reference.load(posterior)
    reference.check(draws, ref, heavy_tailed=getattr(models.module(posterior), "HEAVY_TAILED", ()))
