"""log(earn) ~ N(beta1 + beta2 z_height + beta3 male + beta4 z_height male, sigma), with
z_height the standardised height (Stan's sd: n - 1); beta and sigma flat."""

from __future__ import annotations

import numpy as np

from kiln.bayes import Flat, HalfFlat, Model, Normal, ref

from . import Run

POSTERIOR = "earnings-logearn_interaction_z"
RUN = Run()


def model(data: dict) -> Model:
    height, male = np.asarray(data["height"], float), np.asarray(data["male"], float)
    z_height = (height - height.mean()) / height.std(ddof=1)
    beta = ref("beta")
    return (Model()
            .data("z_height", z_height)
            .data("male", male)
            .data("inter", z_height * male)
            .rv("beta", Flat(), shape=4)
            .rv("sigma", HalfFlat())
            .rv("y", Normal(beta[0] + beta[1] * ref("z_height") + beta[2] * ref("male")
                            + beta[3] * ref("inter"), "sigma"))
            .obs("log_earn", "y", np.log(np.asarray(data["earn"], float))))
