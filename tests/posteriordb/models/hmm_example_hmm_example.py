"""A two-state hidden Markov model with N(mu[k], 1) emissions, marginalised by the forward
algorithm: gamma[t, k] = logsumexp_j(gamma[t-1, j] + log theta[j, k]) + log N(y[t] | mu[k], 1),
target += logsumexp(gamma[N]). The rows theta1, theta2 of theta are simplexes with flat
priors; mu is positive-ordered with mu[1] ~ N(3, 1), mu[2] ~ N(10, 1) as factors."""

from __future__ import annotations

import numpy as np

from kiln.bayes import Flat, Model, Normal, log, logsumexp, ref, scan, stack

from . import Run

POSTERIOR = "hmm_example-hmm_example"
RUN = Run()


def model(data: dict) -> Model:
    K = data["K"]
    mu = ref("mu")
    emis = Normal(mu, 1.0).logp(ref("y")[:, None])                       # (N, K)
    log_theta = log(stack([ref("theta1"), ref("theta2")]))              # rows: from state j
    gamma = scan(lambda g, e: logsumexp(g[:, None] + log_theta, axis=0) + e,
                 init=emis[0], xs=emis[1:])
    return (Model()
            .data("y", np.asarray(data["y"], float))
            .rv("theta1", Flat(), shape=K, constraint="simplex")
            .rv("theta2", Flat(), shape=K, constraint="simplex")
            .rv("mu", Flat(), shape=K, constraint="positive_ordered")
            .factor("mu1_prior", Normal(3.0, 1.0).logp(mu[0]))
            .factor("mu2_prior", Normal(10.0, 1.0).logp(mu[1]))
            .factor("forward", logsumexp(gamma[-1])))
