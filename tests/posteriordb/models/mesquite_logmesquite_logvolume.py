"""log(weight) ~ N(beta1 + beta2 log(diam1 diam2 canopy_height), sigma); beta and sigma flat."""

from __future__ import annotations

import numpy as np

from kiln.bayes import Flat, HalfFlat, Model, Normal, ref

from . import Run

POSTERIOR = "mesquite-logmesquite_logvolume"
RUN = Run()


def model(data: dict) -> Model:
    d = {k: np.asarray(v, float) for k, v in data.items() if isinstance(v, list)}
    beta = ref("beta")
    return (Model()
            .data("log_canopy_volume", np.log(d["diam1"] * d["diam2"] * d["canopy_height"]))
            .rv("beta", Flat(), shape=2)
            .rv("sigma", HalfFlat())
            .rv("y", Normal(beta[0] + beta[1] * ref("log_canopy_volume"), "sigma"))
            .obs("log_weight", "y", np.log(d["weight"])))
