"""Gaussian-process regression: y ~ MvNormal(0, L L'), L = cholesky(K + sigma I) with K the
exponentiated-quadratic covariance alpha^2 exp(-(x_i - x_j)^2 / (2 rho^2)) (Stan's
gp_exp_quad_cov; note sigma, not sigma^2, on the diagonal, as the Stan program has it).
rho ~ Gamma(25, 4); alpha ~ half-N(0, 2); sigma ~ half-N(0, 1)."""

from __future__ import annotations

import numpy as np

from kiln.bayes import Gamma, HalfNormal, Model, MvNormal, cholesky, exp, ref, square

from . import Run

POSTERIOR = "gp_pois_regr-gp_regr"
RUN = Run()


def model(data: dict) -> Model:
    x = np.asarray(data["x"], float)
    n = len(x)
    cov = (square(ref("alpha")) * exp(-ref("sq_dist") / (2 * square(ref("rho"))))
           + ref("sigma") * np.eye(n))
    return (Model()
            .data("sq_dist", np.subtract.outer(x, x) ** 2)
            .rv("rho", Gamma(25.0, 4.0))
            .rv("alpha", HalfNormal(2.0))
            .rv("sigma", HalfNormal(1.0))
            .rv("y_", MvNormal(np.zeros(n), chol=cholesky(cov)))
            .obs("y", "y_", np.asarray(data["y"], float)))
