"""The sampling options, defined once: validated on the driver, received by the agent as is.

    opts = SampleOptions.parse({"warmup": 500, "draws": 1000, "seed": 1})   # SpecError on a bad one
    engine.run(model, chains, options=opts)

`kiln.sample` and `kiln.dispatch` parse their keyword arguments into a `SampleOptions` (a
frozen pydantic model) before anything is sent; the object crosses the wire inside the
payload and the agent's worker hands it to `engine.run` without checking it again. What is
not a setting of the compiled run — how many chains, which agents, the timeout, retries,
the warm-up mode — is the driver's (`DriverOptions`), checked by the same rules.
"""

from __future__ import annotations

import math
from numbers import Integral, Real
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError

from ..errors import SpecError

METHODS = ("nuts", "chees")
MASS_MATRICES = ("auto", "diag", "dense")
DEVICES = ("auto", "cpu", "gpu")


def _integer(v: Any) -> Any:
    # pydantic's lax int takes "3" and 3.0, its strict int refuses numpy integers; kiln takes
    # exactly the integers (numpy's included) and never a bool
    if isinstance(v, bool) or not isinstance(v, Integral):
        raise ValueError(f"an integer, got {v!r}")
    return int(v)


def _number(v: Any) -> Any:
    if isinstance(v, bool) or not isinstance(v, Real):
        raise ValueError(f"a number, got {v!r}")
    return float(v)


Int = Annotated[int, BeforeValidator(_integer)]
Number = Annotated[float, BeforeValidator(_number)]


class _Options(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    @classmethod
    def parse(cls, values: dict[str, Any], *, names: dict[str, str] | None = None) -> Any:
        """Validate `values`; the first problem is a `SpecError` naming the field (as the
        caller spelled it: `names` maps a field to the caller's keyword, e.g. num_warmup)."""
        try:
            return cls.model_validate(values)
        except ValidationError as e:
            err = e.errors()[0]
            field = str(err["loc"][0]) if err["loc"] else "options"
            shown = (names or {}).get(field, field)
            raise SpecError(shown, _message(cls, field, err, names)) from None


def _message(cls: type[BaseModel], field: str, err: dict[str, Any], names: dict[str, str] | None) -> str:
    got = err.get("input")
    if err["type"] == "extra_forbidden":
        known = sorted((names or {}).get(f, f) for f in cls.model_fields)
        return f"unknown option; known options: {', '.join(known)}"
    if err["type"] == "literal_error":
        return f"{err.get('ctx', {}).get('expected', '')}, got {got!r}"
    if err["type"] == "value_error":              # from _integer / _number / a model check
        return str(err["ctx"]["error"])
    return f"{_bounds(cls, field)}, got {got!r}"


def _bounds(cls: type[BaseModel], field: str) -> str:
    """'an integer >= 0', 'a number in (0, 1)': every bound of the field, not just the one broken."""
    info = cls.model_fields[field]
    b = {k: getattr(m, k) for m in info.metadata for k in ("ge", "gt", "le", "lt")
         if getattr(m, k, None) is not None}
    kind = "an integer" if info.annotation in (int, Int) else "a number"
    lo = f"[{b['ge']}" if "ge" in b else (f"({b['gt']}" if "gt" in b else None)
    hi = f"{b['le']}]" if "le" in b else (f"{b['lt']})" if "lt" in b else None)
    if lo and hi:
        return f"{kind} in {lo}, {hi}"
    if lo:
        return f"{kind} {'>=' if 'ge' in b else '>'} {lo[1:]}"
    if hi:
        return f"{kind} {'<=' if 'le' in b else '<'} {hi[:-1]}"
    return kind


class SampleOptions(_Options):
    """Everything an agent needs to run its chains, besides the model and the chain indices."""

    seed: Int = Field(0, ge=0, lt=2**32)
    warmup: Int = Field(500, ge=0)
    draws: Int = Field(1000, ge=1)
    target_accept: Number = Field(0.8, gt=0, lt=1)
    max_tree_depth: Int = Field(10, ge=1, le=30)
    method: Literal["nuts", "chees"] = "nuts"
    # "auto": dense up to _engine.DENSE_MAX_DIM parameters, diagonal above (_engine.py says why)
    mass_matrix: Literal["auto", "diag", "dense"] = "auto"
    device: Literal["auto", "cpu", "gpu"] = "auto"
    log_likelihood: bool = True


class DriverOptions(_Options):
    """`kiln.sample`'s options that stay on the driver."""

    chains: Int = Field(4, ge=1)
    warmup_mode: Literal["per_chain", "shared"] = "per_chain"
    timeout: Number | None = Field(None, gt=0)
    retries: Int = Field(2, ge=0)
    progress: bool = True

    def check(self, options: SampleOptions) -> DriverOptions:
        """Combinations that no single field rules out."""
        if self.timeout is not None and math.isinf(self.timeout):
            raise SpecError("timeout", "seconds > 0 or None, got inf")
        if options.method == "chees" and self.warmup_mode == "shared":
            raise SpecError("warmup_mode", "ChEES adapts across the chains of each call; use "
                            "warmup_mode='per_chain' with method='chees'")
        return self


def split(values: dict[str, Any], *, names: dict[str, str] | None = None
          ) -> tuple[SampleOptions, DriverOptions]:
    """(agent options, driver options) from one set of keyword arguments, each checked once."""
    mine = set(SampleOptions.model_fields)
    theirs = set(DriverOptions.model_fields)
    renamed = {v: k for k, v in (names or {}).items()}
    values = {renamed.get(k, k): v for k, v in values.items()}
    unknown = sorted(set(values) - mine - theirs)
    if unknown:
        known = sorted((names or {}).get(f, f) for f in mine | theirs)
        raise SpecError(unknown[0], f"unknown option; known options: {', '.join(known)}")
    opts = SampleOptions.parse({k: v for k, v in values.items() if k in mine}, names=names)
    driver = DriverOptions.parse({k: v for k, v in values.items() if k in theirs}, names=names)
    return opts, driver.check(opts)
