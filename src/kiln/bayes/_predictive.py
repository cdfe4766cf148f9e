"""Prior and posterior predictive draws, run on the driver with NumPyro.

Predictive checks are cheap next to sampling, so they run in the calling process:
the model compiles to the same NumPyro model the agents use (_compile.py).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..errors import ModelTypeError, SpecError
from ._compile import NUMPYRO_FORMAT, numpyro_model, split_constants
from ._model import Model
from ._posterior import Posterior


def _numpyro(model: Model | Any, data: dict[str, Any] | None) -> tuple[Any, tuple[Any, ...], dict[str, Any]]:
    import jax.numpy as jnp

    if isinstance(model, Model):
        model.validate()
        split = split_constants(model.to_dict())
        return numpyro_model(split.structure), ([jnp.asarray(c) for c in split.consts],), {}
    if callable(model):
        return model, (), dict(data or {})
    raise ModelTypeError(None, "model", f"{type(model).__name__} is not a kiln Model or a NumPyro "
                         "model function")


def _drop_obs(fn: Any) -> Any:
    from numpyro.primitives import Messenger

    class DropObs(Messenger):
        def process_message(self, msg: dict[str, Any]) -> None:
            if msg["type"] == "sample" and msg.get("is_observed"):
                msg["value"] = None
                msg["is_observed"] = False

    return DropObs(fn)


def prior_predictive(model: Model | Any, n: int = 500, *, seed: int = 0,
                     data: dict[str, Any] | None = None) -> dict[str, np.ndarray]:
    """`n` draws of every variable, observed ones included, from the prior: name -> (n, *shape)."""
    import jax
    from numpyro.infer import Predictive

    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise SpecError("n", f"a positive integer, got {n!r}")
    fn, args, kwargs = _numpyro(model, data)
    pred = Predictive(_drop_obs(fn), num_samples=n)
    out = pred(jax.random.PRNGKey(seed), *args, **kwargs)
    return {k: np.asarray(v) for k, v in out.items()}


def posterior_predictive(model: Model | Any, post: Posterior, *, seed: int = 0,
                         data: dict[str, Any] | None = None) -> dict[str, np.ndarray]:
    """Replicated observations given each posterior draw: obs name -> (chains, draws, *shape)."""
    import jax
    import jax.numpy as jnp
    from numpyro.infer import Predictive

    fn, args, kwargs = _numpyro(model, data)
    c, d = post.num_chains, post.num_draws
    samples = {k: jnp.asarray(v.reshape((c * d,) + v.shape[2:])) for k, v in post.samples.items()}
    pred = Predictive(_drop_obs(fn), posterior_samples=samples)
    out = pred(jax.random.PRNGKey(seed), *args, **kwargs)
    return {k: np.asarray(v).reshape((c, d) + np.shape(v)[1:]) for k, v in out.items()
            if k not in post.samples}


__all__ = ["prior_predictive", "posterior_predictive", "NUMPYRO_FORMAT"]
