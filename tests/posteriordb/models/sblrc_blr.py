"""Bayesian linear regression: y ~ N(X beta, sigma); beta ~ N(0, 10); sigma ~ half-N(0, 10)."""

from __future__ import annotations

import numpy as np

from kiln.bayes import HalfNormal, Model, Normal, ref

from . import Run

POSTERIOR = "sblrc-blr"
RUN = Run(draws=1000)


def model(data: dict) -> Model:
    return (Model()
            .data("X", np.asarray(data["X"], float))
            .rv("beta", Normal(0.0, 10.0), shape=data["D"])
            .rv("sigma", HalfNormal(10.0))
            .rv("y_", Normal(ref("X") @ ref("beta"), "sigma"))
            .obs("y", "y_", np.asarray(data["y"], float)))
