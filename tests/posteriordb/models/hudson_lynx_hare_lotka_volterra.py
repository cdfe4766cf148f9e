"""Lotka-Volterra predator-prey populations (Hudson's Bay lynx and hare), the ODE
du/dt = (alpha - beta v) u, dv/dt = (-gamma + delta u) v solved from z_init (Stan's rk45,
rtol 1e-5, atol 1e-3, 500 steps); observations lognormal around the solution.
theta = (alpha, beta, gamma, delta) > 0 with theta[1, 3] ~ N(1, 0.5), theta[2, 4] ~
N(0.05, 0.05); z_init ~ LogNormal(log 10, 1); sigma ~ LogNormal(-1, 1).

Solved here with fixed steps (`steps=4`: dopri5, 4 steps of 0.25 per unit interval, 80 in
all) in place of adaptive rk45: adaptive, a gradient costs a few ms where early warm-up
wanders (up to 500 steps a solve, and the 4 vectorised chains wait for the slowest), and
4 x (500 + 500) draws did not finish in 15 minutes; fixed, it costs ~0.7 ms anywhere for
the 4 chains on 2 cores and the check takes ~80 s. A fair stand-in: over this posterior's
draws the fixed-step log z is within 3.5e-6 of a solve at rtol = atol = 1e-10 (rk45 at
Stan's tolerances: within 2.8e-3), far below sigma ~ 0.25, and the largest step error
estimate is 0.027 of Stan's rtol 1e-5 / atol 1e-3. Those tolerances bound every step: far
out (theta ~ 2, z_init[2] ~ 100) 4 steps a unit are too coarse, the estimates run 6,000x
over and the point gets inf, as an rk45 solve over 500 steps does; unchecked, a chain
settled there on a damped, wrong solution (log density -200 where the exact one is -360)."""

from __future__ import annotations

import numpy as np

from kiln.bayes import LogNormal, Model, Normal, log, ode, ref, stack

from . import Run

POSTERIOR = "hudson_lynx_hare-lotka_volterra"
RUN = Run(slow=True)


def model(data: dict) -> Model:
    th = ref("theta")
    z = ode(lambda t, y: stack([(th[0] - th[1] * y[1]) * y[0], (-th[2] + th[3] * y[0]) * y[1]]),
            y0=ref("z_init"), times=ref("ts"), t0=0.0, method="dopri5", rtol=1e-5, atol=1e-3,
            steps=4)
    return (Model()
            .data("ts", np.asarray(data["ts"], float))
            .rv("theta", Normal(np.array([1.0, 0.05, 1.0, 0.05]), np.array([0.5, 0.05, 0.5, 0.05])),
                lower=0)
            .rv("z_init", LogNormal(np.log(10.0), 1.0), shape=2)
            .rv("sigma", LogNormal(-1.0, 1.0), shape=2)
            .det("z", z)
            .rv("y_init_", LogNormal(log(ref("z_init")), "sigma"))
            .obs("y_init", "y_init_", np.asarray(data["y_init"], float))
            .rv("y_", LogNormal(log(ref("z")), "sigma"))
            .obs("y", "y_", np.asarray(data["y"], float)))
