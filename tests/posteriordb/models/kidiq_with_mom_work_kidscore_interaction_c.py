"""kid_score ~ N(beta1 + beta2 c_mom_hs + beta3 c_mom_iq + beta4 c_mom_hs c_mom_iq, sigma),
predictors centred on their means; beta and sigma flat."""

from __future__ import annotations

import numpy as np

from kiln.bayes import Flat, HalfFlat, Model, Normal, ref

from . import Run

POSTERIOR = "kidiq_with_mom_work-kidscore_interaction_c"
RUN = Run()


def model(data: dict) -> Model:
    hs, iq = np.asarray(data["mom_hs"], float), np.asarray(data["mom_iq"], float)
    c_hs, c_iq = hs - hs.mean(), iq - iq.mean()
    beta = ref("beta")
    return (Model()
            .data("c_mom_hs", c_hs)
            .data("c_mom_iq", c_iq)
            .data("inter", c_hs * c_iq)
            .rv("beta", Flat(), shape=4)
            .rv("sigma", HalfFlat())
            .rv("y", Normal(beta[0] + beta[1] * ref("c_mom_hs") + beta[2] * ref("c_mom_iq")
                            + beta[3] * ref("inter"), "sigma"))
            .obs("kid_score", "y", np.asarray(data["kid_score"], float)))
