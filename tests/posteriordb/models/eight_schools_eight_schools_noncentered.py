"""Eight schools, non-centred: theta = mu + tau * theta_trans, theta_trans ~ N(0, 1)."""

from __future__ import annotations

import numpy as np

from kiln.bayes import HalfCauchy, Model, Normal, ref

from . import Run

POSTERIOR = "eight_schools-eight_schools_noncentered"
RUN = Run(target_accept=0.9)


def model(data: dict) -> Model:
    return (Model()
            .rv("mu", Normal(0.0, 5.0))
            .rv("tau", HalfCauchy(5.0))
            .rv("theta_trans", Normal(0.0, 1.0), shape=data["J"])
            .det("theta", ref("mu") + ref("tau") * ref("theta_trans"))
            .rv("y_", Normal("theta", np.asarray(data["sigma"], float)))
            .obs("y", "y_", np.asarray(data["y"], float)))
