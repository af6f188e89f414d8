"""Base models to fine-tune (`POST /models`), per principal, newest first; and what each
tar holds (`pretrained.ModelFolder`), read once per Data Bank id.

The tar lives in Data Bank (content-addressed); Redis keeps, per principal who uploaded it,
its name and what it is (keys.py: `models:*`), as `CorpusCatalog` does for corpora.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field
from redis import Redis

from model_trainer.pretrained import ModelFolder
from model_trainer.store.corpora import catalog_page
from model_trainer.store.keys import MODELS_INDEX, MODELS_INFO, MODELS_INSPECTED, models_owner_key
from model_trainer.store.records import as_str


class ModelInfo(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    file_id: str = Field(description="the tar in Data Bank (its SHA-256): a run's base_model")
    name: str = Field(description="the name it was uploaded as")
    size: int = Field(description="bytes of the tar")
    created_at: float = Field(description="when it was last uploaded (unix seconds)")
    owner: str = Field(description="the principal (API key name) that uploaded it")
    model: ModelFolder = Field(description="what the folder holds")


class ModelCatalog:
    def __init__(self, redis: Redis) -> None:
        self._redis = redis

    def add(self, info: ModelInfo) -> None:
        entry = f"{info.owner}/{info.file_id}"
        pipe = self._redis.pipeline(transaction=True)
        pipe.hset(MODELS_INFO, entry, info.model_dump_json())
        pipe.zadd(MODELS_INDEX, {entry: info.created_at})
        pipe.zadd(models_owner_key(info.owner), {info.file_id: info.created_at})
        pipe.hset(MODELS_INSPECTED, info.file_id, info.model.model_dump_json())
        pipe.execute()

    def page(
        self, offset: int, limit: int, owner: str | None = None
    ) -> tuple[list[ModelInfo], int]:
        """Newest first: one page and the total count; of one owner's, when given."""
        index = MODELS_INDEX if owner is None else models_owner_key(owner)
        return catalog_page(self._redis, index, MODELS_INFO, owner, offset, limit, ModelInfo)

    def inspected(self, file_id: str) -> ModelFolder | None:
        raw = as_str(self._redis.hget(MODELS_INSPECTED, file_id))
        return ModelFolder.model_validate_json(raw) if raw else None

    def remember(self, file_id: str, folder: ModelFolder) -> None:
        self._redis.hset(MODELS_INSPECTED, file_id, folder.model_dump_json())
