"""Reference posteriors from posteriordb (../shared/data/posteriordb), written as kiln models.

Each model's posterior means must lie within 4 Monte Carlo standard errors of the
reference (the two MCSEs combined: ours from ArviZ's ESS, the reference's sd/100), and
its sds within 10%. The folder must be there: a missing folder fails, it is not skipped.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import arviz as az
import numpy as np
import pytest

from kiln.bayes import Flat, HalfCauchy, HalfFlat, HalfNormal, Model, Normal, engine, ref

REPO = Path(__file__).resolve().parents[1]
DB = Path(os.environ.get("KILN_POSTERIORDB", REPO.parent / "shared" / "data" / "posteriordb"))


def _load(name: str) -> tuple[dict, dict]:
    folder = DB / name
    assert folder.is_dir(), (f"posteriordb reference folder {folder} is missing: set "
                             "KILN_POSTERIORDB or put ../shared/data/posteriordb beside the repo")
    data = json.loads((folder / "data.json").read_text())
    reference = json.loads((folder / "reference.json").read_text())["parameters"]
    return data, reference


def eight_schools_noncentered(d: dict) -> Model:
    return (Model()
            .rv("mu", Normal(0.0, 5.0))
            .rv("tau", HalfCauchy(5.0))
            .rv("theta_trans", Normal(0.0, 1.0), shape=d["J"])
            .det("theta", ref("mu") + ref("tau") * ref("theta_trans"))
            .rv("y", Normal("theta", np.asarray(d["sigma"], float)))
            .obs("y_obs", "y", np.asarray(d["y"], float)))


def kidiq_momiq(d: dict) -> Model:
    X = np.column_stack([np.ones(d["N"]), d["mom_iq"]])
    return (Model()
            .data("X", X)
            .rv("beta", Flat(), shape=2)
            .rv("sigma", HalfCauchy(2.5))
            .rv("y", Normal(ref("X") @ ref("beta"), "sigma"))
            .obs("kid_score", "y", np.asarray(d["kid_score"], float)))


def logearn_height(d: dict) -> Model:
    X = np.column_stack([np.ones(d["N"]), d["height"]])
    return (Model()
            .data("X", X)
            .rv("beta", Flat(), shape=2)
            .rv("sigma", HalfFlat())
            .rv("y", Normal(ref("X") @ ref("beta"), "sigma"))
            .obs("log_earn", "y", np.log(np.asarray(d["earn"], float))))


def logmesquite(d: dict) -> Model:
    cols = [np.log(d[k]) for k in ("diam1", "diam2", "canopy_height", "total_height", "density")]
    X = np.column_stack([np.ones(d["N"]), *cols, d["group"]])
    return (Model()
            .data("X", X)
            .rv("beta", Flat(), shape=7)
            .rv("sigma", HalfFlat())
            .rv("y", Normal(ref("X") @ ref("beta"), "sigma"))
            .obs("log_weight", "y", np.log(np.asarray(d["weight"], float))))


def blr(d: dict) -> Model:
    return (Model()
            .data("X", np.asarray(d["X"], float))
            .rv("beta", Normal(0.0, 10.0), shape=d["D"])
            .rv("sigma", HalfNormal(10.0))
            .rv("y_", Normal(ref("X") @ ref("beta"), "sigma"))
            .obs("y", "y_", np.asarray(d["y"], float)))


def ark(d: dict) -> Model:
    y, K = np.asarray(d["y"], float), d["K"]
    lags = np.column_stack([y[K - k: len(y) - k] for k in range(1, K + 1)])  # y[t-k], t > K
    return (Model()
            .data("lags", lags)
            .rv("alpha", Normal(0.0, 10.0))
            .rv("beta", Normal(0.0, 10.0), shape=K)
            .rv("sigma", HalfCauchy(2.5))
            .rv("y_", Normal(ref("alpha") + ref("lags") @ ref("beta"), "sigma"))
            .obs("y", "y_", y[K:]))


CASES = {
    "eight_schools-eight_schools_noncentered": (eight_schools_noncentered, 0.9),
    "kidiq-kidscore_momiq": (kidiq_momiq, 0.8),
    "earnings-logearn_height": (logearn_height, 0.8),
    "mesquite-logmesquite": (logmesquite, 0.8),
    "sblrc-blr": (blr, 0.8),
    "arK-arK": (ark, 0.8),
}


def _stan_names(samples: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """(chains, draws) arrays under Stan's 1-based names: beta[1], theta[3]."""
    out = {}
    for k, v in samples.items():
        if v.ndim == 2:
            out[k] = v
        else:
            for i in range(v.shape[2]):
                out[f"{k}[{i + 1}]"] = v[:, :, i]
    return out


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(CASES))
def test_reference_posterior_is_matched(name):
    build, target_accept = CASES[name]
    data, reference = _load(name)
    model = build(data).validate()
    r = engine.run(model.to_dict(), 4, seed=11, warmup=1000, draws=1000,
                   target_accept=target_accept, log_likelihood=False)
    assert not r["failed_chains"], r["warnings"]
    draws = _stan_names(r["samples"])
    for pname, ref_stats in reference.items():
        x = draws[pname]
        ess = float(az.ess(x))
        mean, sd = float(x.mean()), float(x.std(ddof=1))
        mcse = math.sqrt((ref_stats["sd"] / math.sqrt(ess)) ** 2 + (ref_stats["sd"] / 100) ** 2)
        assert abs(mean - ref_stats["mean"]) <= 4 * mcse, (pname, mean, ref_stats, ess)
        assert abs(sd - ref_stats["sd"]) <= 0.1 * ref_stats["sd"] + 4 * ref_stats["sd"] / math.sqrt(2 * ess), \
            (pname, sd, ref_stats, ess)
