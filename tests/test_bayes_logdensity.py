"""Every distribution's log density on the agent's unconstrained space against scipy.stats.

For a latent variable, kiln's log density at an unconstrained point z must equal
scipy's log density at x = T(z) plus log|det dT/dz| (the Jacobian of the constraint
transform, taken with autodiff of the very map kiln uses to return draws). For an
observed variable, the recorded pointwise log-likelihood must equal scipy's. Float64,
relative error <= 1e-6.
"""

from __future__ import annotations

import math
import zlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

import kiln.bayes._engine  # noqa: F401 - switches jax to float64, as in the agent
from kiln.bayes import (
    Bernoulli,
    Beta,
    Binomial,
    Cauchy,
    Censored,
    Custom,
    Dirichlet,
    Exponential,
    Flat,
    Gamma,
    GaussianRandomWalk,
    HalfCauchy,
    HalfFlat,
    HalfNormal,
    Laplace,
    LogNormal,
    Mixture,
    Model,
    MvNormal,
    Normal,
    Poisson,
    StudentT,
    TruncatedNormal,
    Uniform,
    Weibull,
)
from kiln.bayes._compile import compile_model, split_constants

COV = np.array([[2.0, 0.3, 0.1], [0.3, 1.0, -0.2], [0.1, -0.2, 0.5]])

LATENT = {
    "Normal": (Normal(1.5, 2.0), None, stats.norm(1.5, 2.0).logpdf),
    "HalfNormal": (HalfNormal(2.0), None, stats.halfnorm(scale=2.0).logpdf),
    "Exponential": (Exponential(1.5), None, stats.expon(scale=1 / 1.5).logpdf),
    "Gamma": (Gamma(2.5, 1.5), None, stats.gamma(2.5, scale=1 / 1.5).logpdf),
    "Beta": (Beta(2.0, 3.0), None, stats.beta(2.0, 3.0).logpdf),
    "Uniform": (Uniform(-1.0, 3.0), None, stats.uniform(-1.0, 4.0).logpdf),
    "StudentT": (StudentT(4.0, 1.0, 2.0), None, stats.t(4.0, 1.0, 2.0).logpdf),
    "Cauchy": (Cauchy(0.5, 1.5), None, stats.cauchy(0.5, 1.5).logpdf),
    "HalfCauchy": (HalfCauchy(2.0), None, stats.halfcauchy(scale=2.0).logpdf),
    "LogNormal": (LogNormal(0.3, 0.8), None, stats.lognorm(0.8, scale=math.exp(0.3)).logpdf),
    "Laplace": (Laplace(1.0, 2.0), None, stats.laplace(1.0, 2.0).logpdf),
    "Weibull": (Weibull(1.5, 2.0), None, stats.weibull_min(1.5, scale=2.0).logpdf),
    "TruncatedNormal": (TruncatedNormal(1.0, 2.0, -1.0, 4.0), None,
                        stats.truncnorm(-1.0, 1.5, loc=1.0, scale=2.0).logpdf),
    "TruncatedNormal-lower": (TruncatedNormal(1.0, 2.0, lower=0.5), None,
                              stats.truncnorm(-0.25, np.inf, loc=1.0, scale=2.0).logpdf),
    "Flat": (Flat(), None, lambda x: 0.0),
    "HalfFlat": (HalfFlat(), None, lambda x: 0.0),
    "MvNormal": (MvNormal([0.5, -1.0, 2.0], COV), None,
                 stats.multivariate_normal([0.5, -1.0, 2.0], COV).logpdf),
    "GaussianRandomWalk": (GaussianRandomWalk(0.7), 5,
                           lambda x: stats.norm(0, 0.7).logpdf(np.diff(np.r_[0.0, x])).sum()),
    "Dirichlet": (Dirichlet([1.5, 2.0, 3.0]), None, stats.dirichlet([1.5, 2.0, 3.0]).logpdf),
    "Custom": (Custom(lambda v, s: -0.5 * (v / s) ** 2 - jnp.log(s) - 0.5 * jnp.log(2 * jnp.pi),
                      support="positive", s=2.0), None, lambda x: stats.norm(0, 2.0).logpdf(x)),
}

OBSERVED = {
    "Bernoulli": (Bernoulli(0.3), [0, 1, 1, 0], stats.bernoulli(0.3).logpmf),
    "Bernoulli-logit": (Bernoulli(logit_p=-0.4), [0, 1], stats.bernoulli(1 / (1 + math.exp(0.4))).logpmf),
    "Binomial": (Binomial(10, 0.4), [3, 7, 0, 10], stats.binom(10, 0.4).logpmf),
    "Poisson": (Poisson(3.5), [0, 2, 5, 11], stats.poisson(3.5).logpmf),
    "Censored": (Censored(Normal(0.0, 1.0), lower=-1.0, upper=1.5), [-1.0, -3.0, 0.2, 1.5, 2.0],
                 lambda x: np.where(x <= -1.0, stats.norm.logcdf(-1.0),
                                    np.where(x >= 1.5, stats.norm.logsf(1.5), stats.norm.logpdf(x)))),
    "Mixture": (Mixture([0.3, 0.7], [Normal(-1.0, 1.0), Normal(2.0, 0.5)]), [-2.0, 0.1, 2.2],
                lambda x: np.log(0.3 * stats.norm(-1, 1).pdf(x) + 0.7 * stats.norm(2, 0.5).pdf(x))),
    "Gamma": (Gamma(2.5, 1.5), [0.2, 1.0, 4.0], stats.gamma(2.5, scale=1 / 1.5).logpdf),
    "Beta": (Beta(2.0, 3.0), [0.1, 0.5, 0.9], stats.beta(2.0, 3.0).logpdf),
}


def _compiled(model: Model):
    split = split_constants(model.validate().to_dict())
    consts = [jnp.asarray(c) for c in split.consts]
    return compile_model(split.structure, consts), consts


@pytest.mark.parametrize("name", sorted(LATENT))
def test_latent_log_density_matches_scipy_with_the_jacobian(name):
    dist, shape, logpdf = LATENT[name]
    cm, consts = _compiled(Model().rv("x", dist, shape=shape))
    rng = np.random.default_rng(zlib.crc32(name.encode()))
    for _ in range(3):
        z = jnp.asarray(rng.uniform(-1.5, 1.5, cm.dim))

        def forward(z):
            return cm.postprocess(z, consts)[0]["x"]
        x = np.asarray(forward(z))
        jac = np.atleast_2d(np.asarray(jax.jacfwd(forward)(z)))
        free = jac[: cm.dim] if name == "Dirichlet" else jac  # a simplex has K-1 free coordinates
        expected = float(logpdf(x)) + float(np.linalg.slogdet(free.reshape(cm.dim, cm.dim))[1])
        got = float(cm.logdensity(z, consts))
        assert got == pytest.approx(expected, rel=1e-6, abs=1e-9), (name, z, x)


@pytest.mark.parametrize("name", sorted(OBSERVED))
def test_observed_log_likelihood_matches_scipy(name):
    dist, data, logpmf = OBSERVED[name]
    model = Model().rv("z", Normal(0.0, 1.0)).rv("y", dist).obs("y_obs", "y", data)
    cm, consts = _compiled(model)
    _, loglik = cm.postprocess(jnp.zeros(cm.dim), consts)
    np.testing.assert_allclose(np.asarray(loglik["y_obs"]), logpmf(np.asarray(data, float)),
                               rtol=1e-6, atol=1e-12)


def test_the_log_density_sums_prior_and_likelihood_terms():
    model = (Model().rv("mu", Normal(0.0, 10.0)).rv("sigma", HalfNormal(2.0))
             .rv("y", Normal("mu", "sigma")).obs("y_obs", "y", [2.1, 2.5, 1.8]))
    cm, consts = _compiled(model)
    z = jnp.asarray([0.4, -0.3])        # unconstrained, in site order mu, sigma
    values, _ = cm.postprocess(z, consts)
    mu, sigma = float(values["mu"]), float(values["sigma"])
    expected = (stats.norm(0, 10).logpdf(mu) + stats.halfnorm(scale=2).logpdf(sigma) + math.log(sigma)
                + stats.norm(mu, sigma).logpdf([2.1, 2.5, 1.8]).sum())
    assert float(cm.logdensity(z, consts)) == pytest.approx(expected, rel=1e-9)
