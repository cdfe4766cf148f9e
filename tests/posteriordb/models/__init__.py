"""One module per posteriordb posterior, written from its Stan program (model.stan).

Each module has

    POSTERIOR = "arK-arK"          # posteriordb's name: the folder of its data
    RUN = Run(...)                 # the sampler settings its check needs
    def model(data) -> Model       # the kiln model, given data.json

Every reference name is a variable or a deterministic of its model under Stan's name
(eight schools' `theta`, gp_pois_regr's `f`), so no name mapping is needed. Stan's
conventions hold: a parameter with no prior statement is flat over its declared support
(`Flat`, `HalfFlat`), `target +=` is a factor, and a constrained declaration (`<lower=0>`,
`simplex`, `ordered`) is a constraint of the variable. Transformed data are computed with
NumPy here.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from types import ModuleType


@dataclass(frozen=True)
class Run:
    """Sampler settings of one check: NUTS, `chains` x (`warmup` + `draws`)."""

    chains: int = 4
    warmup: int = 500
    draws: int = 500
    target_accept: float = 0.8
    seed: int = 1
    slow: bool = False       # marked `slow` (it still runs in CI)
    options: tuple[tuple[str, object], ...] = ()   # further engine.run keywords


def module(posterior: str) -> ModuleType:
    """The model module of `posterior` ("arK-arK" -> models/arK_arK.py)."""
    mod = importlib.import_module(f"{__name__}.{posterior.replace('-', '_')}")
    assert mod.POSTERIOR == posterior, (mod.__name__, mod.POSTERIOR)
    return mod
