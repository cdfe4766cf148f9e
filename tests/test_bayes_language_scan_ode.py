"""Recurrences (`scan`) and ODE solutions (`ode`) against plain numpy loops and scipy."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats
from scipy.integrate import solve_ivp
from scipy.special import logsumexp as np_logsumexp

import kiln.bayes._engine  # noqa: F401 - float64, as on the agent
from kiln.bayes import (
    Expr,
    Flat,
    Model,
    Normal,
    concatenate,
    log,
    logsumexp,
    ode,
    ref,
    scan,
    stack,
    where,
)
from kiln.bayes._compile import compile_model, split_constants
from kiln.bayes._validate import validate
from kiln.errors import DataError, ModelTypeError, ShapeError

Y = np.random.default_rng(3).normal(size=12)


def _compiled(model: Model):
    split = split_constants(model.validate().to_dict())
    consts = [jnp.asarray(c) for c in split.consts]
    return compile_model(split.structure, consts), consts


def test_arma11_errors_match_the_loop_and_their_factor_the_log_density():
    mu, phi, theta, y = ref("mu"), ref("phi"), ref("theta"), ref("y")
    err0 = y[0] - (mu + phi * mu)
    err = scan(lambda e, x: x["y"] - (mu + phi * x["y_prev"] + theta * e),
               init=err0, xs={"y": y[1:], "y_prev": y[:-1]})
    m = (Model().data("y", Y).rv("mu", Flat()).rv("phi", Flat()).rv("theta", Flat())
         .det("err", concatenate([[err0], err]))
         .factor("lik", Normal(0.0, 1.5).logp(ref("err"))))
    cm, consts = _compiled(m)
    z = jnp.asarray([0.3, 0.6, -0.4])               # mu, phi, theta (site order)
    expected = np.empty_like(Y)
    expected[0] = Y[0] - (0.3 + 0.6 * 0.3)
    for t in range(1, len(Y)):
        expected[t] = Y[t] - (0.3 + 0.6 * Y[t - 1] - 0.4 * expected[t - 1])
    values, _ = cm.postprocess(z, consts)
    np.testing.assert_allclose(np.asarray(values["err"]), expected, rtol=1e-12)
    assert float(cm.logdensity(z, consts)) == pytest.approx(stats.norm(0, 1.5).logpdf(expected).sum())


def test_the_hmm_forward_algorithm_matches_numpy():
    theta = np.array([[0.8, 0.2], [0.3, 0.7]])
    emis = Normal(ref("mu"), 1.0).logp(ref("y")[:, None])
    gamma = scan(lambda g, e: logsumexp(g[:, None] + log(ref("theta")), axis=0) + e,
                 init=emis[0], xs=emis[1:])
    m = (Model().data("y", Y).data("theta", theta).rv("mu", Flat(), shape=2)
         .factor("forward", logsumexp(gamma[-1])))
    assert validate(m.entries).shapes["forward"] == ()
    cm, consts = _compiled(m)
    mu = np.array([-0.5, 1.0])
    e = stats.norm(mu, 1).logpdf(Y[:, None])
    g = e[0]
    for t in range(1, len(Y)):
        g = np_logsumexp(g[:, None] + np.log(theta), axis=0) + e[t]
    assert float(cm.logdensity(jnp.asarray(mu), consts)) == pytest.approx(np_logsumexp(g), rel=1e-12)


def test_a_step_may_return_carry_and_output_and_scan_a_length():
    # carry a running sum, output its square; no sequence: length=5
    m = (Model().rv("z", Flat())
         .det("sq", scan(lambda c, x: (c + ref("z"), (c + ref("z")) ** 2), init=0.0, length=5)))
    assert validate(m.entries).shapes["sq"] == (5,)
    cm, consts = _compiled(m)
    values, _ = cm.postprocess(jnp.asarray([0.5]), consts)
    np.testing.assert_allclose(np.asarray(values["sq"]), (0.5 * np.arange(1, 6)) ** 2)


def test_a_scan_carries_a_vector_state():
    # a 2-d linear recurrence s[t] = A s[t-1] + x[t]
    a = np.array([[0.9, 0.1], [-0.2, 0.8]])
    xs = np.random.default_rng(0).normal(size=(6, 2))
    m = (Model().rv("z", Flat()).data("A", a).data("xs", xs)
         .det("s", scan(lambda s, x: ref("A") @ s + x, init=[1.0, ref("z")], xs=ref("xs"))))
    cm, consts = _compiled(m)
    values, _ = cm.postprocess(jnp.asarray([2.0]), consts)
    s, expected = np.array([1.0, 2.0]), []
    for x in xs:
        s = a @ s + x
        expected.append(s)
    np.testing.assert_allclose(np.asarray(values["s"]), np.array(expected), rtol=1e-12)


@pytest.mark.parametrize("build, error, words", [
    (lambda: scan(lambda c, x: stack([c, c]), init=ref("z"), xs=ref("y")), ShapeError,
     "the step gives shape (2,), the carry has shape ()"),
    (lambda: scan(lambda c, x: c + x["a"] + x["b"], init=0.0, xs={"a": ref("y"), "b": ref("y")[1:]}),
     ShapeError, "sequences of different lengths [11, 12]"),
    (lambda: Expr({"slot": "carry"}), ModelTypeError, "slot 'carry' used outside a scan step"),
])
def test_a_bad_scan_is_refused_naming_the_variable(build, error, words):
    m = Model().data("y", Y).rv("z", Flat()).det("d", build())
    with pytest.raises(error) as e:
        m.validate()
    assert e.value.variable == "d" and words in str(e.value)


def test_scan_needs_sequences_or_a_length():
    with pytest.raises(ModelTypeError, match="give xs"):
        scan(lambda c, x: c, init=0.0)


# -- ODE ---------------------------------------------------------------------------------------

TS = np.array([1.0, 2.0, 3.5, 5.0])


def _lotka_volterra(th):
    return ode(lambda t, y: stack([(th[0] - th[1] * y[1]) * y[0], (-th[2] + th[3] * y[0]) * y[1]]),
               y0=ref("z0"), times=ref("ts"), t0=0.0, rtol=1e-10, atol=1e-10, max_steps=20000)


def test_an_ode_solution_matches_scipy_and_differentiates():
    m = (Model().data("ts", TS).data("z0", [30.0, 4.0]).rv("theta", Flat(), shape=4)
         .det("z", _lotka_volterra(ref("theta")))
         .factor("f", ref("z")[-1, 0]))
    assert validate(m.entries).shapes["z"] == (4, 2)
    cm, consts = _compiled(m)
    th = np.array([0.55, 0.028, 0.8, 0.024])

    def rhs(t, y):
        return [(th[0] - th[1] * y[1]) * y[0], (-th[2] + th[3] * y[0]) * y[1]]
    ref_sol = solve_ivp(rhs, (0.0, TS[-1]), [30.0, 4.0], t_eval=TS, rtol=1e-11, atol=1e-11).y.T
    # one jit for both: the solver compiles once (op by op it would compile per call)
    z_and_grad = jax.jit(lambda z: (cm.postprocess(z, consts)[0]["z"],
                                    jax.grad(lambda u: cm.logdensity(u, consts))(z)))
    values, grad = z_and_grad(jnp.asarray(th))
    np.testing.assert_allclose(np.asarray(values), ref_sol, rtol=1e-6)
    # d z[-1, 0] / d theta[0] by autodiff through the solver vs a central difference
    h = 1e-6
    up = solve_ivp(lambda t, y: [(th[0] + h - th[1] * y[1]) * y[0], (-th[2] + th[3] * y[0]) * y[1]],
                   (0.0, TS[-1]), [30.0, 4.0], t_eval=TS, rtol=1e-12, atol=1e-12).y.T[-1, 0]
    down = solve_ivp(lambda t, y: [(th[0] - h - th[1] * y[1]) * y[0], (-th[2] + th[3] * y[0]) * y[1]],
                     (0.0, TS[-1]), [30.0, 4.0], t_eval=TS, rtol=1e-12, atol=1e-12).y.T[-1, 0]
    assert float(grad[0]) == pytest.approx((up - down) / (2 * h), rel=1e-4)


def test_an_ode_right_side_may_depend_on_time():
    # dy/dt = 1 for t < 1, then 0: y(t) = min(t, 1) from y(0) = 0
    m = (Model().rv("z", Flat())
         .det("y", ode(lambda t, y: where(t < 1.0, 1.0, 0.0) + 0.0 * y, y0=[0.0],
                       times=[0.5, 2.0], rtol=1e-9, atol=1e-9, method="tsit5")))
    cm, consts = _compiled(m)
    values = jax.jit(lambda z: cm.postprocess(z, consts)[0]["y"])(jnp.zeros(1))
    np.testing.assert_allclose(np.asarray(values), [[0.5], [1.0]], atol=1e-6)


def test_an_ode_whose_right_side_has_the_wrong_shape_is_a_shape_error():
    m = Model().rv("z", Flat()).det("y", ode(lambda t, y: stack([y, y]), y0=[1.0], times=[1.0]))
    with pytest.raises(ShapeError, match=r"y.expr: ode: the right-hand side gives shape \(2, 1\)"):
        m.validate()


def test_an_unknown_ode_method_names_the_known_ones():
    with pytest.raises(ModelTypeError, match="'rk4'; one of dopri5, tsit5, dopri8, kvaerno5"):
        ode(lambda t, y: -y, y0=[1.0], times=[1.0], method="rk4")


# dy/dt = -k y, y(0) = 1: y(t) = exp(-k t). Uneven intervals, so a step that ignored its
# own interval's length would land off the closed form.
DECAY_TS = np.array([0.25, 1.0, 1.5, 3.0])


def _decay_model(steps):
    return (Model().data("ts", DECAY_TS).rv("k", Flat())
            .det("y", ode(lambda t, y: -ref("k") * y, y0=[1.0], times=ref("ts"), steps=steps))
            .factor("f", ref("y")[-1, 0]))


def _decay(steps, k=1.3):
    cm, consts = _compiled(_decay_model(steps))
    y_and_grad = jax.jit(lambda z: (cm.postprocess(z, consts)[0]["y"][:, 0],
                                    jax.grad(lambda u: cm.logdensity(u, consts))(z)))
    y, grad = y_and_grad(jnp.array([k]))
    return np.asarray(y), float(grad[0])


def test_a_fixed_step_solution_matches_the_closed_form_and_differentiates():
    # measured: relative errors 1.8e-8 in y and 1.1e-8 in the derivative
    y, grad = _decay(steps=16)
    np.testing.assert_allclose(y, np.exp(-1.3 * DECAY_TS), rtol=1e-7)
    # d y(3) / dk = -3 exp(-3 k)
    assert grad == pytest.approx(-3.0 * np.exp(-3.9), rel=1e-7)


def test_a_fixed_step_error_shrinks_at_the_methods_order():
    # dopri5 is fifth order: halving the step divides the error by about 2^5 = 32 (measured
    # 35 from 16 to 32 steps, approaching 32 from 110 at 1 to 2 steps)
    errors = [np.max(np.abs(_decay(steps)[0] - np.exp(-1.3 * DECAY_TS))) for steps in (16, 32)]
    assert 28 < errors[0] / errors[1] < 40


def test_fixed_steps_round_trip_through_json():
    m = _decay_model(steps=3)
    node = Model.from_json(m.to_json()).to_dict()["entries"][2]["expr"]
    assert node["steps"] == 3 and "steps" not in _decay_model(None).to_dict()["entries"][2]["expr"]


@pytest.mark.parametrize("steps", [0, 2.5, True])
def test_a_bad_number_of_fixed_steps_is_a_type_error_naming_it(steps):
    with pytest.raises(ModelTypeError, match="ode.steps"):
        ode(lambda t, y: -y, y0=[1.0], times=[1.0], steps=steps)
    node = _decay_model(2).to_dict()
    node["entries"][2]["expr"]["steps"] = steps
    with pytest.raises(ModelTypeError, match="bad steps"):
        Model.from_json(node)


def test_fixed_steps_too_coarse_for_rtol_and_atol_give_inf():
    # one step per interval: its error estimate is far over 1e-6 (as a solve over max_steps,
    # the point is rejected rather than sampled with a wrong solution)
    y, _ = _decay(steps=1)
    assert np.all(np.isinf(y))


@pytest.mark.parametrize("times, t0, message", [
    ([0.25, 1.5, 1.0], 0.0, r"times must be sorted: times\[2\] = 1 comes after times\[1\] = 1.5"),
    ([0.25, 1.0], 0.5, r"times\[0\] = 0.25 is before t0 = 0.5"),
])
@pytest.mark.parametrize("steps", [None, 4])
def test_ode_output_times_out_of_order_are_a_data_error_naming_them(times, t0, message, steps):
    # a fixed-step solve over unsorted times integrated backwards, silently
    m = (Model().rv("k", Flat())
         .det("y", ode(lambda t, y: -ref("k") * y, y0=[1.0], times=times, t0=t0, steps=steps)))
    with pytest.raises(DataError, match=r"y.expr: ode: " + message):
        m.validate()


def test_ode_output_times_given_as_data_are_checked_too():
    m = (Model().data("ts", np.array([0.5, 2.0, 1.0])).rv("k", Flat())
         .det("y", ode(lambda t, y: -ref("k") * y, y0=[1.0], times=ref("ts"), steps=4)))
    with pytest.raises(DataError, match=r"times\[2\] = 1 comes after times\[1\] = 2"):
        m.validate()
