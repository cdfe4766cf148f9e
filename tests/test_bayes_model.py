"""The model IR: building, plain-data round trip, and validation on the driver."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kiln.bayes import (
    Beta,
    Censored,
    Dirichlet,
    Exponential,
    Gamma,
    GaussianRandomWalk,
    HalfNormal,
    Mixture,
    Model,
    MvNormal,
    Normal,
    Poisson,
    StudentT,
    Uniform,
    exp,
    expit,
    log,
    log1p,
    logit,
    matmul,
    ref,
)
from kiln.bayes import sum as ksum
from kiln.bayes._examples import SEED_001_OBSERVATIONS, seed_001
from kiln.bayes._validate import validate
from kiln.errors import (
    CycleError,
    DataError,
    DomainError,
    DuplicateObservationError,
    ModelError,
    ModelTypeError,
    ShapeError,
    UnknownReferenceError,
)

SEED_Y = list(SEED_001_OBSERVATIONS)
seed_model = seed_001


def test_the_seed_model_is_plain_json():
    m = seed_model()
    text = m.to_json()
    data = json.loads(text)
    assert data["format"] == "kiln.model/1"
    assert [e["name"] for e in data["entries"]] == ["mu", "sigma", "y", "y_obs"]
    assert data["entries"][0]["dist"] == {"dist": "Normal", "mu": 0.0, "sigma": 10.0}
    assert data["entries"][2]["dist"] == {"dist": "Normal", "mu": "mu", "sigma": "sigma"}
    assert Model.from_json(text) == m and Model.from_json(text).to_json() == text


def test_building_and_validating_does_not_import_jax():
    import subprocess

    code = ("import sys; from kiln.bayes import Model, Normal, HalfNormal; "
            "Model().rv('mu', Normal(0.0, 1.0)).rv('y', Normal('mu', 1.0)).obs('o', 'y', [1.0])"
            ".validate(); print('jax' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_expressions_write_regressions_and_hierarchies_as_data():
    x = np.linspace(0, 1, 6)
    county = np.array([0, 1, 2, 0, 1, 2])
    m = (Model()
         .data("x", x).data("county", county)
         .rv("a", Normal(0.0, 1.0), shape=3)
         .rv("b", Normal(0.0, 1.0))
         .det("eta", ref("a")[ref("county")] + ref("b") * ref("x"))
         .det("p", expit(ref("eta")))
         .det("total", ksum(exp(ref("a")[ref("county")]) + log1p(ref("p")) - log(ref("p")) / 2, axis=0))
         .det("l", logit(ref("p")))
         .det("mm", matmul(np.ones((2, 6)), ref("eta")))
         .rv("y", Normal("eta", 1.0))
         .obs("y_obs", "y", np.zeros(6)))
    m.validate()
    eta = m["eta"]["expr"]
    assert eta["op"] == "add" and eta["args"][0] == {"op": "index", "args": ["a", "county"]}
    assert Model.from_json(m.to_json()) == m


def test_vector_variables_take_a_shape():
    m = Model().rv("theta", Normal(0.0, 1.0), shape=8).rv("w", Dirichlet([1.0, 1.0, 1.0]))
    assert m["theta"]["shape"] == [8]
    m.validate()


# -- validation: each error names the variable and the field -------------------------------


def test_an_unknown_reference_names_variable_field_and_known_names():
    m = Model().rv("mu", Normal(0.0, 1.0)).rv("y", Normal("mu", "sigm"))
    with pytest.raises(UnknownReferenceError) as e:
        m.validate()
    assert (e.value.variable, e.value.field) == ("y", "dist.sigma")
    assert "'sigm'" in str(e.value) and "known: mu, y" in str(e.value)


def test_observing_an_unknown_variable_is_an_unknown_reference():
    with pytest.raises(UnknownReferenceError, match="y_obs.of: 'z' is not a random variable"):
        Model().rv("y", Normal(0.0, 1.0)).obs("y_obs", "z", [1.0]).validate()


def test_a_cycle_is_reported_with_its_path():
    m = Model().rv("a", Normal("b", 1.0)).rv("b", Normal("a", 1.0))
    with pytest.raises(CycleError, match=r"a -> b -> a") as e:
        m.validate()
    assert e.value.variable == "a" and e.value.field == "dist.mu"


def test_shapes_that_do_not_broadcast_are_a_shape_error():
    m = (Model().rv("a", Normal(0.0, 1.0), shape=3).rv("b", Normal(0.0, 1.0), shape=4)
         .det("c", ref("a") + ref("b")))
    with pytest.raises(ShapeError, match=r"c.expr: add: shapes \(3,\) and \(4,\) do not broadcast"):
        m.validate()


def test_observed_data_of_the_wrong_shape_is_a_shape_error():
    m = Model().rv("a", Normal(0.0, 1.0), shape=3).rv("y", Normal("a", 1.0)).obs("y_obs", "y", [1.0, 2.0])
    with pytest.raises(ShapeError, match=r"y_obs.value: observed data of shape \(2,\)"):
        m.validate()


def test_a_declared_shape_must_fit_the_parameters():
    with pytest.raises(ShapeError, match=r"b.shape: declared shape \(2,\) but the parameters give shape \(3,\)"):
        Model().rv("a", Normal(0.0, 1.0), shape=3).rv("b", Normal("a", 1.0), shape=2).validate()


def test_matmul_dimensions_must_agree():
    m = Model().data("X", np.ones((5, 3))).rv("beta", Normal(0.0, 1.0), shape=4).det("mu", ref("X") @ ref("beta"))
    with pytest.raises(ShapeError, match=r"mu.expr: matmul: shapes \(5, 3\) and \(4,\) do not agree"):
        m.validate()


def test_an_index_out_of_range_is_a_shape_error():
    m = Model().data("g", [0, 1, 3]).rv("a", Normal(0.0, 1.0), shape=3).det("e", ref("a")[ref("g")])
    with pytest.raises(ShapeError, match=r"e.expr: index values must be in \[0, 2\]"):
        m.validate()


def test_an_index_must_be_integer_data():
    m = Model().data("g", [0.0, 1.0]).rv("a", Normal(0.0, 1.0), shape=3).det("e", ref("a")[ref("g")])
    with pytest.raises(ModelTypeError, match="e.expr: an index must be an integer array"):
        m.validate()


@pytest.mark.parametrize("dist, field, words", [
    (lambda: Normal(0.0, 0.0), "dist.sigma", "must be > 0, got 0"),
    (lambda: HalfNormal(-2.0), "dist.sigma", "must be > 0, got -2"),
    (lambda: Gamma(2.0, -1.0), "dist.beta", "must be > 0"),
    (lambda: Beta(0.0, 1.0), "dist.alpha", "must be > 0"),
    (lambda: Uniform(2.0, 1.0), "dist.upper", "upper must be greater than lower"),
    (lambda: StudentT(-1.0, 0.0, 1.0), "dist.nu", "must be > 0"),
    (lambda: Normal(0.0, [1.0, -1.0]), "dist.sigma", "must be > 0, got -1"),
    (lambda: MvNormal([0.0, 0.0], [[1.0, 2.0], [2.0, 1.0]]), "dist.cov", "positive-definite"),
    (lambda: Dirichlet([1.0, 0.0]), "dist.alpha", "must be > 0"),
    (lambda: Mixture([0.5, 0.6], [Normal(0.0, 1.0), Normal(1.0, 1.0)]), "dist.weights", "sum to 1"),
])
def test_a_constant_parameter_outside_its_domain_is_a_domain_error(dist, field, words):
    with pytest.raises(DomainError) as e:
        Model().rv("x", dist()).validate()
    assert (e.value.variable, e.value.field) == ("x", field)
    assert words in str(e.value)


@pytest.mark.parametrize("build, field, words", [
    (lambda: Model().rv("x", "Normal"), "dist", "is not a kiln distribution"),
    (lambda: Model().rv("x", Normal(True, 1.0)), "mu", "is not a number"),
    (lambda: Model().rv("x", Normal({"a": 1}, 1.0)), "mu", "is not a number"),
    (lambda: Model().rv("x", Normal(0.0, 1.0), shape="3"), "shape", "is not a tuple of ints"),
    (lambda: Model().rv("x", Normal(0.0, 1.0)).obs("o", 3, [1.0]), "of", "not the name"),
    (lambda: Model().data("d", ["a", "b"]), "value", "data must be numbers"),
    (lambda: Model().rv("x", Poisson(2.0)).validate(), "dist", "discrete"),
    (lambda: Model().rv("x", Censored(Normal(0.0, 1.0), lower=0.0)).validate(), "dist", "must be observed"),
    (lambda: Model().rv("x", GaussianRandomWalk(1.0)).validate(), "shape", "needs shape"),
])
def test_wrong_types_are_model_type_errors_naming_the_field(build, field, words):
    with pytest.raises((ModelTypeError, ShapeError)) as e:
        build()
    assert e.value.field.endswith(field), e.value
    assert words in str(e.value)


def test_a_missing_parameter_is_named():
    with pytest.raises(ModelTypeError, match="x.dist.mu: missing parameter of Normal"):
        Model().rv("x", Normal(sigma=1.0)).validate()


@pytest.mark.parametrize("value, words", [
    ([1.0, float("nan"), 2.0], "1 value(s) are NaN or inf (first at index (1,): nan)"),
    ([1.0, float("inf")], "NaN or inf"),
])
def test_nan_or_inf_in_observed_data_is_a_data_error(value, words):
    with pytest.raises(DataError) as e:
        Model().rv("y", Normal(0.0, 1.0)).obs("y_obs", "y", value)
    assert (e.value.variable, e.value.field) == ("y_obs", "value")
    assert words in str(e.value)


def test_observed_data_outside_the_support_is_a_data_error():
    with pytest.raises(DataError, match="y_obs.value: observed Poisson data must be non-negative integers"):
        Model().rv("r", Exponential(1.0)).rv("y", Poisson("r")).obs("y_obs", "y", [1, 2.5]).validate()


def test_observing_a_variable_twice_is_refused():
    m = Model().rv("y", Normal(0.0, 1.0)).obs("a", "y", [1.0])
    with pytest.raises(DuplicateObservationError, match="y.obs: observed twice: by 'a' and 'b'"):
        m.obs("b", "y", [2.0])


def test_a_name_used_twice_is_refused():
    with pytest.raises(ModelError, match="mu.name: defined twice"):
        Model().rv("mu", Normal(0.0, 1.0)).rv("mu", Normal(0.0, 1.0))


def test_from_json_validates_what_it_reads():
    data = seed_model().to_dict()
    data["entries"][1]["dist"]["sigma"] = -1.0
    with pytest.raises(DomainError, match="sigma.dist.sigma: must be > 0"):
        Model.from_json(data)
    with pytest.raises(ModelError, match="not a kiln model"):
        Model.from_json({"entries": []})


# -- round trip as a property ----------------------------------------------------------------

finite = st.floats(min_value=-1e6, max_value=1e6, allow_nan=False, allow_infinity=False)
positive = st.floats(min_value=1e-3, max_value=1e3, allow_nan=False)


@st.composite
def models(draw) -> Model:
    m = Model()
    names: list[str] = []
    n = draw(st.integers(1, 5))
    for i in range(n):
        name = f"v{i}"
        loc = draw(st.one_of(finite, st.sampled_from(names) if names else finite))
        scale = draw(positive)
        kind = draw(st.sampled_from(["normal", "halfnormal", "gamma", "expr", "vector"]))
        if kind == "normal":
            m.rv(name, Normal(loc, scale))
        elif kind == "halfnormal":
            m.rv(name, HalfNormal(scale))
        elif kind == "gamma":
            m.rv(name, Gamma(draw(positive), scale))
        elif kind == "expr" and names:
            other = draw(st.sampled_from(names))
            m.rv(name, Normal(ref(other) * draw(finite) + 1, exp(ref(other)) + scale))
        else:
            k = draw(st.integers(1, 4))
            m.rv(name, Normal(draw(st.lists(finite, min_size=k, max_size=k)), scale), shape=k)
        names.append(name)
    if draw(st.booleans()):
        target = draw(st.sampled_from(names))
        shape = validate(m.entries).shapes[target]
        values = positive if m[target]["dist"]["dist"] in ("HalfNormal", "Gamma") else finite
        data = draw(st.lists(values, min_size=int(np.prod(shape)) or 1, max_size=int(np.prod(shape)) or 1))
        m.obs("obs", target, np.reshape(data, shape) if shape else data[0])
    if draw(st.booleans()):
        m.det("d", ref(names[0]) + 1.0)
    return m


@settings(max_examples=60, deadline=None, derandomize=True)
@given(models())
def test_to_json_from_json_round_trips_exactly(m):
    text = m.to_json()
    back = Model.from_json(text)
    assert back == m
    assert back.to_json() == text
    assert Model.from_json(m.to_dict()) == m


def test_a_literal_integer_index_picks_one_element():
    m = Model().rv("beta", Normal(0.0, 1.0), shape=2).det("b0", ref("beta")[0])
    assert validate(m.entries).shapes["b0"] == ()
    with pytest.raises(ShapeError, match=r"b1.expr: index values must be in \[0, 1\]"):
        m.det("b1", ref("beta")[2]).validate()
