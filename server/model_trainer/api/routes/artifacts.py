"""Artifact pointers: where in Data Bank a run's or tokenizer's tarball lives.

The API never proxies the file: clients download it from Data Bank by `file_id`.
"""

from __future__ import annotations

from typing import Literal

from fastapi import APIRouter
from pydantic import BaseModel, ConfigDict

from model_trainer.api.deps import Ctx
from model_trainer.errors import NotFoundError
from model_trainer.status_store import StatusStore

router = APIRouter(tags=["artifacts"])


class ArtifactPointer(BaseModel):
    model_config = ConfigDict(extra="forbid")

    storage: Literal["data-bank"] = "data-bank"
    file_id: str


def _pointer(store: StatusStore, record_id: str, kind: str) -> ArtifactPointer:
    file_id = store.file_id(record_id)
    if file_id is None:
        raise NotFoundError(f"no artifact for {kind} {record_id!r} (unknown id, or not finished)")
    return ArtifactPointer(file_id=file_id)


@router.get("/runs/{run_id}/artifact", response_model=ArtifactPointer)
def run_artifact(run_id: str, ctx: Ctx) -> ArtifactPointer:
    return _pointer(ctx.runs, run_id, "run")


@router.get("/tokenizers/{tokenizer_id}/artifact", response_model=ArtifactPointer)
def tokenizer_artifact(tokenizer_id: str, ctx: Ctx) -> ArtifactPointer:
    return _pointer(ctx.tokenizers, tokenizer_id, "tokenizer")
