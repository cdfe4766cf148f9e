"""OpenAI's embeddings API: ``/v1/embeddings`` and ``/v1/models``, as the official clients use it.

``input`` is a text, a list of texts, or token ids (a list of ints, or a list of such lists):
LangChain's ``OpenAIEmbeddings`` sends token ids by default (it tokenizes with tiktoken first).
Ids are decoded with the requested model's own tokenizer, loaded once from the model's
directory on the gateway's machine; ids from another tokenizer (tiktoken's) decode to other
text, which is why the error for ids that do not fit says how to make the client send text.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import threading
from typing import Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import Response

from kiln.serve._embed_api import KEYED, check, json_response, run, served
from kiln.serve._gateway import Outcome
from kiln.serve._middleware import ApiError
from kiln.serve._schemas import (
    EmbeddingsRequest,
    EmbeddingsResponse,
    ModelList,
    ModelObject,
    Strategy,
)

log = logging.getLogger("kiln.serve")

router = APIRouter(dependencies=KEYED)
_SEND_TEXT = ("send text instead (LangChain: OpenAIEmbeddings(check_embedding_ctx_length=False); "
              "the openai client sends text as given)")
_tokenizers: dict[str, Any] = {}
_tokenizers_lock = threading.Lock()


@router.post("/v1/embeddings", response_model=EmbeddingsResponse)
async def embeddings(request: Request, body: EmbeddingsRequest,
                     strategy: Strategy | None = Query(None)) -> Response:
    """OpenAI-compatible embeddings (``input``: a text, texts, or token ids; float or base64)."""
    texts = await _texts(request, body.input, body.model)
    s = served(request)
    check(s, texts, body.model, "input")
    out = await run(s, "/v1/embeddings", texts, body.model, strategy)
    return json_response(embeddings_body(out, body.model, body.encoding_format), out)


def embeddings_body(out: Outcome, model: str, encoding_format: str) -> dict[str, Any]:
    """``/v1/embeddings``' answer (``EmbeddingsResponse``)."""
    data = []
    for i, vector in enumerate(out.embeddings):
        value: Any = (base64.b64encode(vector.astype("<f4").tobytes()).decode("ascii")
                      if encoding_format == "base64" else vector)
        data.append({"object": "embedding", "embedding": value, "index": i})
    return {"object": "list", "data": data, "model": model,
            "usage": {"prompt_tokens": out.tokens, "total_tokens": out.tokens}}


@router.get("/v1/models", response_model=ModelList)
async def models(request: Request) -> Response:
    """The model names this gateway serves (``client.models.list()``)."""
    return json_response({"object": "list", "data": [_model(m) for m in served(request).models]})


@router.get("/v1/models/{model}", response_model=ModelObject)
async def model(request: Request, model: str) -> Response:
    """One model (``client.models.retrieve(name)``); 404 naming the served ones."""
    names = served(request).models
    if model not in names:
        raise ApiError(404, "model_not_found", f"model: unknown model {model!r}; this gateway "
                       f"serves {', '.join(names)}", "model")
    return json_response(_model(model))


def _model(name: str) -> dict[str, Any]:
    return {"id": name, "object": "model", "created": 0, "owned_by": "kiln"}


async def _texts(request: Request, given: Any, model: str) -> list[str]:
    if isinstance(given, str):
        return [given]
    if not given or isinstance(given[0], str):
        return list(given)
    rows = [given] if isinstance(given[0], int) else given
    if model not in served(request).models:
        raise ApiError(422, "model_not_available", f"model: unknown model {model!r}", "model")
    try:
        tokenizer = await asyncio.to_thread(_tokenizer, model)
    except Exception as err:  # noqa: BLE001 - loading a tokenizer can fail many ways; the
        # client gets the type only (no server details in a response), the log the whole error
        log.warning("tokenizer of model %r: %r", model, err)
        raise ApiError(422, "token_ids_not_supported", f"input: token ids for model {model!r} "
                       f"cannot be decoded on this gateway ({type(err).__name__}); "
                       + _SEND_TEXT, "input") from None
    size = len(tokenizer)
    texts = []
    for i, ids in enumerate(rows):
        where = f"input[{i}]" if rows is given else "input"
        bad = next((j for j, t in enumerate(ids) if not 0 <= t < size), None)
        if bad is not None:
            raise ApiError(422, "invalid_token_ids", f"{where}[{bad}]: token id {ids[bad]} is "
                           f"not in the vocabulary of {model!r} ({size} ids); token ids must "
                           f"come from the model's own tokenizer, or {_SEND_TEXT}",
                           f"{where}[{bad}]")
        texts.append(tokenizer.decode(ids, skip_special_tokens=True))
    return texts


def _tokenizer(model: str) -> Any:
    with _tokenizers_lock:
        if model not in _tokenizers:
            from transformers import AutoTokenizer

            from kiln.embeddings import resolve, set_offline

            set_offline()
            _tokenizers[model] = AutoTokenizer.from_pretrained(resolve(model).path)
        return _tokenizers[model]
