"""kid_score ~ N(beta1 + beta2 mom_iq, sigma); sigma ~ half-Cauchy(0, 2.5); beta flat."""

from __future__ import annotations

import numpy as np

from kiln.bayes import Flat, HalfCauchy, Model, Normal, ref

from . import Run

POSTERIOR = "kidiq-kidscore_momiq"
RUN = Run()


def model(data: dict) -> Model:
    beta = ref("beta")
    return (Model()
            .data("mom_iq", np.asarray(data["mom_iq"], float))
            .rv("beta", Flat(), shape=2)
            .rv("sigma", HalfCauchy(2.5))
            .rv("y", Normal(beta[0] + beta[1] * ref("mom_iq"), "sigma"))
            .obs("kid_score", "y", np.asarray(data["kid_score"], float)))
