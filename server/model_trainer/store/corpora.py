"""The corpora uploaded through the API (`POST /corpora`), newest first, for pickers.

The corpus itself lives in Data Bank (content-addressed: `file_id` is its SHA-256); Redis
keeps what a picker shows of it. Uploading the same bytes again moves it to the top under
its latest name.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field
from redis import Redis

from model_trainer.store.keys import CORPORA_INDEX, CORPORA_INFO
from model_trainer.store.records import as_str


class CorpusInfo(BaseModel):
    model_config = ConfigDict(extra="forbid")

    file_id: str = Field(description="the corpus in Data Bank (its SHA-256)")
    name: str = Field(description="the file name it was uploaded as")
    size: int = Field(description="bytes")
    lines: int = Field(description="lines of text (split on \\n)")
    created_at: float = Field(description="when it was last uploaded (unix seconds)")


class CorpusCatalog:
    def __init__(self, redis: Redis) -> None:
        self._redis = redis

    def add(self, info: CorpusInfo) -> None:
        pipe = self._redis.pipeline(transaction=True)
        pipe.hset(CORPORA_INFO, info.file_id, info.model_dump_json())
        pipe.zadd(CORPORA_INDEX, {info.file_id: info.created_at})
        pipe.execute()

    def page(self, offset: int, limit: int) -> tuple[list[CorpusInfo], int]:
        """Newest first: one page and the total count."""
        pipe = self._redis.pipeline(transaction=False)
        pipe.zrevrange(CORPORA_INDEX, offset, offset + limit - 1)
        pipe.zcard(CORPORA_INDEX)
        members, total = pipe.execute()
        ids = [i for i in (as_str(m) for m in members) if i]
        if not ids:
            return [], int(total)
        raw = self._redis.hmget(CORPORA_INFO, ids)
        infos = [CorpusInfo.model_validate_json(v) for v in (as_str(r) for r in raw) if v]
        return infos, int(total)
