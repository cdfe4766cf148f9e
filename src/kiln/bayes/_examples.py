"""Seed 001's model as a kiln model: what `kiln demo`, the tests and the benchmarks sample.

Ten observations, an unknown mean and spread: mu ~ Normal(0, 10), sigma ~ HalfNormal(2),
y ~ Normal(mu, sigma). Its posterior means are about mu 2.25 and sigma 0.355.
"""

from __future__ import annotations

import math
from typing import Any

from ._distributions import HalfNormal, Normal
from ._model import Model

SEED_001_OBSERVATIONS = (2.1, 2.5, 1.8, 2.3, 2.7, 1.9, 2.4, 2.2, 2.6, 2.0)


def seed_001() -> Model:
    """The seed's notebook model, built fresh (a Model is mutable)."""
    return (Model()
            .rv("mu", Normal(0.0, 10.0))
            .rv("sigma", HalfNormal(2.0))
            .rv("y", Normal("mu", "sigma"))
            .obs("y_obs", "y", list(SEED_001_OBSERVATIONS)))


def seed_001_posterior_means() -> dict[str, float]:
    """E[mu] and E[sigma] of `seed_001()` by quadrature on a fine grid (exact to ~1e-4): the
    truth the demo, the notebook and the tests compare sampled means with."""
    import numpy as np

    y = np.asarray(SEED_001_OBSERVATIONS)
    n, ybar, ss = len(y), y.mean(), ((y - y.mean()) ** 2).sum()
    mu = np.linspace(ybar - 1.5, ybar + 1.5, 1501)[:, None]
    sigma = np.linspace(1e-3, 3.0, 3000)[None, :]
    logp = (-0.5 * (mu / 10.0) ** 2 - 0.5 * (sigma / 2.0) ** 2 - n * np.log(sigma)
            - (n * (ybar - mu) ** 2 + ss) / (2 * sigma**2))
    w = np.exp(logp - logp.max())
    w /= w.sum()
    return {"mu": float((w * mu).sum()), "sigma": float((w * sigma).sum())}


def check_seed_001(samples: dict[str, Any], *, min_ess: float = 400.0, k: float = 4.0) -> None:
    """Assert that sampled `mu` and `sigma` ((chains, draws) arrays) match the quadrature means
    within `k` Monte Carlo standard errors, after asserting an ESS floor: a sampler that mixes
    badly must fail here rather than widen its own tolerance. Tests and `kiln demo` use it."""
    import arviz as az
    import numpy as np

    truth = seed_001_posterior_means()
    for name in ("mu", "sigma"):
        x = np.asarray(samples[name])
        ess = float(az.ess(x))
        if not ess >= min_ess:
            raise AssertionError(f"{name}: ESS {ess:.0f} < {min_ess:.0f}")
        mcse = float(x.std()) / math.sqrt(ess)
        # + the quadrature's own error (~1e-4)
        if not abs(float(x.mean()) - truth[name]) <= k * mcse + 2e-4:
            raise AssertionError(f"{name}: mean {x.mean():.5f}, truth {truth[name]:.5f}, "
                                 f"MCSE {mcse:.5f} (ESS {ess:.0f})")
