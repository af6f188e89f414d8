"""`/corpora`: upload a text corpus to Data Bank through the API, and list those uploaded so."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request, status

from model_trainer.api.corpus_upload import receive_corpus
from model_trainer.api.deps import Ctx
from model_trainer.api.errors import ErrorBody, error_responses
from model_trainer.api.schemas import MAX_OFFSET, CorpusInfo, CorpusList, Page
from model_trainer.store.corpora import CorpusCatalog

router = APIRouter(prefix="/corpora", tags=["corpora"])

UPLOAD_PATH = "/corpora"

# The body is the file itself, not JSON: documented by hand (FastAPI sees no body parameter).
_FILE_BODY: dict[str, object] = {
    "requestBody": {
        "required": True,
        "description": "the corpus: UTF-8 text, one document, paragraph or sentence per line",
        "content": {
            "text/plain": {"schema": {"type": "string", "format": "binary"}},
            "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
        },
    }
}


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    responses={
        **error_responses(400, 413, 422),
        400: {"model": ErrorBody, "description": "the upload ended before the whole body"},
    },
    openapi_extra=_FILE_BODY,
)
async def upload_corpus(
    request: Request,
    ctx: Ctx,
    name: Annotated[
        str, Query(min_length=1, max_length=200, pattern=r"^[^/\\\x00-\x1f]+$")
    ] = "corpus.txt",
) -> CorpusInfo:
    """Upload a corpus (the body is the file's bytes) to Data Bank; answers its `file_id`
    for `corpus_file_id`. 413 past `limits.corpus_upload_max_bytes` (256 MiB by default;
    larger corpora go to Data Bank directly); 422 when it is empty, only whitespace, not
    UTF-8 or has a line past `app.corpus_max_line_bytes`; 503 when Data Bank is unavailable."""
    return await receive_corpus(ctx, request.stream(), name, request.headers.get("content-type"))


@router.get("")
def list_corpora(
    ctx: Ctx,
    offset: Annotated[int, Query(ge=0, le=MAX_OFFSET)] = 0,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
) -> CorpusList:
    """Corpora uploaded through `POST /corpora`, most recently uploaded first."""
    items, total = CorpusCatalog(ctx.redis).page(offset, limit)
    return CorpusList(items=items, page=Page(offset=offset, limit=limit, total=total))
