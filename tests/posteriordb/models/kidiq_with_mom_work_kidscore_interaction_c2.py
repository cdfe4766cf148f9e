"""kid_score ~ N(beta1 + beta2 c2_mom_hs + beta3 c2_mom_iq + beta4 c2_mom_hs c2_mom_iq, sigma),
predictors centred on reference points (mom_hs - 0.5, mom_iq - 100); beta and sigma flat."""

from __future__ import annotations

import numpy as np

from kiln.bayes import Flat, HalfFlat, Model, Normal, ref

from . import Run

POSTERIOR = "kidiq_with_mom_work-kidscore_interaction_c2"
RUN = Run()


def model(data: dict) -> Model:
    c2_hs = np.asarray(data["mom_hs"], float) - 0.5
    c2_iq = np.asarray(data["mom_iq"], float) - 100
    beta = ref("beta")
    return (Model()
            .data("c2_mom_hs", c2_hs)
            .data("c2_mom_iq", c2_iq)
            .data("inter", c2_hs * c2_iq)
            .rv("beta", Flat(), shape=4)
            .rv("sigma", HalfFlat())
            .rv("y", Normal(beta[0] + beta[1] * ref("c2_mom_hs") + beta[2] * ref("c2_mom_iq")
                            + beta[3] * ref("inter"), "sigma"))
            .obs("kid_score", "y", np.asarray(data["kid_score"], float)))
