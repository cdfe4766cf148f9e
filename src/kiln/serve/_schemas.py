"""Request and response bodies of the gateway, declared once for validation, OpenAPI and docs.

Strings are ``StrictStr``: a number where a text belongs is an error naming the item, not a
text "1". Limits that depend on the server's settings (texts per request, characters per text)
are checked in the endpoints, which answer 413 naming the field.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr

Strategy = Literal["round_robin", "least_loaded", "consistent_hash"]


class InferRequest(BaseModel):
    """The seed's request: texts and a model name."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={
        "examples": [{"texts": ["a cluster of GPUs", "one API"], "model": "default"}]})

    texts: list[StrictStr] = Field(min_length=1, description="texts to embed, at least one")
    model: StrictStr = Field("default", min_length=1,
                             description="default, large, multilingual (when on the nodes)")


class InferResponse(BaseModel):
    embeddings: list[list[float]]
    node: str = Field(description="the node that answered (several, comma-separated, when the "
                                  "texts were spread; the gateway's own name after a fallback)")
    cached: int = Field(description="texts served from an agent's cache")
    truncated: int = Field(0, description="texts cut at the model's maximum length")
    tokens: int = 0
    fallback: bool = Field(False, description="true when encoded in the gateway process")


class ParallelResponse(BaseModel):
    embeddings: list[list[float]]
    nodes_used: int
    nodes: list[str] = []
    cached: int = 0
    truncated: int = 0
    fallback: bool = False


class EmbeddingsRequest(BaseModel):
    """OpenAI's ``POST /v1/embeddings`` body: texts, or token ids of the model's tokenizer."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={
        "examples": [{"input": ["hello"], "model": "default", "encoding_format": "float"}]})

    input: StrictStr | list[StrictStr] | list[StrictInt] | list[list[StrictInt]] = Field(
        description="a text, a list of texts, or token ids (a list, or a list of lists) from "
                    "the model's own tokenizer")
    model: StrictStr = Field("default", min_length=1)
    encoding_format: Literal["float", "base64"] = "float"
    user: StrictStr | None = None


class EmbeddingItem(BaseModel):
    object: Literal["embedding"] = "embedding"
    embedding: list[float] | str = Field(description="floats, or base64 of little-endian float32")
    index: int


class Usage(BaseModel):
    prompt_tokens: int
    total_tokens: int


class EmbeddingsResponse(BaseModel):
    object: Literal["list"] = "list"
    data: list[EmbeddingItem]
    model: str
    usage: Usage


class AgentStatus(BaseModel):
    name: str
    node: str
    device: str
    status: Literal["online", "offline"]
    error: str | None = None
    models_loaded: list[str] = []
    dims: dict[str, int] = {}
    memory: dict[str, Any] = {}
    cache: dict[str, Any] = {}
    queue_depth: int = 0
    info: dict[str, Any] = {}


class ClusterResponse(BaseModel):
    gateway: dict[str, Any]
    agents: list[AgentStatus]
    totals: dict[str, Any]


class HealthResponse(BaseModel):
    status: Literal["ok", "degraded"] = Field(description="degraded: no agent is ready")
    agents_ready: int
    fallback: bool
    cluster: Literal["attached", "lost", "detached", "off"]


class ModelObject(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int = 0
    owned_by: str = "kiln"


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelObject]


class ErrorBody(BaseModel):
    type: str
    message: str
    field: str | None = None


class ErrorResponse(BaseModel):
    error: ErrorBody
