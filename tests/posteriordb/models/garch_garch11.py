"""GARCH(1, 1): sigma[0] = sigma1, sigma[t]^2 = alpha0 + alpha1 (y[t-1] - mu)^2
+ beta1 sigma[t-1]^2; y ~ N(mu, sigma). Flat priors over the declared supports:
mu real, alpha0 > 0, 0 < alpha1 < 1, 0 < beta1 < 1 - alpha1."""

from __future__ import annotations

import numpy as np

from kiln.bayes import Flat, HalfFlat, Model, Normal, concatenate, ref, scan, sqrt, square

from . import Run

POSTERIOR = "garch-garch11"
RUN = Run()


def model(data: dict) -> Model:
    y = np.asarray(data["y"], float)
    mu, alpha0, alpha1, beta1 = ref("mu"), ref("alpha0"), ref("alpha1"), ref("beta1")
    sigma1 = float(data["sigma1"])
    rest = scan(lambda s, y_prev: sqrt(alpha0 + alpha1 * square(y_prev - mu) + beta1 * square(s)),
                init=sigma1, xs=ref("y_prev"))
    return (Model()
            .data("y_prev", y[:-1])
            .rv("mu", Flat())
            .rv("alpha0", HalfFlat())
            .rv("alpha1", Flat(), lower=0, upper=1)
            .rv("beta1", Flat(), lower=0, upper=1 - alpha1)
            .det("sigma", concatenate([[sigma1], rest]))
            .rv("y_", Normal(mu, "sigma"))
            .obs("y", "y_", y))
