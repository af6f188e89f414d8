"""`/tokenizers`: train (idempotent by request), status, list, artifact pointer."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, status

from model_trainer.api import services
from model_trainer.api.deps import Ctx
from model_trainer.api.errors import error_responses
from model_trainer.api.ids import TokenizerId
from model_trainer.api.schemas import (
    MAX_OFFSET,
    ArtifactPointer,
    Page,
    TokenizerAccepted,
    TokenizerInfo,
    TokenizerList,
)
from model_trainer.errors import NotFoundError
from model_trainer.store.records import Record, TokenizerSummary
from model_trainer.tokenization.config import TokenizerTrainConfig

router = APIRouter(prefix="/tokenizers", tags=["tokenizers"])


@router.post("/train", status_code=status.HTTP_202_ACCEPTED, responses=error_responses(404, 422))
def train_tokenizer(config: TokenizerTrainConfig, ctx: Ctx) -> TokenizerAccepted:
    """The same request twice is the same tokenizer (its id hashes the request). 404 if the
    corpus is not in Data Bank."""
    return services.submit_tokenizer(ctx, config)


@router.get("")
def list_tokenizers(
    ctx: Ctx,
    offset: Annotated[int, Query(ge=0, le=MAX_OFFSET)] = 0,
    limit: Annotated[int, Query(ge=1, le=200)] = 20,
) -> TokenizerList:
    ids, total = ctx.tokenizers.list_ids(offset, limit)
    records = [r for r in ctx.tokenizers.records(ids) if r is not None]
    return TokenizerList(
        items=[TokenizerInfo.from_record(r) for r in records],
        page=Page(offset=offset, limit=limit, total=total),
    )


@router.get("/{tokenizer_id}", responses=error_responses(404))
def get_tokenizer(tokenizer_id: TokenizerId, ctx: Ctx) -> TokenizerInfo:
    return TokenizerInfo.from_record(_require(ctx, tokenizer_id))


@router.get("/{tokenizer_id}/artifact", responses=error_responses(404))
def tokenizer_artifact(tokenizer_id: TokenizerId, ctx: Ctx) -> ArtifactPointer:
    file_id = ctx.tokenizers.file_id(tokenizer_id)
    if file_id is None:
        raise NotFoundError(f"no artifact for tokenizer {tokenizer_id!r} (unknown, or not done)")
    return ArtifactPointer(file_id=file_id)


def _require(ctx: Ctx, tokenizer_id: str) -> Record[TokenizerSummary]:
    record = ctx.tokenizers.record(tokenizer_id)
    if record is None:
        raise NotFoundError(f"unknown tokenizer {tokenizer_id!r}")
    return record
