"""The language stays plain data: every node round-trips through JSON (a property over
generated models, and one model that uses every op and distribution), a new distribution
is one class, and the driver warns where a model is likely not what was meant."""

from __future__ import annotations

import json
import warnings

import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

import kiln.bayes as kb
from kiln.bayes import Flat, HalfStudentT, Model, ModelWarning, Normal, StudentT, ref
from kiln.bayes._compile import split_constants
from kiln.bayes._dist import REGISTRY, Distribution, DistSpec, p
from kiln.bayes._expr import OPS
from kiln.errors import ModelError

V = np.array([0.2, 0.5, 0.3])
A = np.arange(6.0).reshape(2, 3) / 10

finite = st.floats(min_value=-1e3, max_value=1e3, allow_nan=False, allow_infinity=False)
positive = st.floats(min_value=1e-2, max_value=1e2, allow_nan=False)
UNARY = ["exp", "log1p", "expm1", "sqrt", "square", "abs", "sin", "cos", "tan", "tanh", "expit",
         "log_expit", "lgamma"]
BINARY = ["minimum", "maximum", "logaddexp"]
REDUCE = ["sum", "mean", "prod", "max", "min", "std", "logsumexp"]


def scalars(names: list[str]):
    leaves = st.one_of(finite, st.sampled_from(names).map(ref))

    def extend(inner):
        vec = vectors(inner)
        return st.one_of(
            st.tuples(st.sampled_from(UNARY), inner).map(lambda t: getattr(kb, t[0])(t[1])),
            st.tuples(st.sampled_from(BINARY), inner, inner).map(lambda t: getattr(kb, t[0])(t[1], t[2])),
            st.tuples(inner, inner).map(lambda t: t[0] * t[1] - t[0] / (1 + kb.square(t[1]))),
            st.tuples(inner, inner, inner).map(lambda t: kb.where(kb.minimum(t[0], 0.0) > t[1], t[2], -t[2])),
            st.tuples(st.sampled_from(REDUCE), vec).map(lambda t: getattr(kb, t[0])(t[1])),
            st.tuples(vec, st.integers(-3, 2)).map(lambda t: t[0][t[1]]),
            st.tuples(inner, positive, inner).map(lambda t: Normal(t[0], t[1]).logp(t[2])),
            st.just(ref("A")[1, 2]),
        )
    return st.recursive(leaves, extend, max_leaves=8)


def vectors(scalar):
    base = st.one_of(st.just(ref("v")), st.lists(scalar, min_size=3, max_size=3).map(kb.stack))
    return st.one_of(
        base,
        st.tuples(base, scalar).map(lambda t: kb.softmax(t[0]) + t[1]),
        base.map(lambda x: kb.cumsum(kb.log_softmax(x))),
        base.map(lambda x: kb.concatenate([x[0:1], x[1:]])),
        base.map(lambda x: ref("A").T @ (ref("A") @ x)),
        base.map(lambda x: np.array([1.0, 0.0, 2.0]) * x),
        base.map(lambda x: kb.reshape(kb.stack([x, x], axis=1), (6,))[::2]),
        base.map(lambda x: kb.transpose(ref("A")[:, None, :] * x)[:, 0, 1]),
    )


@st.composite
def models(draw) -> Model:
    m = Model().data("v", V).data("A", A).data("g", [2, 0, 1])
    names: list[str] = []
    for i in range(draw(st.integers(1, 4))):
        name = f"x{i}"
        kind = draw(st.sampled_from(["plain", "positive", "bounds", "ordered", "simplex"]))
        if kind == "plain":
            m.rv(name, Normal(draw(scalars(names)) if names else draw(finite), draw(positive)))
        elif kind == "positive":
            m.rv(name, StudentT(3.0, 0.0, draw(positive)), constraint="positive")
        elif kind == "bounds":
            m.rv(name, Flat(), lower=-draw(positive), upper=draw(scalars(names)) if names else 5.0)
        else:
            m.rv(name + "v", Flat(), shape=3, constraint=kind)
            m.det(name, ref(name + "v")[ref("g")][0])
        names.append(name)
    scalar = scalars(names)
    m.det("d", draw(scalar))
    m.factor("f", draw(vectors(scalar)))
    m.det("s", kb.scan(lambda c, x: c * 0.5 + x * draw(scalar), init=draw(scalar), xs=ref("v")))
    m.det("o", kb.ode(lambda t, y: -y * kb.square(ref(names[0])), y0=[1.0, 2.0], times=[0.5, 1.0]))
    return m


@settings(max_examples=40, deadline=None, derandomize=True)
@given(models())
def test_every_generated_model_round_trips_through_json(m):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ModelWarning)
        m.validate()
        text = m.to_json()
        back = Model.from_json(text)
    assert back == m
    assert back.to_json() == text
    assert split_constants(back.to_dict()).key == split_constants(m.to_dict()).key


def _every_node_model() -> Model:
    m = (Model().data("v", V).data("A", A).data("S", np.eye(3) * 2).data("g", [2, 0, 1])
         .data("counts", [1, 2, 0]).rv("z", Flat(), shape=3))
    z, v, s_ = ref("z"), ref("v"), ref("S")
    exprs = [getattr(kb, f)(z) for f in UNARY + ["log", "logit", "expit", "sigmoid"]]
    exprs += [getattr(kb, f)(z, v) for f in BINARY + ["eq", "ne"]]
    exprs += [getattr(kb, f)(z) for f in REDUCE] + [z.sum(0), z.mean()]
    exprs += [kb.softmax(z), kb.log_softmax(z), kb.cumsum(z), kb.transpose(ref("A")), z.T,
              kb.reshape(ref("A"), (3, 2)), kb.stack([z, v]), kb.concatenate([z, v]),
              kb.diag(z), kb.matmul(s_, z), s_ @ z, kb.cholesky(s_), kb.solve(s_, z),
              kb.solve_triangular(s_, z), kb.inv(s_), kb.logdet(s_), kb.where(z < v, z, v),
              z <= v, z > v, z >= v, -z, z - v, z / v, z ** 2, abs(z), z[0, ...], z[ref("g")],
              z[:, None], [z[0], 1 - z[0]], Normal(z, 1.0).logp(v)]
    for i, e in enumerate(exprs):
        m.det(f"e{i}", e)
    m.det("scan", kb.scan(lambda c, x: (c + x["a"], c * x["b"]), init=0.0, xs={"a": z, "b": v}))
    m.det("scan_len", kb.scan(lambda c, x: c * 0.5, init=z, length=4))
    m.det("ode", kb.ode(lambda t, y: -y * kb.exp(-t), y0=z, times=[1.0, 2.0], method="kvaerno5"))
    m.factor("fac", Normal(0.0, 1.0).logp(z))
    for name, cls in REGISTRY.items():
        if cls.spec.discrete or name in ("Censored", "Custom"):
            continue
        m.rv(f"r_{name}", _example(name), shape=4 if cls.spec.needs_shape else None)
    m.rv("r_ordered", Normal(0.0, 1.0), shape=2, constraint="ordered")
    m.rv("r_bounds", Flat(), lower=0.0, upper=1 - ref("r_Beta"))
    for name, dist, data in [
        ("Bernoulli", kb.Bernoulli(0.3), [0, 1]), ("Binomial", kb.Binomial(5, logit_p=0.2), [2, 5]),
        ("Poisson", kb.Poisson(log_rate=z[0]), [1, 4]), ("NegativeBinomial", kb.NegativeBinomial(2.0, 1.0), [3]),
        ("NegativeBinomial2", kb.NegativeBinomial2(2.0, 1.0), [3]),
        ("ZeroInflatedPoisson", kb.ZeroInflatedPoisson(0.2, 1.0), [0]),
        ("ZeroInflatedNegativeBinomial2", kb.ZeroInflatedNegativeBinomial2(0.2, 1.0, 2.0), [0]),
        ("Categorical", kb.Categorical(V), [0, 2]), ("Multinomial", kb.Multinomial(3, V), [[1, 2, 0]]),
        ("Censored", kb.Censored(Normal(0.0, 1.0), upper=1.0), [0.5, 1.0]),
    ]:
        m.rv(f"o_{name}", dist).obs(f"obs_{name}", f"o_{name}", data)
    return m


def _example(name: str) -> Distribution:
    return {
        "Normal": kb.Normal(0.0, 1.0), "HalfNormal": kb.HalfNormal(1.0),
        "StudentT": kb.StudentT(3.0, 0.0, 1.0), "HalfStudentT": kb.HalfStudentT(3.0, 1.0),
        "Cauchy": kb.Cauchy(0.0, 1.0), "HalfCauchy": kb.HalfCauchy(1.0),
        "Laplace": kb.Laplace(0.0, 1.0), "Logistic": kb.Logistic(0.0, 1.0),
        "LogNormal": kb.LogNormal(0.0, 1.0), "Exponential": kb.Exponential(1.0),
        "Gamma": kb.Gamma(2.0, 1.0), "InverseGamma": kb.InverseGamma(2.0, 1.0),
        "Weibull": kb.Weibull(1.5, 1.0), "Beta": kb.Beta(2.0, 2.0), "Uniform": kb.Uniform(0.0, 1.0),
        "VonMises": kb.VonMises(0.0, 1.0), "TruncatedNormal": kb.TruncatedNormal(0.0, 1.0, lower=0.0),
        "Flat": kb.Flat(), "HalfFlat": kb.HalfFlat(),
        "MvNormal": kb.MvNormal(V, chol=np.eye(3)), "GaussianRandomWalk": kb.GaussianRandomWalk(1.0),
        "Dirichlet": kb.Dirichlet(V * 3), "LKJCholesky": kb.LKJCholesky(3, 2.0),
        "Truncated": kb.Truncated(kb.Gamma(2.0, 1.0), 0.5, ref("z")[0] + 3),
        "Mixture": kb.Mixture(V, [kb.Normal(0.0, 1.0), kb.Normal(1.0, 1.0), kb.Normal(2.0, 1.0)]),
    }[name]


def test_a_model_with_every_op_and_distribution_round_trips():
    m = _every_node_model()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ModelWarning)
        back = Model.from_json(m.to_json())
    assert back == m
    text = m.to_json()
    used_ops = set(_ops_in(json.loads(text)))
    assert used_ops == set(OPS), set(OPS) ^ used_ops
    used_dists = {e["dist"]["dist"] for e in json.loads(text)["entries"] if e["kind"] == "rv"}
    assert used_dists | {"Custom"} == set(REGISTRY), set(REGISTRY) ^ used_dists


def _ops_in(node):
    if isinstance(node, dict):
        if "op" in node:
            yield node["op"]
        for v in node.values():
            yield from _ops_in(v)
    elif isinstance(node, list):
        for v in node:
            yield from _ops_in(v)


def test_from_json_refuses_an_unknown_op_naming_the_variable():
    data = Model().rv("z", Flat()).det("d", kb.exp(ref("z"))).to_dict()
    data["entries"][1]["expr"]["op"] = "frobnicate"
    with pytest.raises(ModelError, match="d.expr: unknown operation 'frobnicate'"):
        Model.from_json(data)


# -- a new distribution is one class ------------------------------------------------------------

@pytest.fixture
def gumbel():
    class Gumbel(Distribution):
        spec = DistSpec((p("mu"), p("beta", "positive")), "real",
                        lambda d, a: d.Gumbel(a.mu, a.beta))
    yield Gumbel
    REGISTRY.pop("Gumbel")


def test_a_new_distribution_is_one_class_with_its_spec(gumbel):
    import kiln.bayes._engine  # noqa: F401 - float64
    from kiln.bayes._compile import compile_model
    from kiln.errors import DomainError

    m = Model().rv("x", gumbel(0.5, 2.0)).rv("y", gumbel("x", 1.0)).obs("o", "y", [0.3, 1.7])
    assert Model.from_json(m.to_json()) == m
    with pytest.raises(DomainError, match="x.dist.beta: must be > 0"):
        Model().rv("x", gumbel(0.0, -1.0)).validate()
    assert kb.spec_to_model({"dist": "gumbel", "mu": 0.0, "beta": 1.0})["x"]["dist"]["dist"] == "Gumbel"
    split = split_constants(m.to_dict())
    consts = [jnp.asarray(c) for c in split.consts]
    _, loglik = compile_model(split.structure, consts).postprocess(jnp.asarray([0.2]), consts)
    np.testing.assert_allclose(np.asarray(loglik["o"]), stats.gumbel_r(0.2, 1.0).logpdf([0.3, 1.7]),
                               rtol=1e-6)


# -- warnings --------------------------------------------------------------------------------------

def _warnings_of(m: Model) -> list[str]:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        m.validate()
    return [str(w.message) for w in caught if issubclass(w.category, ModelWarning)]


def test_a_real_line_prior_used_as_a_scale_warns_naming_it():
    m = Model().rv("sigma", StudentT(3.0, 0.0, 10.0)).rv("y", Normal(0.0, "sigma")).obs("o", "y", [1.0])
    (message,) = _warnings_of(m)
    assert message.startswith("sigma: passed as Normal's sigma") and "lower=0" in message


@pytest.mark.parametrize("build", [
    lambda m: m.rv("sigma", StudentT(3.0, 0.0, 10.0), lower=0.0),
    lambda m: m.rv("sigma", StudentT(3.0, 0.0, 10.0), constraint="positive"),
    lambda m: m.rv("sigma", HalfStudentT(3.0, 10.0)),
])
def test_a_declared_positive_scale_does_not_warn(build):
    m = build(Model()).rv("y", Normal(0.0, "sigma")).obs("o", "y", [1.0])
    assert _warnings_of(m) == []


def test_observing_a_flat_variable_warns():
    m = Model().rv("mu", Normal(0.0, 1.0)).rv("y", Flat()).obs("o", "y", [1.0])
    assert any(w.startswith("y: observing a Flat variable") for w in _warnings_of(m))
