"""y ~ N(alpha + beta x, sigma), x the year; alpha and beta with priors given as data,
sigma flat."""

from __future__ import annotations

import numpy as np

from kiln.bayes import HalfFlat, Model, Normal, ref

from . import Run

POSTERIOR = "kilpisjarvi_mod-kilpisjarvi"
# x is the year (1952-2013), so alpha and beta correlate at -0.9999: the dense metric
# kiln adapts (mass_matrix="auto") gave a step size of 0.007 and a bulk ESS of 90 in 2,000
# draws; the diagonal one, as Stan's reference used, mixes better.
RUN = Run(draws=1000, slow=True, options=(("mass_matrix", "diag"),))


def model(data: dict) -> Model:
    return (Model()
            .data("x", np.asarray(data["x"], float))
            .rv("alpha", Normal(float(data["pmualpha"]), float(data["psalpha"])))
            .rv("beta", Normal(float(data["pmubeta"]), float(data["psbeta"])))
            .rv("sigma", HalfFlat())
            .rv("y_", Normal(ref("alpha") + ref("beta") * ref("x"), "sigma"))
            .obs("y", "y_", np.asarray(data["y"], float)))
