"""On-disk layout of the local Data Bank: content-addressed bytes with metadata beside them.

    DATA_ROOT/tmp/                 uploads in progress (same filesystem, so rename is atomic)
    DATA_ROOT/<id[:2]>/<id>        the bytes, named by their SHA-256
    DATA_ROOT/<id[:2]>/<id>.json   FileInfo (size, sha256, content type, created_at)

A file exists when its metadata exists. Bytes are renamed into place before the metadata and
removed after it, so whoever sees the metadata can open the bytes (short of a concurrent
delete, which then answers 404). One server process per DATA_ROOT: at start it clears
`tmp/` of uploads a previous process left behind.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import BinaryIO

from service_common.databank_contract import FileInfo

READINESS_PROBE_BYTES = b"ready?"


class FileStore:
    def __init__(self, root: Path, min_free_bytes: int) -> None:
        self.root = root
        self.tmp_dir = root / "tmp"
        self.min_free_bytes = min_free_bytes

    def prepare(self) -> None:
        """Create the folders and drop uploads a previous process left half-written."""
        self.tmp_dir.mkdir(parents=True, exist_ok=True)
        for leftover in self.tmp_dir.iterdir():
            leftover.unlink(missing_ok=True)

    def bytes_path(self, file_id: str) -> Path:
        return self.root / file_id[:2] / file_id

    def _meta_path(self, file_id: str) -> Path:
        return self.root / file_id[:2] / f"{file_id}.json"

    def info(self, file_id: str) -> FileInfo | None:
        try:
            return FileInfo.model_validate_json(self._meta_path(file_id).read_bytes())
        except FileNotFoundError:
            return None

    # -- writing -------------------------------------------------------------------------

    def new_upload(self) -> tuple[Path, BinaryIO]:
        fd, name = tempfile.mkstemp(dir=self.tmp_dir, prefix="upload-")
        return Path(name), os.fdopen(fd, "wb")

    def commit(self, temp: Path, sha256: str, size: int, content_type: str) -> FileInfo:
        """Move a complete, flushed upload into place under its hash (blocking: run in a thread).

        The caller has closed `temp` after fsync. Same bytes already stored: keep the first
        copy and its created_at, drop the new one.
        """
        existing = self.info(sha256)
        if existing is not None and self.bytes_path(sha256).exists():
            temp.unlink(missing_ok=True)
            return existing
        final = self.bytes_path(sha256)
        final.parent.mkdir(exist_ok=True)
        os.replace(temp, final)
        info = FileInfo(
            file_id=sha256,
            size=size,
            sha256=sha256,
            content_type=content_type,
            created_at=datetime.now(UTC),
        )
        _write_atomically(self._meta_path(sha256), info.model_dump_json().encode())
        _fsync_dir(final.parent)
        return info

    def delete(self, file_id: str) -> bool:
        """Remove a file; False when there was nothing to remove."""
        meta = self._meta_path(file_id)
        existed = meta.exists()
        meta.unlink(missing_ok=True)
        self.bytes_path(file_id).unlink(missing_ok=True)
        return existed

    # -- capacity ------------------------------------------------------------------------

    def free_bytes(self) -> int:
        return shutil.disk_usage(self.root).free

    def has_room_for(self, incoming: int) -> bool:
        return self.free_bytes() - incoming >= self.min_free_bytes

    def readiness_problem(self) -> str | None:
        """None when ready, else the reason the contract names."""
        try:
            self.tmp_dir.mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryFile(dir=self.tmp_dir) as probe:
                probe.write(READINESS_PROBE_BYTES)
                probe.flush()
                os.fsync(probe.fileno())
        except OSError:
            return "storage not writable"
        if not self.has_room_for(0):
            return "low disk"
        return None


def _write_atomically(path: Path, data: bytes) -> None:
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        os.replace(name, path)
    except BaseException:
        Path(name).unlink(missing_ok=True)
        raise


def _fsync_dir(folder: Path) -> None:
    # Makes the renames themselves durable; some filesystems refuse to open a folder.
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
