"""Sampling through a stiff ODE solve that fails in part of the parameter space.

dz/dt = -k sqrt(z), z(0) = 1 has z(t) = (1 - k t / 2)^2 until z reaches 0 at t = 2 / k. For
k > 2 / 1.5 the solve runs into z = 0 within the observed times, where kvaerno5's Newton
iterates step to z < 0 and sqrt gives NaN. The prior puts 39% of its mass there and chains
start there; the run must reject those proposals (as Stan does) and go on, and its draws
must match the posterior computed by quadrature from the closed form. Before
`_ode.failures_as_nan` this run ended with equinox's "A linear solver received non-finite
input" raised from the derivative of a rejected Newton step.
"""

from __future__ import annotations

import arviz as az
import numpy as np
import pytest
from scipy import stats

from kiln.bayes import LogNormal, Model, Normal, ode, ref, sqrt
from kiln.bayes import _engine as engine

TS = np.linspace(0.25, 1.5, 6)
NOISE = 0.02
Y = (1 - 0.8 * TS / 2) ** 2 + NOISE * np.random.default_rng(0).standard_normal(TS.size)


def _posterior_mean_sd() -> tuple[float, float]:
    """Mean and sd of k by quadrature over the closed-form solution."""
    k = np.linspace(1e-3, 4.0, 400_001)
    z = np.where(k[:, None] * TS < 2, (1 - k[:, None] * TS / 2) ** 2, 0.0)
    logp = stats.lognorm.logpdf(k, 1.0) + stats.norm.logpdf(Y, z, NOISE).sum(axis=1)
    w = np.exp(logp - logp.max())
    w /= w.sum()
    mean = float((w * k).sum())
    return mean, float(np.sqrt((w * (k - mean) ** 2).sum()))


def _scalar(v) -> float:
    return float(np.asarray(v, dtype=np.float64).reshape(-1)[0])


@pytest.mark.slow
def test_a_run_survives_a_region_where_the_stiff_solve_fails():
    k = ref("k")
    z = ode(lambda t, y: -k * sqrt(y), y0=np.array([1.0]), times=ref("ts"), method="kvaerno5",
            rtol=1e-6, atol=1e-8)
    m = (Model().data("ts", TS).rv("k", LogNormal(0.0, 1.0)).det("z", z)
         .rv("y_", Normal(ref("z")[:, 0], NOISE)).obs("y", "y_", Y))
    r = engine.run(m.validate().to_dict(), 4, seed=0, warmup=300, draws=250,
                   log_likelihood=False)
    assert not r["failed_chains"], r["warnings"]
    draws = np.asarray(r["samples"]["k"])
    ess = min(_scalar(az.ess(draws, method=m)) for m in ("bulk", "tail"))
    assert ess >= 300, ess
    mean, sd = _posterior_mean_sd()
    mcse = _scalar(az.mcse(draws, method="mean"))
    assert abs(draws.mean() - mean) <= 4 * mcse, (draws.mean(), mean, mcse)
    # 10% of the sd plus its MCSE (about sd / sqrt(2 ESS) for a near-normal posterior)
    assert abs(draws.std() - sd) <= 0.1 * sd + sd / np.sqrt(2 * ess), (draws.std(), sd)
