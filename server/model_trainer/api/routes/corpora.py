"""`/corpora`: upload a text corpus to Data Bank through the API, list those uploaded so,
delete one."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request, Response, status
from starlette.concurrency import run_in_threadpool

from model_trainer.api.auth import Me
from model_trainer.api.corpus_upload import delete_corpus, receive_corpus
from model_trainer.api.deps import Ctx
from model_trainer.api.errors import ErrorBody, error_responses
from model_trainer.api.ids import FileId
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
        **error_responses(400, 413, 422, 429),
        400: {"model": ErrorBody, "description": "the upload ended before the whole body"},
    },
    openapi_extra=_FILE_BODY,
)
async def upload_corpus(
    request: Request,
    ctx: Ctx,
    who: Me,
    name: Annotated[
        str, Query(min_length=1, max_length=200, pattern=r"^[^/\\\x00-\x1f]+$")
    ] = "corpus.txt",
) -> CorpusInfo:
    """Upload a corpus (the body is the file's bytes) to Data Bank; answers its `file_id`
    for `corpus_file_id`. 413 past `limits.corpus_upload_max_bytes` (256 MiB by default;
    larger corpora go to Data Bank directly); 422 when it is empty, only whitespace, not
    UTF-8 or has a line past `app.corpus_max_line_bytes`; 429 past the key's submissions per
    minute or corpus bytes (quotas); 503 when Data Bank is unavailable."""
    content_type = request.headers.get("content-type")
    return await receive_corpus(ctx, request.stream(), name, content_type, who)


@router.get("")
def list_corpora(
    ctx: Ctx,
    who: Me,
    offset: Annotated[int, Query(ge=0, le=MAX_OFFSET)] = 0,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
) -> CorpusList:
    """Corpora uploaded through `POST /corpora`, most recently uploaded first: the key's own
    (an admin's: everyone's, one entry per principal who uploaded it)."""
    items, total = CorpusCatalog(ctx.redis).page(offset, limit, who.scope)
    return CorpusList(items=items, page=Page(offset=offset, limit=limit, total=total))


@router.delete("/{file_id}", status_code=status.HTTP_204_NO_CONTENT, responses=error_responses(404))
async def remove_corpus(file_id: FileId, ctx: Ctx, who: Me) -> Response:
    """Delete a corpus uploaded through `POST /corpora`: the key's own entry (an admin's:
    everyone's), and the file in Data Bank once no other key holds it. Jobs that still use it
    fail when they next read it. 404 when the key holds no such corpus; 503 when Data Bank
    is unavailable (nothing is removed then)."""
    await run_in_threadpool(delete_corpus, ctx, file_id, who)
    return Response(status_code=status.HTTP_204_NO_CONTENT)
