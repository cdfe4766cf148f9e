"""y ~ N(alpha + beta x, sigma), x the year; alpha and beta with priors given as data,
sigma flat."""

from __future__ import annotations

import numpy as np

from kiln.bayes import HalfFlat, Model, Normal, ref

from . import Run

POSTERIOR = "kilpisjarvi_mod-kilpisjarvi"
# x is the year (+ 2000: 3952-4013), so alpha and beta correlate at -0.99998 with sds 30 and
# 0.0075: the check of the dense metric's scale-free regularisation (_adapt.py; with Stan's
# absolute one the step size was 0.007 and the bulk ESS 90; now 0.56 and 2,171 in 4 x 1,000).
RUN = Run()


def model(data: dict) -> Model:
    return (Model()
            .data("x", np.asarray(data["x"], float))
            .rv("alpha", Normal(float(data["pmualpha"]), float(data["psalpha"])))
            .rv("beta", Normal(float(data["pmubeta"]), float(data["psbeta"])))
            .rv("sigma", HalfFlat())
            .rv("y_", Normal(ref("alpha") + ref("beta") * ref("x"), "sigma"))
            .obs("y", "y_", np.asarray(data["y"], float)))
