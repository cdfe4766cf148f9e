"""weight ~ N(beta1 + beta2 diam1 + beta3 diam2 + beta4 canopy_height + beta5 total_height
+ beta6 density + beta7 group, sigma) on the raw scale; beta and sigma flat."""

from __future__ import annotations

import numpy as np

from kiln.bayes import Flat, HalfFlat, Model, Normal, ref

from . import Run

POSTERIOR = "mesquite-mesquite"
RUN = Run()

PREDICTORS = ("diam1", "diam2", "canopy_height", "total_height", "density", "group")


def model(data: dict) -> Model:
    beta = ref("beta")
    m = Model()
    mu = beta[0]
    for k, name in enumerate(PREDICTORS, start=1):
        m = m.data(name, np.asarray(data[name], float))
        mu = mu + beta[k] * ref(name)
    return (m.rv("beta", Flat(), shape=7)
            .rv("sigma", HalfFlat())
            .rv("y", Normal(mu, "sigma"))
            .obs("weight", "y", np.asarray(data["weight"], float)))
