"""ARMA(1, 1): nu[t] = mu + phi y[t-1] + theta err[t-1], err[t] = y[t] - nu[t] (err[0] = 0
before the first step); err ~ N(0, sigma). mu ~ N(0, 10); phi, theta ~ N(0, 2);
sigma ~ half-Cauchy(0, 2.5). The errors are a recurrence (`scan`), their density a factor."""

from __future__ import annotations

import numpy as np

from kiln.bayes import HalfCauchy, Model, Normal, concatenate, ref, scan

from . import Run

POSTERIOR = "arma-arma11"
# Chains that start at |theta| > 1 (the errors grow as theta^t) see gradients of ~1e200: this
# model is the check of the sampler's guards there (_nuts.py: an overflowing energy is a
# divergence; _adapt.py: a collapsed step size gets a diagonal window).
RUN = Run()


def model(data: dict) -> Model:
    mu, phi, theta, y = ref("mu"), ref("phi"), ref("theta"), ref("y")
    err0 = y[0] - (mu + phi * mu)
    err = scan(lambda err, x: x["y"] - (mu + phi * x["y_prev"] + theta * err),
               init=err0, xs={"y": y[1:], "y_prev": y[:-1]})
    return (Model()
            .data("y", np.asarray(data["y"], float))
            .rv("mu", Normal(0.0, 10.0))
            .rv("phi", Normal(0.0, 2.0))
            .rv("theta", Normal(0.0, 2.0))
            .rv("sigma", HalfCauchy(2.5))
            .det("err", concatenate([[err0], err]))
            .factor("err_lik", Normal(0.0, "sigma").logp(ref("err"))))
