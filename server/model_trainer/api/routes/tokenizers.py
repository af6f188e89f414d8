"""`/tokenizers`: train (idempotent by request), status, list, artifact pointer."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, status

from model_trainer.api import services
from model_trainer.api.auth import Me, Principal
from model_trainer.api.deps import Ctx
from model_trainer.api.errors import error_responses
from model_trainer.api.ids import TokenizerId
from model_trainer.api.schemas import (
    ArtifactPointer,
    ListQuery,
    TokenizerAccepted,
    TokenizerInfo,
    TokenizerList,
    TokenizerRequest,
    WebhookDeliveries,
)
from model_trainer.errors import NotFoundError
from model_trainer.store.records import Record, TokenizerSummary

router = APIRouter(prefix="/tokenizers", tags=["tokenizers"])


@router.post("/train", status_code=status.HTTP_202_ACCEPTED, responses=error_responses(404, 422))
def train_tokenizer(request: TokenizerRequest, ctx: Ctx, who: Me) -> TokenizerAccepted:
    """The same request twice is the same tokenizer (its id hashes the config), whoever
    asks it. 404 if the corpus is not in Data Bank."""
    return services.submit_tokenizer(ctx, request, who)


@router.get("")
def list_tokenizers(ctx: Ctx, who: Me, query: Annotated[ListQuery, Depends()]) -> TokenizerList:
    ids, total = query.ids(ctx.tokenizers, who.scope)
    records = [r for r in ctx.tokenizers.records(ids) if r is not None]
    return TokenizerList(
        items=[TokenizerInfo.from_record(r) for r in records], page=query.page(total)
    )


@router.get("/{tokenizer_id}", responses=error_responses(404))
def get_tokenizer(tokenizer_id: TokenizerId, ctx: Ctx, who: Me) -> TokenizerInfo:
    return TokenizerInfo.from_record(_require(ctx, tokenizer_id, who))


@router.get("/{tokenizer_id}/artifact", responses=error_responses(404))
def tokenizer_artifact(tokenizer_id: TokenizerId, ctx: Ctx, who: Me) -> ArtifactPointer:
    tokenizer = ctx.tokenizers.record(tokenizer_id, who.scope)
    file_id = tokenizer.file_id if tokenizer else None
    if file_id is None:
        raise NotFoundError(f"no artifact for tokenizer {tokenizer_id!r} (unknown, or not done)")
    return ArtifactPointer(file_id=file_id)


@router.get("/{tokenizer_id}/webhooks", responses=error_responses(404))
def tokenizer_webhooks(tokenizer_id: TokenizerId, ctx: Ctx, who: Me) -> WebhookDeliveries:
    """The webhook deliveries of the tokenizer job's end, each with its attempts."""
    _require(ctx, tokenizer_id, who)
    return services.webhook_deliveries(ctx, tokenizer_id)


def _require(ctx: Ctx, tokenizer_id: str, who: Principal) -> Record[TokenizerSummary]:
    """The tokenizer, if `who` may see it; else 404, as for an unknown id."""
    record = ctx.tokenizers.record(tokenizer_id, who.scope)
    if record is None:
        raise NotFoundError(f"unknown tokenizer {tokenizer_id!r}")
    return record
