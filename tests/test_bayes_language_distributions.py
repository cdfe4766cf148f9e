"""The language's distributions, truncation, constraints and factor against scipy.

As in test_bayes_logdensity.py: for a latent variable kiln's log density at an
unconstrained point z must equal scipy's log density at x = T(z) plus log|det dT/dz| over
the free coordinates (autodiff of the very map kiln uses to return draws); for an observed
variable the pointwise log-likelihood must equal scipy's. Float64, rel. error <= 1e-6.
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
    Categorical,
    Flat,
    Gamma,
    HalfStudentT,
    InverseGamma,
    LKJCholesky,
    Logistic,
    LogNormal,
    Model,
    Multinomial,
    MvNormal,
    NegativeBinomial,
    NegativeBinomial2,
    Normal,
    Poisson,
    StudentT,
    Truncated,
    VonMises,
    ZeroInflatedNegativeBinomial2,
    ZeroInflatedPoisson,
    ref,
)
from kiln.bayes._compile import compile_model, split_constants
from kiln.errors import DomainError, ModelTypeError, ShapeError

L_COV = np.linalg.cholesky(np.array([[2.0, 0.3], [0.3, 1.0]]))


def _trunc(base, lo, hi):
    mass = base.cdf(hi) - base.cdf(lo)
    return lambda x: base.logpdf(x) - math.log(mass)


def _ordered_ok(x):
    assert np.all(np.diff(x) > 0)
    return 0.0


# name: (builder of the model's "x" entry, scipy log density of x, free coordinates of x)
LATENT = {
    "HalfStudentT": (lambda m: m.rv("x", HalfStudentT(3.0, 2.0)),
                     lambda x: math.log(2) + stats.t(3.0, 0, 2.0).logpdf(x), None),
    "InverseGamma": (lambda m: m.rv("x", InverseGamma(3.0, 2.0)),
                     stats.invgamma(3.0, scale=2.0).logpdf, None),
    "Logistic": (lambda m: m.rv("x", Logistic(1.0, 2.0)), stats.logistic(1.0, 2.0).logpdf, None),
    "Truncated-Gamma": (lambda m: m.rv("x", Truncated(Gamma(2.0, 1.5), 0.5, 3.0)),
                        _trunc(stats.gamma(2.0, scale=1 / 1.5), 0.5, 3.0), None),
    "Truncated-Normal-low": (lambda m: m.rv("x", Truncated(Normal(1.0, 2.0), low=0.0)),
                               _trunc(stats.norm(1.0, 2.0), 0.0, np.inf), None),
    "Truncated-LogNormal-upper": (lambda m: m.rv("x", Truncated(LogNormal(0.0, 1.0), upper=2.0)),
                                  _trunc(stats.lognorm(1.0), 0.0, 2.0), None),
    "Truncated-StudentT-expr": (lambda m: m.data("b", 1.5).rv("x", Truncated(StudentT(4.0, 0.0, 1.0),
                                                                              -1.0, ref("b") * 2)),
                                _trunc(stats.t(4.0), -1.0, 3.0), None),
    "MvNormal-chol": (lambda m: m.rv("x", MvNormal([0.5, -1.0], chol=L_COV)),
                      stats.multivariate_normal([0.5, -1.0], L_COV @ L_COV.T).logpdf, None),
    # LKJ(eta) on 2x2: the correlation L[1, 0] = r is 2 Beta(eta, eta) - 1; the declared
    # constraint is its own support (a no-op the compiler must get right for a matrix)
    "LKJCholesky-2": (lambda m: m.rv("x", LKJCholesky(2, 3.0), constraint="corr_cholesky"),
                      lambda x: stats.beta(3.0, 3.0).logpdf((x[1, 0] + 1) / 2) - math.log(2), [2]),
    "ordered-Normal": (lambda m: m.rv("x", Normal(0.0, 3.0), shape=3, constraint="ordered"),
                       lambda x: _ordered_ok(x) + stats.norm(0, 3).logpdf(x).sum(), None),
    "positive_ordered-Flat": (lambda m: m.rv("x", Flat(), shape=3, constraint="positive_ordered"),
                              lambda x: _ordered_ok(x) + (0.0 if x[0] > 0 else -np.inf), None),
    "simplex-Flat": (lambda m: m.rv("x", Flat(), shape=3, constraint="simplex"),
                     lambda x: 0.0 if abs(x.sum() - 1) < 1e-12 else -np.inf, [0, 1]),
    "lower-StudentT": (lambda m: m.rv("x", StudentT(3.0, 0.0, 10.0), lower=0.0),
                       lambda x: stats.t(3.0, 0, 10.0).logpdf(x) if x > 0 else -np.inf, None),
    "bounds-expr": (lambda m: m.data("a", 0.25).rv("x", Flat(), lower=ref("a"), upper=1 - ref("a")),
                    lambda x: 0.0 if 0.25 < x < 0.75 else -np.inf, None),
}


def _compiled(model: Model):
    split = split_constants(model.validate().to_dict())
    consts = [jnp.asarray(c) for c in split.consts]
    return compile_model(split.structure, consts), consts


@pytest.mark.parametrize("name", sorted(LATENT))
def test_latent_log_density_matches_scipy_with_the_jacobian(name):
    build, logpdf, free = LATENT[name]
    cm, consts = _compiled(build(Model()))
    rng = np.random.default_rng(zlib.crc32(name.encode()))
    # jitted: op-by-op dispatch of the transforms costs more than compiling them once
    value = jax.jit(lambda z: cm.postprocess(z, consts)[0]["x"])
    jacobian = jax.jit(jax.jacfwd(lambda z: jnp.ravel(cm.postprocess(z, consts)[0]["x"])))
    logdensity = jax.jit(lambda z: cm.logdensity(z, consts))
    for _ in range(2):
        z = jnp.asarray(rng.uniform(-1.5, 1.5, cm.dim))
        x = np.asarray(value(z))
        jac = np.atleast_2d(np.asarray(jacobian(z)))
        jac = jac[free] if free is not None else jac
        expected = float(logpdf(x)) + float(np.linalg.slogdet(jac.reshape(cm.dim, cm.dim))[1])
        assert float(logdensity(z)) == pytest.approx(expected, rel=1e-6, abs=1e-9), x


def _zip(gate, logpmf):
    return lambda x: np.where(x == 0, np.log(gate + (1 - gate) * np.exp(logpmf(0))),
                              np.log(1 - gate) + logpmf(x))


P3 = np.array([0.2, 0.5, 0.3])

OBSERVED = {
    "NegativeBinomial": (NegativeBinomial(3.0, 0.5), [0, 2, 7, 15],
                         stats.nbinom(3.0, 0.5 / 1.5).logpmf),
    "NegativeBinomial2": (NegativeBinomial2(4.0, 2.0), [0, 1, 4, 12],
                          stats.nbinom(2.0, 2.0 / 6.0).logpmf),
    "ZeroInflatedPoisson": (ZeroInflatedPoisson(0.3, 2.0), [0, 1, 3, 0],
                            _zip(0.3, stats.poisson(2.0).logpmf)),
    "ZeroInflatedNegativeBinomial2": (ZeroInflatedNegativeBinomial2(0.2, 3.0, 1.5), [0, 2, 9],
                                      _zip(0.2, stats.nbinom(1.5, 1.5 / 4.5).logpmf)),
    "Categorical": (Categorical(P3), [0, 2, 1, 1], lambda x: np.log(P3[x.astype(int)])),
    "Categorical-logit": (Categorical(logit_p=np.log(P3) + 1.0), [2, 0],
                          lambda x: np.log(P3[x.astype(int)])),
    "Multinomial": (Multinomial(5, P3), [[1, 2, 2], [0, 5, 0]],
                    lambda x: stats.multinomial(5, P3).logpmf(x)),
    "Poisson-log_rate": (Poisson(log_rate=0.7), [0, 2, 5], stats.poisson(math.exp(0.7)).logpmf),
    "VonMises": (VonMises(0.5, 2.0), [-3.0, 0.0, 1.0], stats.vonmises(2.0, loc=0.5).logpdf),
}


@pytest.mark.parametrize("name", sorted(OBSERVED))
def test_observed_log_likelihood_matches_scipy(name):
    dist, data, logpmf = OBSERVED[name]
    model = Model().rv("z", Normal(0.0, 1.0)).rv("y", dist).obs("y_obs", "y", data)
    cm, consts = _compiled(model)
    _, loglik = cm.postprocess(jnp.zeros(cm.dim), consts)
    np.testing.assert_allclose(np.asarray(loglik["y_obs"]), logpmf(np.asarray(data, float)),
                               rtol=1e-6, atol=1e-12)


def test_a_factor_adds_its_sum_to_the_log_density_and_is_not_a_likelihood():
    model = (Model().rv("mu", Flat(), shape=2)
             .factor("prior", Normal([3.0, 10.0], 1.0).logp(ref("mu")))
             .factor("extra", -0.5 * ref("mu")[0] ** 2))
    cm, consts = _compiled(model)
    z = jnp.asarray([0.4, 9.0])
    expected = stats.norm([3, 10], 1).logpdf([0.4, 9.0]).sum() - 0.5 * 0.4 ** 2
    assert float(cm.logdensity(z, consts)) == pytest.approx(expected, rel=1e-12)
    assert cm.observed == {}


def test_a_constraint_outside_the_support_is_refused():
    from kiln.bayes import HalfNormal

    with pytest.raises(ModelTypeError, match=r"x.constraint: 'ordered' is not inside the support"):
        Model().rv("x", HalfNormal(1.0), shape=2, constraint="ordered").validate()


def test_a_vector_constraint_needs_a_vector():
    with pytest.raises(ShapeError, match=r"x.shape: 'simplex' needs a vector"):
        Model().rv("x", Flat(), constraint="simplex").validate()


def test_an_unknown_constraint_names_the_known_ones():
    with pytest.raises(ModelTypeError, match=r"x.constraint: 'sorted' is not a constraint; known: real"):
        Model().rv("x", Flat(), shape=2, constraint="sorted")


def test_constant_bounds_must_be_ordered():
    with pytest.raises(DomainError, match=r"x.constraint.upper: upper must be greater than lower"):
        Model().rv("x", Flat(), lower=1.0, upper=0.0).validate()


def test_truncation_wraps_only_univariate_continuous_distributions():
    with pytest.raises(ModelTypeError, match=r"x.dist.base: Truncated wraps a proper continuous"):
        Model().rv("x", Truncated(Poisson(2.0), 0, 5)).validate()
    with pytest.raises(ModelTypeError, match=r"x.dist.base: Truncated wraps a univariate"):
        Model().rv("x", Truncated(MvNormal([0.0, 0.0], np.eye(2)), 0.0)).validate()


def test_lkj_dim_must_be_an_int():
    with pytest.raises(ModelTypeError, match=r"x.dim"):
        Model().rv("x", LKJCholesky(2.5, 1.0))
