"""A local cache of corpus files, each fetched from Data Bank once per machine.

`cache_dir/<file_id>` is trusted by its name alone because the only way a file gets that
name is `DataBankClient.download`'s rename after its size and SHA-256 were verified.
Processes (RQ forks a child per job) coordinate with an exclusive `flock` on a lock file
per id: the first one downloads, the others wait, re-check, and find the file in place.
"""

from __future__ import annotations

import fcntl
import logging
import time
from pathlib import Path

from model_trainer.databank.client import DataBankClient
from model_trainer.databank.errors import InvalidFileId
from service_common.databank_contract import is_file_id
from service_common.jsonlog import log_fields

log = logging.getLogger("model_trainer.databank")


class CorpusFetcher:
    def __init__(self, client: DataBankClient, cache_dir: Path) -> None:
        self._client = client
        self._cache_dir = cache_dir

    def path_for(self, file_id: str) -> Path:
        if not is_file_id(file_id):
            raise InvalidFileId(f"not a file_id (64 lowercase hex characters): {file_id[:80]!r}")
        return self._cache_dir / file_id

    def fetch(self, file_id: str) -> Path:
        """The verified local copy of `file_id`, downloading it if no process has yet."""
        final = self.path_for(file_id)
        if final.exists():
            return final
        self._cache_dir.mkdir(parents=True, exist_ok=True)
        # Lock files stay behind on purpose: removing one while another process waits on
        # it would let a third process lock a fresh file and download in parallel.
        lock_path = self._cache_dir / f".{file_id}.lock"
        with lock_path.open("a") as lock:
            waited = time.monotonic()
            fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
            try:
                if final.exists():  # another process finished while we waited
                    log.info(
                        "corpus %s fetched by another process (waited %.1fs)",
                        file_id,
                        time.monotonic() - waited,
                        extra=log_fields("corpus_cache_hit", file_id=file_id),
                    )
                    return final
                self._drop_partials(file_id)
                self._client.download(file_id, final)
            finally:
                fcntl.flock(lock.fileno(), fcntl.LOCK_UN)
        log.info("corpus %s cached", file_id, extra=log_fields("corpus_cached", file_id=file_id))
        return final

    def _drop_partials(self, file_id: str) -> None:
        # Under the lock nobody else is writing this id: any temp file is from a crash.
        for stale in self._cache_dir.glob(f".{file_id}.*.part"):
            stale.unlink(missing_ok=True)
            log.warning(
                "removed stale partial download %s",
                stale.name,
                extra=log_fields("corpus_partial_removed", file_id=file_id),
            )
