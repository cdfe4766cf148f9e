"""AR(K): y[t] ~ N(alpha + sum_k beta[k] y[t-k], sigma) for t > K; alpha, beta ~ N(0, 10);
sigma ~ half-Cauchy(0, 2.5). The lags are data, so they form a design matrix."""

from __future__ import annotations

import numpy as np

from kiln.bayes import HalfCauchy, Model, Normal, ref

from . import Run

POSTERIOR = "arK-arK"
RUN = Run()


def model(data: dict) -> Model:
    y, K = np.asarray(data["y"], float), data["K"]
    lags = np.column_stack([y[K - k: len(y) - k] for k in range(1, K + 1)])  # y[t-k], t > K
    return (Model()
            .data("lags", lags)
            .rv("alpha", Normal(0.0, 10.0))
            .rv("beta", Normal(0.0, 10.0), shape=K)
            .rv("sigma", HalfCauchy(2.5))
            .rv("y_", Normal(ref("alpha") + ref("lags") @ ref("beta"), "sigma"))
            .obs("y", "y_", y[K:]))
