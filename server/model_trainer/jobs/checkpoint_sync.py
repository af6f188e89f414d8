"""A run's checkpoints in Data Bank: upload as training goes, restore on any worker.

    restore():  newest `last` checkpoint (and the `best` weights) from Data Bank into the run
                folder, unless the folder already holds the same or a newer one
    upload():   after the loop writes `last.pt`: upload it (and `best.pt` if it changed),
                then one fenced write of the index in Redis, then delete the blobs the index
                no longer names (keep the last `checkpoints_keep_last`, and the best)

An upload that fails (Data Bank down) is logged and training goes on: the next checkpoint
uploads a newer file. Uploads use a client that gives up after one retry, so an outage
costs each checkpoint seconds, not minutes.
"""

from __future__ import annotations

import contextlib
import logging
import time
from pathlib import Path

from redis.exceptions import RedisError

from model_trainer.databank.errors import DataBankError
from model_trainer.jobs.ownership import JobOwner
from model_trainer.store.checkpoints import (
    CheckpointEntry,
    CheckpointIndex,
    CheckpointKind,
    index_commands,
    read_checkpoints,
)
from model_trainer.store.keys import CHECKPOINT_UPLOAD_FAILURES
from model_trainer.training.checkpoint import (
    CheckpointFile,
    checkpoint_path,
    read_checkpoint_file,
    write_checkpoint_file,
)
from service_common.jsonlog import log_fields

log = logging.getLogger("model_trainer.jobs")


class CheckpointSync:
    def __init__(self, owner: JobOwner, run_dir: Path) -> None:
        self._owner = owner
        self._run_id = owner.job_id
        self._run_dir = run_dir
        self._keep = owner.ctx.settings.recovery.checkpoints_keep_last
        self._bank = owner.ctx.checkpoint_bank()
        self.index: CheckpointIndex = read_checkpoints(owner.ctx.redis, owner.job_id)
        self._index_saved = True
        self._to_delete: list[str] = []

    # --- restore ----------------------------------------------------------------------
    def restore(self) -> int | None:
        """Make the run folder hold the newest checkpoint; the step it is at (None: none)."""
        local = read_checkpoint_file(self._run_dir, "last")
        latest = self.index.latest()
        if latest is not None and (local is None or local.step < latest.step):
            local = self._download(latest, "last")
        best = self.index.best()
        local_best = read_checkpoint_file(self._run_dir, "best")
        if best is not None and (local_best is None or _better(best, local_best)):
            self._download(best, "best")
        return local.step if local is not None else None

    def _download(self, entry: CheckpointEntry, kind: CheckpointKind) -> CheckpointFile:
        path = checkpoint_path(self._run_dir, kind)
        started = time.monotonic()
        # The main client (with its retries): without this file the run cannot go on.
        self._owner.ctx.databank.download(entry.file_id, path)
        info = CheckpointFile(
            kind=kind,
            step=entry.step,
            val_loss=entry.val_loss,
            sha256=entry.sha256,
            size=entry.size,
            elapsed=None,
        )
        write_checkpoint_file(self._run_dir, info)
        log.info(
            "downloaded the %s checkpoint at step %d from Data Bank in %.1f s",
            kind,
            entry.step,
            time.monotonic() - started,
            extra=log_fields("checkpoint_downloaded", step=entry.step, file_id=entry.file_id),
        )
        return info

    # --- upload -----------------------------------------------------------------------
    def upload(self, last: CheckpointFile) -> None:
        """Upload the `last` checkpoint just written (and the best weights if they changed)."""
        self._owner.check()  # a worker that lost the run uploads nothing more
        files = [last]
        best = read_checkpoint_file(self._run_dir, "best")
        current_best = self.index.best()
        if best is not None and (current_best is None or current_best.sha256 != best.sha256):
            files.insert(0, best)
        try:
            for file in files:
                self._add(file, self._upload_one(file))
        except (DataBankError, OSError) as exc:
            log.warning(
                "checkpoint upload at step %d failed (%s); training goes on, the next "
                "checkpoint tries again",
                last.step,
                exc,
                extra=log_fields("checkpoint_upload_failed", step=last.step),
            )
            with contextlib.suppress(RedisError):  # a count for GET /metrics, best effort
                self._owner.ctx.redis.incr(CHECKPOINT_UPLOAD_FAILURES)
        self._save_index()

    def _upload_one(self, file: CheckpointFile) -> CheckpointEntry:
        info = self._bank.upload_file(checkpoint_path(self._run_dir, file.kind))
        return CheckpointEntry(
            step=file.step,
            kind=file.kind,
            file_id=info.file_id,
            sha256=info.sha256,
            size=info.size,
            val_loss=file.val_loss,
            created_at=time.time(),
            worker=self._owner.ctx.worker_name,
        )

    def _add(self, file: CheckpointFile, entry: CheckpointEntry) -> None:
        self.index, dropped = self.index.with_entry(entry, self._keep)
        self._to_delete.extend(d for d in dropped if d != entry.file_id)
        self._index_saved = False
        log.info(
            "checkpoint %s at step %d uploaded (%d bytes)",
            file.kind,
            file.step,
            entry.size,
            extra=log_fields("checkpoint_uploaded", step=file.step, file_id=entry.file_id),
        )

    def _save_index(self) -> None:
        if self._index_saved:
            return
        try:
            self._owner.lease.writer().write(index_commands(self._run_id, self.index))
        except RedisError as exc:
            log.warning(
                "could not record the checkpoint index (%s); will retry at the next checkpoint",
                exc,
                extra=log_fields("checkpoint_index_failed"),
            )
            return
        self._index_saved = True
        # Only blobs the saved index no longer names are deleted: a reader never finds a
        # pointer to a deleted checkpoint.
        named = {e.file_id for e in self.index.entries}
        doomed, self._to_delete = [f for f in self._to_delete if f not in named], []
        for file_id in doomed:
            try:
                self._bank.delete(file_id)
            except (DataBankError, OSError) as exc:
                log.warning("could not delete superseded checkpoint %s: %s", file_id, exc)

    def close(self) -> None:
        self._bank.close()


def _better(entry: CheckpointEntry, local: CheckpointFile) -> bool:
    """Is the indexed best checkpoint better than the one on this disk?"""
    if entry.val_loss is None or local.val_loss is None:
        return entry.step > local.step
    return entry.val_loss < local.val_loss
