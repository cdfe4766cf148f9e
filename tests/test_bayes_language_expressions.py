"""The expression language: every op's value against numpy/scipy, indexing with NumPy's
meaning, and the errors of what is not supported (named by variable and field)."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest
import scipy.linalg
import scipy.special

import kiln.bayes._engine  # noqa: F401 - float64, as on the agent
from kiln.bayes import (
    Flat,
    Model,
    Normal,
    abs,
    cholesky,
    concatenate,
    cos,
    cumsum,
    diag,
    eq,
    exp,
    expit,
    expm1,
    lgamma,
    log1p,
    log_expit,
    log_softmax,
    logaddexp,
    logdet,
    logit,
    logsumexp,
    max,
    maximum,
    mean,
    min,
    minimum,
    prod,
    ref,
    reshape,
    sin,
    softmax,
    solve,
    solve_triangular,
    square,
    stack,
    std,
    tan,
    tanh,
    transpose,
    where,
)
from kiln.bayes import sum as ksum
from kiln.bayes._compile import compile_model, split_constants
from kiln.bayes._validate import validate
from kiln.errors import ModelTypeError, ShapeError

RNG = np.random.default_rng(7)
A = RNG.normal(size=(2, 3))
V = RNG.uniform(0.1, 0.9, size=3)
W = RNG.normal(size=3)
S = np.array([[2.0, 0.3, 0.1], [0.3, 1.0, -0.2], [0.1, -0.2, 0.5]])
G = np.array([2, 0, 1, 1])
DATA = {"A": A, "v": V, "w": W, "S": S, "g": G}

a, v, w, s_, g = ref("A"), ref("v"), ref("w"), ref("S"), ref("g")

# name: (expression, what numpy says it is)
CASES = {
    "arith": (a * 2 - 1 / v + v ** 2, A * 2 - 1 / V + V ** 2),
    "rpow": (2 ** v, 2 ** V),
    "abs": (abs(w), np.abs(W)),
    "abs-builtin-op": (-w.__abs__(), -np.abs(W)),
    "trig": (sin(w) + cos(w) * tan(v) + tanh(w), np.sin(W) + np.cos(W) * np.tan(V) + np.tanh(W)),
    "exp-family": (expm1(v) + log1p(v) + exp(w) + square(w), np.expm1(V) + np.log1p(V) + np.exp(W) + W ** 2),
    "sigmoid": (expit(w) + logit(v) + log_expit(w),
                scipy.special.expit(W) + scipy.special.logit(V) + np.log(scipy.special.expit(W))),
    "lgamma": (lgamma(v), scipy.special.gammaln(V)),
    "minmax": (minimum(w, v) + maximum(w, 0.2), np.minimum(W, V) + np.maximum(W, 0.2)),
    "logaddexp": (logaddexp(w, v), np.logaddexp(W, V)),
    "where-compare": (where(w > 0, w, 0.0) + where(v <= 0.5, 1.0, 2.0) + where(eq(g, 1), 1.0, 0.0)[:3],
                      np.where(W > 0, W, 0) + np.where(V <= 0.5, 1, 2) + np.where(G == 1, 1, 0)[:3]),
    "reductions": (stack([ksum(a), mean(a), prod(v), max(w), min(w), std(w)]),
                   np.array([A.sum(), A.mean(), V.prod(), W.max(), W.min(), W.std()])),
    "reductions-axis": (ksum(a, axis=0) + mean(a, axis=0) + max(a, axis=-2), A.sum(0) + A.mean(0) + A.max(0)),
    "method-sum": (a.sum(axis=1) + a.mean(1), A.sum(1) + A.mean(1)),
    "logsumexp": (logsumexp(a, axis=1), scipy.special.logsumexp(A, axis=1)),
    "logsumexp-all": (logsumexp(a), scipy.special.logsumexp(A)),
    "softmax": (softmax(a) + log_softmax(a, axis=0),
                scipy.special.softmax(A, axis=-1) + scipy.special.log_softmax(A, axis=0)),
    "cumsum": (cumsum(a, axis=1) + cumsum(a), np.cumsum(A, axis=1) * 2),
    "transpose": (transpose(a) + a.T, 2 * A.T),
    "transpose-axes": (transpose(reshape(a, (1, 2, 3)), [2, 0, 1]), A.reshape(1, 2, 3).transpose(2, 0, 1)),
    "reshape": (reshape(a, (3, -1)) + a.reshape(3, 2), 2 * A.reshape(3, 2)),
    "stack-concat": (concatenate([stack([w, v], axis=1), a.T], axis=1),
                     np.concatenate([np.stack([W, V], axis=1), A.T], axis=1)),
    "list-is-stack": ([ref("v")[0], 1 - ref("v")[0]], np.array([V[0], 1 - V[0]])),
    "numpy-left": (np.array([1.0, 0.0, 2.0]) * v + np.ones(3) - w, np.array([1.0, 0.0, 2.0]) * V + 1 - W),
    "diag": (diag(v) + diag(diag(s_)), np.diag(V) + np.diag(np.diag(S))),
    "matmul": (a @ s_ @ v + (s_ @ a.T)[0], A @ S @ V + (S @ A.T)[0]),
    "cholesky": (cholesky(s_), np.linalg.cholesky(S)),
    "solve": (solve(s_, w), np.linalg.solve(S, W)),
    "solve-tri": (solve_triangular(cholesky(s_), w), scipy.linalg.solve_triangular(np.linalg.cholesky(S), W, lower=True)),
    "logdet": (logdet(s_), np.linalg.slogdet(S)[1]),
    "index-element": (a[0, 1] + a[1, 2], A[0, 1] + A[1, 2]),
    "index-slices": (concatenate([a[:, 0], a[1, 0:2], a[-1, ::2], v[1:]]),
                     np.concatenate([A[:, 0], A[1, 0:2], A[-1, ::2], V[1:]])),
    "index-newaxis": (a[:, None, :] - v[None], A[:, None, :] - V[None]),
    "index-ellipsis": (a[..., 1], A[..., 1]),
    "index-data": (v[g] + a[1, g], V[G] + A[1, G]),
    "index-data-expr": (v[g - 1], V[G - 1]),
    "index-array": (a[:, [2, 0]], A[:, [2, 0]]),
    "logp": (Normal(w, v).logp(a), -0.5 * ((A - W) / V) ** 2 - np.log(V) - 0.5 * np.log(2 * np.pi)),
}


@pytest.fixture(scope="module")
def evaluated():
    m = Model().rv("z", Flat())
    for k, val in DATA.items():
        m.data(k, val)
    for name, (expr, _) in CASES.items():
        m.det(name, expr)
    checked = validate(m.entries)
    split = split_constants(m.to_dict())
    consts = [jnp.asarray(c) for c in split.consts]
    cm = compile_model(split.structure, consts)
    values, _ = cm.postprocess(jnp.zeros(cm.dim), consts)
    return checked.shapes, values


@pytest.mark.parametrize("name", sorted(CASES))
def test_an_op_gives_numpys_value_and_the_driver_infers_its_shape(evaluated, name):
    shapes, values = evaluated
    expected = np.asarray(CASES[name][1], dtype=float)
    assert shapes[name] == expected.shape
    np.testing.assert_allclose(np.asarray(values[name]), expected, rtol=1e-10, atol=1e-12)


def test_a_tuple_index_is_one_element_not_rows():
    m = Model().rv("a", Normal(0.0, 1.0), shape=(2, 3)).det("e", ref("a")[0, 1]).det("f", ref("a")[1, 2])
    shapes = validate(m.entries).shapes
    assert shapes["e"] == () and shapes["f"] == ()


def test_an_index_out_of_range_names_the_axis():
    m = Model().rv("a", Normal(0.0, 1.0), shape=(2, 3)).det("e", ref("a")[1, 3])
    with pytest.raises(ShapeError, match=r"e.expr: index values must be in \[0, 2\].*axis 1"):
        m.validate()


def test_too_many_indices_is_a_shape_error():
    m = Model().rv("a", Normal(0.0, 1.0), shape=3).det("e", ref("a")[0, 0])
    with pytest.raises(ShapeError, match=r"e.expr: index: too many indices"):
        m.validate()


@pytest.mark.parametrize("build, words", [
    (lambda: ref("a")[1.0], "1.0 is not an index"),
    (lambda: ref("a")[0:ref("n")], "needs int bounds"),
    (lambda: ref("a")[np.array([True, False])], "boolean mask"),
])
def test_an_unsupported_index_fails_where_it_is_written_naming_the_variable(build, words):
    with pytest.raises(ModelTypeError) as e:
        build()
    assert e.value.variable == "a" and words in str(e.value)


def test_an_index_that_is_a_random_variable_is_refused():
    m = Model().rv("b", Normal(0.0, 1.0)).rv("a", Normal(0.0, 1.0), shape=3).det("e", ref("a")[ref("b")])
    with pytest.raises(ModelTypeError, match="e.expr: index 'b' must be integer data"):
        m.validate()


def test_an_index_computed_from_a_variable_is_refused():
    m = (Model().data("g", [0, 1]).rv("b", Normal(0.0, 1.0)).rv("a", Normal(0.0, 1.0), shape=3)
         .det("e", ref("a")[ref("g") + ref("b")]))
    with pytest.raises(ModelTypeError, match="e.expr: an index may use data only; it uses b"):
        m.validate()


def test_an_expression_has_no_truth_value_on_the_driver():
    with pytest.raises(ModelTypeError, match="use kiln.bayes.where"):
        bool(ref("a") > 0)


def test_a_mixed_list_with_a_bad_item_is_a_model_type_error():
    with pytest.raises(ModelTypeError, match="d.expr"):
        Model().det("d", [ref("a"), "x", {"no": 1}])


@pytest.mark.parametrize("expr, words", [
    (lambda: stack([ref("v"), ref("A")]), "stack: items of different shapes"),
    (lambda: concatenate([ref("v"), ref("A")]), "concatenate: shapes"),
    (lambda: ref("A") @ ref("A"), "matmul: shapes (2, 3) and (2, 3) do not agree"),
    (lambda: cholesky(ref("A")), "cholesky: needs square matrices"),
    (lambda: reshape(ref("A"), (4, 2)), "reshape: cannot reshape (2, 3) into (4, 2)"),
    (lambda: logsumexp(ref("A"), axis=2), "logsumexp: axis 2 out of range"),
    (lambda: where(ref("v") > 0, ref("A"), ref("g")), "where: shapes"),
])
def test_shapes_that_do_not_agree_name_the_op(expr, words):
    m = Model().rv("z", Flat()).data("A", A).data("v", V).data("g", G).det("d", expr())
    with pytest.raises(ShapeError) as e:
        m.validate()
    assert e.value.variable == "d" and words in str(e.value)
