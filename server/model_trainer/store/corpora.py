"""The corpora uploaded through the API (`POST /corpora`), per principal, newest first.

The corpus itself lives in Data Bank (content-addressed: `file_id` is its SHA-256); Redis
keeps what a picker shows of it, once per principal who uploaded it (keys.py: an entry
`<principal>/<file_id>`). Uploading the same bytes again moves the entry to the top under
its latest name. Two principals uploading the same bytes share Data Bank's one copy: each
holds an entry, and the copy goes with its last holder (`holders`).
Bytes held per principal (`corpora:bytes`, what its quota counts) change with entries, in
the same script.
"""

from __future__ import annotations

from typing import TypeVar

from pydantic import BaseModel, ConfigDict, Field
from redis import Redis

from model_trainer.store.keys import (
    CORPORA_BYTES,
    CORPORA_INDEX,
    CORPORA_INFO,
    corpora_owner_key,
    corpus_holders_key,
)
from model_trainer.store.records import as_str


class CorpusInfo(BaseModel):
    model_config = ConfigDict(extra="forbid")

    file_id: str = Field(description="the corpus in Data Bank (its SHA-256)")
    name: str = Field(description="the file name it was uploaded as")
    size: int = Field(description="bytes")
    lines: int = Field(description="lines of text (split on \\n)")
    created_at: float = Field(description="when it was last uploaded (unix seconds)")
    owner: str = Field(description="the principal (API key name) that uploaded it")


# KEYS: index, info, owner's index, bytes, holders. ARGV: owner, file_id, info JSON, size, ts.
# A new entry adds its size to the owner's bytes; the same bytes again only move it up.
_ADD = """
local entry = ARGV[1] .. '/' .. ARGV[2]
if redis.call('HEXISTS', KEYS[2], entry) == 0 then
  redis.call('HINCRBY', KEYS[4], ARGV[1], ARGV[4])
end
redis.call('HSET', KEYS[2], entry, ARGV[3])
redis.call('ZADD', KEYS[1], ARGV[5], entry)
redis.call('ZADD', KEYS[3], ARGV[5], ARGV[2])
redis.call('SADD', KEYS[5], ARGV[1])
return 1
"""

# Same KEYS; ARGV: owner, file_id. 0 when the owner holds no such entry.
_REMOVE = """
local entry = ARGV[1] .. '/' .. ARGV[2]
local info = redis.call('HGET', KEYS[2], entry)
if not info then return -1 end
redis.call('HINCRBY', KEYS[4], ARGV[1], -cjson.decode(info)['size'])
redis.call('HDEL', KEYS[2], entry)
redis.call('ZREM', KEYS[1], entry)
redis.call('ZREM', KEYS[3], ARGV[2])
redis.call('SREM', KEYS[5], ARGV[1])
return 1
"""


class CorpusCatalog:
    def __init__(self, redis: Redis) -> None:
        self._redis = redis
        self._add = redis.register_script(_ADD)
        self._remove = redis.register_script(_REMOVE)

    def _keys(self, owner: str, file_id: str) -> list[str]:
        return [
            CORPORA_INDEX,
            CORPORA_INFO,
            corpora_owner_key(owner),
            CORPORA_BYTES,
            corpus_holders_key(file_id),
        ]

    def add(self, info: CorpusInfo) -> None:
        args: list[str | int | float] = [
            info.owner,
            info.file_id,
            info.model_dump_json(),
            info.size,
            info.created_at,
        ]
        self._add(keys=self._keys(info.owner, info.file_id), args=args)

    def remove(self, owner: str, file_id: str) -> bool:
        """Drop `owner`'s entry; False when it had none."""
        return bool(self._remove(keys=self._keys(owner, file_id), args=[owner, file_id]))

    def holders(self, file_id: str) -> list[str]:
        members = self._redis.smembers(corpus_holders_key(file_id))
        return sorted(s for s in (as_str(m) for m in members) if s)

    def bytes_held(self, owner: str) -> int:
        return int(as_str(self._redis.hget(CORPORA_BYTES, owner)) or 0)

    def page(
        self, offset: int, limit: int, owner: str | None = None
    ) -> tuple[list[CorpusInfo], int]:
        """Newest first: one page and the total count; of one owner's, when given."""
        index = CORPORA_INDEX if owner is None else corpora_owner_key(owner)
        return catalog_page(self._redis, index, CORPORA_INFO, owner, offset, limit, CorpusInfo)


InfoT = TypeVar("InfoT", bound=BaseModel)


def catalog_page(
    redis: Redis,
    index: str,
    info_key: str,
    owner: str | None,
    offset: int,
    limit: int,
    model: type[InfoT],
) -> tuple[list[InfoT], int]:
    """One page of a per-principal catalog (corpora, base models), newest first, and its
    total: `index` holds `<principal>/<file_id>` entries (everyone's) or, for one `owner`,
    bare file ids; `info_key` the entries' JSON."""
    pipe = redis.pipeline(transaction=False)
    pipe.zrevrange(index, offset, offset + limit - 1)
    pipe.zcard(index)
    members, total = pipe.execute()
    ids = [i for i in (as_str(m) for m in members) if i]
    if not ids:
        return [], int(total)
    entries = ids if owner is None else [f"{owner}/{file_id}" for file_id in ids]
    raw = redis.hmget(info_key, entries)
    return [model.model_validate_json(v) for v in (as_str(r) for r in raw) if v], int(total)
