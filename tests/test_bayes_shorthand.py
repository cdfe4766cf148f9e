"""Seed 000's shorthand spec `{"dist": NAME, **params}`: models and the errors of bad specs."""

from __future__ import annotations

import pytest

from kiln.bayes import Model, spec_to_model
from kiln.bayes._shorthand import known
from kiln.errors import SpecError


@pytest.mark.parametrize("spec, dist, params", [
    ({"dist": "normal", "mu": 0.0, "sigma": 1.0}, "Normal", {"mu": 0.0, "sigma": 1.0}),
    ({"dist": "HalfNormal", "sigma": 2.0}, "HalfNormal", {"sigma": 2.0}),
    ({"dist": "exponential", "rate": 1.5}, "Exponential", {"rate": 1.5}),
    ({"dist": "gamma", "alpha": 2.0, "beta": 3.0}, "Gamma", {"alpha": 2.0, "beta": 3.0}),
    ({"dist": "gamma", "concentration": 2.0, "rate": 3.0}, "Gamma", {"alpha": 2.0, "beta": 3.0}),
    ({"dist": "beta", "alpha": 2.0, "beta": 5.0}, "Beta", {"alpha": 2.0, "beta": 5.0}),
    ({"dist": "log_normal", "mu": 0.0, "sigma": 0.5}, "LogNormal", {"mu": 0.0, "sigma": 0.5}),
    ({"dist": "studentt", "nu": 4.0, "mu": 0.0, "sigma": 1.0}, "StudentT", {"nu": 4.0, "mu": 0.0, "sigma": 1.0}),
    ({"dist": "student_t", "df": 4.0, "loc": 1.0, "scale": 2.0}, "StudentT", {"nu": 4.0, "mu": 1.0, "sigma": 2.0}),
    ({"dist": "uniform", "lower": -1.0, "upper": 2}, "Uniform", {"lower": -1.0, "upper": 2}),
])
def test_a_spec_is_a_one_variable_model_named_x(spec, dist, params):
    m = spec_to_model(spec)
    assert isinstance(m, Model) and m.names() == ["x"]
    assert m["x"]["dist"] == {"dist": dist, **params}


def test_every_proper_continuous_distribution_is_known():
    assert {"normal", "halfnormal", "exponential", "gamma", "beta", "lognormal", "studentt",
            "cauchy", "halfcauchy", "laplace", "weibull", "uniform", "truncatednormal"} <= set(known())


@pytest.mark.parametrize("spec, field, words", [
    ({"dist": "normall", "mu": 0.0, "sigma": 1.0}, "dist", "unknown distribution 'normall'; known: beta, cauchy"),
    ({"mu": 0.0, "sigma": 1.0}, "dist", "missing or not a string"),
    ({"dist": 3}, "dist", "missing or not a string"),
    ({"dist": "poisson", "rate": 2.0}, "dist", "discrete, improper or shape-dependent"),
    ({"dist": "normal", "mu": 0.0}, "sigma", "missing parameter of normal (needs mu, sigma)"),
    ({"dist": "normal", "mu": 0.0, "sigma": 1.0, "nu": 3}, "nu", "unknown parameter 'nu' of normal"),
    ({"dist": "normal", "mu": 0.0, "loc": 0.0, "sigma": 1.0}, "loc", "'mu' and 'loc' are the same parameter"),
    ({"dist": "normal", "mu": 0.0, "sigma": 0.0}, "sigma", "must be > 0, got 0"),
    ({"dist": "normal", "mu": 0.0, "scale": -2.0}, "scale", "must be > 0, got -2"),
    ({"dist": "halfnormal", "sigma": -1}, "sigma", "must be > 0"),
    ({"dist": "gamma", "alpha": 0.0, "beta": 1.0}, "alpha", "must be > 0"),
    ({"dist": "beta", "alpha": 1.0, "beta": -1.0}, "beta", "must be > 0"),
    ({"dist": "uniform", "lower": 1.0, "upper": 0.0}, "upper", "upper must be greater than lower"),
    ({"dist": "normal", "mu": float("nan"), "sigma": 1.0}, "mu", "must be finite, got nan"),
    ({"dist": "normal", "mu": 0.0, "sigma": float("inf")}, "sigma", "must be finite"),
    ({"dist": "normal", "mu": "zero", "sigma": 1.0}, "mu", "a number, got str 'zero'"),
    ({"dist": "normal", "mu": None, "sigma": 1.0}, "mu", "a number, got NoneType"),
    ({"dist": "normal", "mu": True, "sigma": 1.0}, "mu", "a number, got bool"),
    ({"dist": "normal", "mu": {"a": 1}, "sigma": 1.0}, "mu", "a number or a list of numbers"),
])
def test_a_bad_spec_is_a_spec_error_naming_the_field(spec, field, words):
    with pytest.raises(SpecError) as e:
        spec_to_model(spec)
    assert e.value.field == field
    assert words in str(e.value)


def test_a_spec_that_is_not_a_dict_is_refused():
    with pytest.raises(SpecError, match="spec: a dict like"):
        spec_to_model(["normal", 0.0, 1.0])
