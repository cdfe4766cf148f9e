"""log(earn) ~ N(beta1 + beta2 height + beta3 male, sigma); beta and sigma flat."""

from __future__ import annotations

import numpy as np

from kiln.bayes import Flat, HalfFlat, Model, Normal, ref

from . import Run

POSTERIOR = "earnings-logearn_height_male"
RUN = Run()


def model(data: dict) -> Model:
    beta = ref("beta")
    return (Model()
            .data("height", np.asarray(data["height"], float))
            .data("male", np.asarray(data["male"], float))
            .rv("beta", Flat(), shape=3)
            .rv("sigma", HalfFlat())
            .rv("y", Normal(beta[0] + beta[1] * ref("height") + beta[2] * ref("male"), "sigma"))
            .obs("log_earn", "y", np.log(np.asarray(data["earn"], float))))
