"""`/models`: base models to fine-tune. Upload a tar of a transformers model folder (checked,
then stored in Data Bank), list those uploaded. (A tar put in Data Bank directly is read at
its first run's submit.)"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request, status

from model_trainer.api.auth import Me
from model_trainer.api.base_models import receive_model
from model_trainer.api.deps import Ctx
from model_trainer.api.errors import ErrorBody, error_responses
from model_trainer.api.schemas import MAX_OFFSET, ModelList, Page
from model_trainer.store.base_models import ModelCatalog, ModelInfo

router = APIRouter(prefix="/models", tags=["models"])

UPLOAD_PATH = "/models"

# The body is the tar itself, not JSON: documented by hand (FastAPI sees no body parameter).
_TAR_BODY: dict[str, object] = {
    "requestBody": {
        "required": True,
        "description": "a plain (uncompressed) tar of a transformers model folder: "
        "config.json, safetensors weights, tokenizer.json and its config",
        "content": {
            "application/x-tar": {"schema": {"type": "string", "format": "binary"}},
            "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
        },
    }
}


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    responses={
        **error_responses(400, 413, 422, 429),
        400: {"model": ErrorBody, "description": "the upload ended before the whole body"},
    },
    openapi_extra=_TAR_BODY,
)
async def upload_model(
    request: Request,
    ctx: Ctx,
    who: Me,
    name: Annotated[
        str, Query(min_length=1, max_length=200, pattern=r"^[^/\\\x00-\x1f]+$")
    ] = "model.tar",
) -> ModelInfo:
    """Upload a base model (the body is the tar's bytes) to Data Bank; answers its `file_id`
    for a run's `base_model`, and what the folder holds. 422 when it is not a causal
    language model, holds pickle-based weights (never opened), no safetensors or no
    tokenizer.json; 413 past `limits.model_upload_max_bytes`; 503 when Data Bank is
    unavailable."""
    content_type = request.headers.get("content-type")
    return await receive_model(ctx, request.stream(), name, content_type, who)


@router.get("")
def list_models(
    ctx: Ctx,
    who: Me,
    offset: Annotated[int, Query(ge=0, le=MAX_OFFSET)] = 0,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
) -> ModelList:
    """Base models uploaded through `POST /models`, most recent first: the key's own (an
    admin's: everyone's)."""
    items, total = ModelCatalog(ctx.redis).page(offset, limit, who.scope)
    return ModelList(items=items, page=Page(offset=offset, limit=limit, total=total))
