"""kid_score ~ N(beta1 + beta2 [work=2] + beta3 [work=3] + beta4 [work=4], sigma);
beta and sigma flat."""

from __future__ import annotations

import numpy as np

from kiln.bayes import Flat, HalfFlat, Model, Normal, ref

from . import Run

POSTERIOR = "kidiq_with_mom_work-kidscore_mom_work"
RUN = Run()


def model(data: dict) -> Model:
    work = np.asarray(data["mom_work"])
    beta = ref("beta")
    return (Model()
            .data("work2", (work == 2).astype(float))
            .data("work3", (work == 3).astype(float))
            .data("work4", (work == 4).astype(float))
            .rv("beta", Flat(), shape=4)
            .rv("sigma", HalfFlat())
            .rv("y", Normal(beta[0] + beta[1] * ref("work2") + beta[2] * ref("work3")
                            + beta[3] * ref("work4"), "sigma"))
            .obs("kid_score", "y", np.asarray(data["kid_score"], float)))
