"""Download a tar artifact from Data Bank and extract it safely: shared by worker and API.

Artifacts are ours, but a tar from Data Bank is still input: it must be a plain tar within
`artifact_max_members` and `artifact_max_bytes` (checked against its size before the
download and against its headers before extraction). A refused artifact is the user's to
replace (`UserError`); a refused or failed fetch leaves nothing behind.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from pathlib import Path

from model_trainer.databank.archive import safe_extract
from model_trainer.databank.client import DataBankClient
from model_trainer.databank.errors import NotFound
from model_trainer.errors import UnsafeArchiveError, UserError
from model_trainer.settings import AppSettings

# Tar headers and padding around the contents: a member's header (a PAX one for long names
# besides) and its padding to 512 bytes, and the end-of-archive record.
_TAR_OVERHEAD_PER_MEMBER = 4096
_TAR_OVERHEAD = 64 * 1024


def most_artifact_bytes(app: AppSettings) -> int:
    """The largest tar (or file) an artifact of ours may be."""
    return (
        app.artifact_max_bytes
        + app.artifact_max_members * _TAR_OVERHEAD_PER_MEMBER
        + (_TAR_OVERHEAD)
    )


def fetch_extracted(
    databank: DataBankClient, app: AppSettings, root: Path, file_id: str, kind: str, record_id: str
) -> Path:
    """The top folder of artifact `file_id` extracted under `root/record_id/file_id`
    (downloaded only if it is not there yet)."""
    target = root / record_id / file_id
    if target.exists():
        return single_child(target)
    what = f"the artifact of {kind} {record_id} ({file_id})"
    gone = f"{what} is not in Data Bank any more: train the {kind} again"
    try:
        size = databank.head(file_id).size
    except NotFound as exc:
        raise UserError(gone) from exc
    if size > most_artifact_bytes(app):
        raise UserError(
            f"{what} is refused: {size} bytes, more than an artifact may hold "
            f"(artifact_max_bytes {app.artifact_max_bytes}); train the {kind} again"
        )
    root.mkdir(parents=True, exist_ok=True)
    # One download file per process: processes sharing a disk never unlink each other's.
    tar = root / f".{file_id}.{os.getpid()}.tar"
    try:
        databank.download(file_id, tar)
        safe_extract(
            tar,
            target,
            max_members=app.artifact_max_members,
            max_total_bytes=app.artifact_max_bytes,
        )
        return single_child(target)
    except NotFound as exc:
        raise UserError(gone) from exc
    except UnsafeArchiveError as exc:
        shutil.rmtree(target, ignore_errors=True)  # extracted, but not shaped as ours
        raise UserError(f"{what} is refused: {exc}; train the {kind} again") from exc
    finally:
        tar.unlink(missing_ok=True)
        with contextlib.suppress(OSError):  # left by a refusal; not empty once extracted
            target.parent.rmdir()


def single_child(folder: Path) -> Path:
    """Our tars have one top folder (`tokenizer-<id>/`, `model-<id>/`); a base model's tar
    (uploaded by a user) may hold the model folder's files at its top instead."""
    children = list(folder.iterdir())
    if (folder / "config.json").is_file():
        return folder
    if len(children) != 1 or not children[0].is_dir():
        names = sorted(p.name for p in children)[:5]
        raise UnsafeArchiveError(f"an artifact holds one top folder, not {names}")
    return children[0]
