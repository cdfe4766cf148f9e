"""Basketball drives, a two-state hidden Markov model with exponential emissions of 1/speed
(rate phi[k]) and hoop distance (rate lambda[k]), marginalised by the forward algorithm.
Transition rows theta1, theta2: simplexes with Dirichlet(alpha[k]) factors; phi and lambda
positive-ordered with normal factors on each component (Stan's `target +=` lines)."""

from __future__ import annotations

import numpy as np

from kiln.bayes import Dirichlet, Exponential, Flat, Model, Normal, log, logsumexp, ref, scan, stack

from . import Run

POSTERIOR = "bball_drive_event_0-hmm_drive_0"
RUN = Run(slow=True)


def model(data: dict) -> Model:
    K, alpha = data["K"], np.asarray(data["alpha"], float)
    phi, lam = ref("phi"), ref("lambda")
    emis = (Exponential(phi).logp(ref("u")[:, None])
            + Exponential(lam).logp(ref("v")[:, None]))                  # (N, K)
    log_theta = log(stack([ref("theta1"), ref("theta2")]))
    gamma = scan(lambda g, e: logsumexp(g[:, None] + log_theta, axis=0) + e,
                 init=emis[0], xs=emis[1:])
    return (Model()
            .data("u", np.asarray(data["u"], float))
            .data("v", np.asarray(data["v"], float))
            .rv("theta1", Flat(), shape=K, constraint="simplex")
            .rv("theta2", Flat(), shape=K, constraint="simplex")
            .rv("phi", Flat(), shape=K, constraint="positive_ordered")
            .rv("lambda", Flat(), shape=K, constraint="positive_ordered")
            .factor("theta1_prior", Dirichlet(alpha[0]).logp(ref("theta1")))
            .factor("theta2_prior", Dirichlet(alpha[1]).logp(ref("theta2")))
            .factor("phi_prior", Normal(np.array([0.0, 3.0]), 1.0).logp(phi))
            .factor("lambda_prior", Normal(np.array([0.0, 3.0]), 1.0).logp(lam))
            .factor("forward", logsumexp(gamma[-1])))
