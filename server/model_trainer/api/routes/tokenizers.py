"""Tokenizer training: submit (idempotent by request), status, list."""

from __future__ import annotations

import json
import time
from typing import Annotated

from fastapi import APIRouter, Query, status

from model_trainer.api.deps import Ctx, artifact_available, require_corpus
from model_trainer.api.schemas import (
    Page,
    TokenizerAccepted,
    TokenizerInfo,
    TokenizerList,
    json_object,
)
from model_trainer.errors import NotFoundError
from model_trainer.job_queue import JobName
from model_trainer.payloads import TokenizerJob
from model_trainer.status_store import Status, StatusStore
from model_trainer.tokenization.config import TokenizerTrainConfig

router = APIRouter(tags=["tokenizers"])


@router.post("/tokenizers/train", status_code=status.HTTP_202_ACCEPTED)
def train_tokenizer(config: TokenizerTrainConfig, ctx: Ctx) -> TokenizerAccepted:
    tokenizer_id = config.tokenizer_id()
    store = ctx.tokenizers
    current = store.status(tokenizer_id)
    if current is Status.COMPLETED and not artifact_available(ctx, store.file_id(tokenizer_id)):
        current = Status.FAILED  # its artifact is gone from Data Bank: train it again
    # The same request twice is the same tokenizer: answer its current state instead of
    # training it again. Only a failed or cancelled one is trained anew.
    if current is not None and current not in (Status.FAILED, Status.CANCELLED):
        return TokenizerAccepted(tokenizer_id=tokenizer_id, job_id=tokenizer_id, status=current)
    require_corpus(ctx, config.corpus_file_id)
    meta = json.dumps({"created_at": time.time(), "request": config.model_dump(mode="json")})
    if current is not None:
        store.reset(tokenizer_id, meta)
    elif not store.create(tokenizer_id, meta):
        # Another request created it between our read and write.
        latest = store.status(tokenizer_id) or Status.QUEUED
        return TokenizerAccepted(tokenizer_id=tokenizer_id, job_id=tokenizer_id, status=latest)
    payload = TokenizerJob(tokenizer_id=tokenizer_id, config=config)
    job_id = ctx.queue.enqueue(JobName.TRAIN_TOKENIZER, payload, job_id=tokenizer_id)
    return TokenizerAccepted(tokenizer_id=tokenizer_id, job_id=job_id, status=Status.QUEUED)


@router.get("/tokenizers/{tokenizer_id}")
def get_tokenizer(tokenizer_id: str, ctx: Ctx) -> TokenizerInfo:
    info = tokenizer_info(ctx.tokenizers, tokenizer_id)
    if info is None:
        raise NotFoundError(f"unknown tokenizer {tokenizer_id!r}")
    return info


@router.get("/tokenizers")
def list_tokenizers(
    ctx: Ctx,
    offset: Annotated[int, Query(ge=0)] = 0,
    limit: Annotated[int, Query(ge=1, le=200)] = 20,
) -> TokenizerList:
    ids, total = ctx.tokenizers.list_ids(offset, limit)
    items = [i for i in (tokenizer_info(ctx.tokenizers, t) for t in ids) if i is not None]
    return TokenizerList(items=items, page=Page(offset=offset, limit=limit, total=total))


def tokenizer_info(store: StatusStore, tokenizer_id: str) -> TokenizerInfo | None:
    current = store.status(tokenizer_id)
    if current is None:
        return None
    meta = json_object(store.meta(tokenizer_id))
    result = json_object(store.progress(tokenizer_id))
    stats = result.get("stats")
    timings = result.get("timings")
    created = meta.get("created_at")
    request = meta.get("request")
    return TokenizerInfo(
        tokenizer_id=tokenizer_id,
        status=current,
        message=store.message(tokenizer_id),
        created_at=float(created) if isinstance(created, int | float) else None,
        last_heartbeat_ts=store.last_heartbeat(tokenizer_id),
        request=request if isinstance(request, dict) else None,
        stats=stats if isinstance(stats, dict) else None,
        timings=(
            {k: float(v) for k, v in timings.items() if isinstance(v, int | float)}
            if isinstance(timings, dict)
            else None
        ),
        file_id=store.file_id(tokenizer_id),
    )
