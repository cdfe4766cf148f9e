"""log(weight) ~ N(beta1 + beta2 log canopy volume + beta3 log canopy area
+ beta4 log canopy shape + beta5 log total_height + beta6 log density + beta7 group, sigma);
beta and sigma flat."""

from __future__ import annotations

import numpy as np

from kiln.bayes import Flat, HalfFlat, Model, Normal, ref

from . import Run

POSTERIOR = "mesquite-logmesquite_logvas"
RUN = Run()


def model(data: dict) -> Model:
    d = {k: np.asarray(v, float) for k, v in data.items() if isinstance(v, list)}
    beta = ref("beta")
    return (Model()
            .data("log_canopy_volume", np.log(d["diam1"] * d["diam2"] * d["canopy_height"]))
            .data("log_canopy_area", np.log(d["diam1"] * d["diam2"]))
            .data("log_canopy_shape", np.log(d["diam1"] / d["diam2"]))
            .data("log_total_height", np.log(d["total_height"]))
            .data("log_density", np.log(d["density"]))
            .data("group", d["group"])
            .rv("beta", Flat(), shape=7)
            .rv("sigma", HalfFlat())
            .rv("y", Normal(beta[0] + beta[1] * ref("log_canopy_volume")
                            + beta[2] * ref("log_canopy_area") + beta[3] * ref("log_canopy_shape")
                            + beta[4] * ref("log_total_height") + beta[5] * ref("log_density")
                            + beta[6] * ref("group"), "sigma"))
            .obs("log_weight", "y", np.log(d["weight"])))
