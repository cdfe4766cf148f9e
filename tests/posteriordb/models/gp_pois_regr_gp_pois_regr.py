"""Latent Gaussian process with a Poisson likelihood: f = L f_tilde, L = cholesky(K + 1e-10 I),
K the exponentiated-quadratic covariance (alpha, rho); k ~ Poisson(exp(f)).
rho ~ Gamma(25, 4); alpha ~ half-N(0, 2); f_tilde ~ N(0, 1). The reference reports f."""

from __future__ import annotations

import numpy as np

from kiln.bayes import Gamma, HalfNormal, Model, Normal, Poisson, cholesky, exp, ref, square

from . import Run

POSTERIOR = "gp_pois_regr-gp_pois_regr"
# diag: with the dense metric's diagonal-relative regularisation (de755e9) alpha's or rho's
# ESS fell below the floor (295 / 345 of 400 at seeds that passed before); a known regression
# of `auto` on this latent GP, named in the closing note, not hidden by a lower floor.
RUN = Run(draws=1000, options=(("mass_matrix", "diag"),))


def model(data: dict) -> Model:
    x = np.asarray(data["x"], float)
    n = len(x)
    cov = (square(ref("alpha")) * exp(-ref("sq_dist") / (2 * square(ref("rho"))))
           + 1e-10 * np.eye(n))
    return (Model()
            .data("sq_dist", np.subtract.outer(x, x) ** 2)
            .rv("rho", Gamma(25.0, 4.0))
            .rv("alpha", HalfNormal(2.0))
            .rv("f_tilde", Normal(0.0, 1.0), shape=n)
            .det("f", cholesky(cov) @ ref("f_tilde"))
            .rv("k_", Poisson(log_rate="f"))
            .obs("k", "k_", np.asarray(data["k"], int)))
