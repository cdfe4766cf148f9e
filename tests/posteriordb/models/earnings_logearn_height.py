"""log(earn) ~ N(beta1 + beta2 height, sigma); beta and sigma flat."""

from __future__ import annotations

import numpy as np

from kiln.bayes import Flat, HalfFlat, Model, Normal, ref

from . import Run

POSTERIOR = "earnings-logearn_height"
RUN = Run(draws=1000)


def model(data: dict) -> Model:
    beta = ref("beta")
    return (Model()
            .data("height", np.asarray(data["height"], float))
            .rv("beta", Flat(), shape=2)
            .rv("sigma", HalfFlat())
            .rv("y", Normal(beta[0] + beta[1] * ref("height"), "sigma"))
            .obs("log_earn", "y", np.log(np.asarray(data["earn"], float))))
