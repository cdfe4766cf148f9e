"""log(weight) ~ N(beta1 + beta2 log diam1 + beta3 log diam2 + beta4 log canopy_height
+ beta5 log total_height + beta6 log density + beta7 group, sigma); beta and sigma flat."""

from __future__ import annotations

import numpy as np

from kiln.bayes import Flat, HalfFlat, Model, Normal, ref

from . import Run

POSTERIOR = "mesquite-logmesquite"
RUN = Run()


def model(data: dict) -> Model:
    def log(k: str) -> np.ndarray:
        return np.log(np.asarray(data[k], float))

    beta = ref("beta")
    return (Model()
            .data("log_diam1", log("diam1"))
            .data("log_diam2", log("diam2"))
            .data("log_canopy_height", log("canopy_height"))
            .data("log_total_height", log("total_height"))
            .data("log_density", log("density"))
            .data("group", np.asarray(data["group"], float))
            .rv("beta", Flat(), shape=7)
            .rv("sigma", HalfFlat())
            .rv("y", Normal(beta[0] + beta[1] * ref("log_diam1") + beta[2] * ref("log_diam2")
                            + beta[3] * ref("log_canopy_height")
                            + beta[4] * ref("log_total_height")
                            + beta[5] * ref("log_density") + beta[6] * ref("group"), "sigma"))
            .obs("log_weight", "y", log("weight")))
