"""Draws against closed forms: conjugate posteriors and the seed 001 demo.

Tolerances are Monte Carlo errors: |mean - truth| <= 4 MCSE, with MCSE from ArviZ on the
draws themselves (mean and sd). Seeds are fixed.
"""

from __future__ import annotations

import math

import arviz as az
import numpy as np
import pytest

from kiln.bayes import Beta, Binomial, Gamma, HalfNormal, Model, Normal, Poisson, engine

SEED_Y = [2.1, 2.5, 1.8, 2.3, 2.7, 1.9, 2.4, 2.2, 2.6, 2.0]
RUN = {"warmup": 500, "draws": 1000}


def _within_4_mcse(draws: np.ndarray, mean: float, sd: float) -> None:
    """draws: (chains, draws)."""
    mcse_mean = float(az.mcse(draws, method="mean"))
    mcse_sd = float(az.mcse(draws, method="sd"))
    assert abs(draws.mean() - mean) <= 4 * mcse_mean, (draws.mean(), mean, mcse_mean)
    assert abs(draws.std(ddof=1) - sd) <= 4 * mcse_sd, (draws.std(ddof=1), sd, mcse_sd)


def test_normal_normal_with_known_sigma():
    rng = np.random.default_rng(0)
    y = rng.normal(3.0, 1.5, 20)
    m0, s0, sigma = 1.0, 2.0, 1.5
    model = Model().rv("mu", Normal(m0, s0)).rv("y", Normal("mu", sigma)).obs("y_obs", "y", y)
    prec = 1 / s0**2 + len(y) / sigma**2
    r = engine.run(model.to_dict(), 4, seed=3, **RUN)
    _within_4_mcse(r["samples"]["mu"], (m0 / s0**2 + y.sum() / sigma**2) / prec, 1 / math.sqrt(prec))


def test_beta_binomial():
    k, n = np.array([7, 12, 9]), 20
    model = Model().rv("p", Beta(2.0, 3.0)).rv("y", Binomial(n, "p")).obs("y_obs", "y", k)
    a, b = 2.0 + k.sum(), 3.0 + (n - k).sum()
    r = engine.run(model.to_dict(), 4, seed=3, **RUN)
    _within_4_mcse(r["samples"]["p"], a / (a + b), math.sqrt(a * b / ((a + b) ** 2 * (a + b + 1))))


def test_gamma_poisson():
    y = np.array([3, 5, 2, 4, 6, 1, 3])
    model = Model().rv("lam", Gamma(3.0, 2.0)).rv("y", Poisson("lam")).obs("y_obs", "y", y)
    shape, rate = 3.0 + y.sum(), 2.0 + len(y)
    r = engine.run(model.to_dict(), 4, seed=3, **RUN)
    _within_4_mcse(r["samples"]["lam"], shape / rate, math.sqrt(shape) / rate)


def seed_model() -> dict:
    return (Model()
            .rv("mu", Normal(0.0, 10.0))
            .rv("sigma", HalfNormal(2.0))
            .rv("y", Normal("mu", "sigma"))
            .obs("y_obs", "y", SEED_Y)).to_dict()


def test_the_seed_001_demo_matches_a_long_reference_run():
    model = seed_model()
    # the reference: 10 more runs of the same compiled program, 40,000 draws
    ref = {k: np.concatenate([engine.run(model, 4, seed=100 + i, **RUN)["samples"][k] for i in range(10)])
           for k in ("mu", "sigma")}
    r = engine.run(model, 4, seed=1, **RUN)
    for name, seed_value in (("mu", 2.25), ("sigma", 0.36)):
        x, xr = r["samples"][name], ref[name]
        mcse = math.hypot(float(az.mcse(x)), float(az.mcse(xr)))
        assert abs(x.mean() - xr.mean()) <= 4 * mcse, (name, x.mean(), xr.mean(), mcse)
        assert xr.mean() == pytest.approx(seed_value, abs=0.02)   # the seed notebook's numbers
        assert float(az.rhat(x)) < 1.01
