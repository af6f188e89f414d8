"""Corpus files from Data Bank, each fetched once per machine into the worker's disk cache.

`<cache>/corpora/<file_id>` is trusted by its name alone because the only way a file gets
that name is `DataBankClient.download`, which verifies its size and SHA-256, followed by
the cache's rename. The cache (`disk_cache.DiskCache`) makes one process download while
the others wait and find the file in place, and never evicts a corpus a job is reading.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from model_trainer.databank.client import DataBankClient
from model_trainer.databank.errors import InvalidFileId
from model_trainer.disk_cache import DiskCache
from service_common.databank_contract import is_file_id
from service_common.jsonlog import log_fields

log = logging.getLogger("model_trainer.databank")

SECTION = "corpora"


class CorpusFetcher:
    def __init__(self, client: DataBankClient, cache: DiskCache) -> None:
        self._client = client
        self._cache = cache

    @contextmanager
    def fetch(self, file_id: str) -> Iterator[Path]:
        """The verified local copy of `file_id`, downloaded if no process has yet; kept from
        eviction until the block ends."""
        if not is_file_id(file_id):
            raise InvalidFileId(f"not a file_id (64 lowercase hex characters): {file_id[:80]!r}")
        with self._cache.use(SECTION, file_id, lambda dest: self._download(file_id, dest)) as path:
            yield path

    def _download(self, file_id: str, dest: Path) -> None:
        self._client.download(file_id, dest)
        log.info("corpus %s cached", file_id, extra=log_fields("corpus_cached", file_id=file_id))
