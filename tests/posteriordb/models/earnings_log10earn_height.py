"""log10(earn) ~ N(beta1 + beta2 height, sigma); beta and sigma flat."""

from __future__ import annotations

import numpy as np

from kiln.bayes import Flat, HalfFlat, Model, Normal, ref

from . import Run

POSTERIOR = "earnings-log10earn_height"
RUN = Run()


def model(data: dict) -> Model:
    beta = ref("beta")
    return (Model()
            .data("height", np.asarray(data["height"], float))
            .rv("beta", Flat(), shape=2)
            .rv("sigma", HalfFlat())
            .rv("y", Normal(beta[0] + beta[1] * ref("height"), "sigma"))
            .obs("log10_earn", "y", np.log10(np.asarray(data["earn"], float))))
