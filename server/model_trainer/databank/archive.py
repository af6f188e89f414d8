"""Folders to tars and back, refusing anything a hostile tar could use to escape.

Plain `.tar`, not gzip: what we ship is model weights and tokenizer files, float tensors
that gzip shrinks by a few percent at best, while gzip on a 2-core box runs at tens of MB/s
and would be the slowest step of every multi-GB upload and download.

Packing is reproducible for the same tree and mtimes (sorted entries, owner stripped), so
the same artifact gets the same content-addressed id.

Extraction reads plain tar only: a compressed file (gzip, bzip2, xz, zstd...) is refused
before a byte is decompressed, so a small upload cannot expand into gigabytes on our disk,
and the caps on members and bytes are checked against the headers before anything is written.
"""

from __future__ import annotations

import os
import re
import shutil
import stat
import tarfile
import tempfile
from collections.abc import Iterator
from pathlib import Path, PurePosixPath

from model_trainer.errors import UnsafeArchiveError

_TOP_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,199}$")


# The first bytes of compressed formats (tarfile's "r:*" would decompress several of them),
# named in the refusal. None of them can start a tar, which opens with a member's name.
_COMPRESSED_MAGIC: tuple[tuple[re.Pattern[bytes], str], ...] = (
    (re.compile(rb"\x1f\x8b"), "gzip"),
    (re.compile(rb"BZh[1-9]1AY&SY"), "bzip2"),
    (re.compile(rb"\xfd7zXZ\x00"), "xz"),
    (re.compile(rb"\x28\xb5\x2f\xfd"), "zstd"),
    (re.compile(rb"\x04\x22\x4d\x18"), "lz4"),
    (re.compile(rb"PK\x03\x04"), "zip"),
    (re.compile(rb"7z\xbc\xaf\x27\x1c"), "7z"),
)


def pack_directory(folder: Path, top_name: str, dest_tar: Path) -> Path:
    """Write `folder` into `dest_tar` under the single top folder `top_name/`."""
    if not _TOP_NAME.fullmatch(top_name):
        raise ValueError(f"top folder name must be one plain path component: {top_name!r}")
    if not folder.is_dir():
        raise NotADirectoryError(folder)
    with tarfile.open(dest_tar, "w", format=tarfile.PAX_FORMAT) as tar:
        tar.add(folder, arcname=top_name, recursive=False, filter=_anonymous)
        for path in _walk_sorted(folder):
            mode = path.lstat().st_mode
            # The other end refuses links and special files, so never produce them.
            if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
                raise UnsafeArchiveError(f"only files and folders can be packed: {path}")
            arcname = f"{top_name}/{path.relative_to(folder).as_posix()}"
            tar.add(path, arcname=arcname, recursive=False, filter=_anonymous)
    return dest_tar


def safe_extract(tar_path: Path, dest_dir: Path, *, max_members: int, max_total_bytes: int) -> Path:
    """Extract the plain (uncompressed) tar `tar_path` into `dest_dir`, which must not exist
    yet; returns it.

    Compressed archives are refused up front (`UnsafeArchiveError`), and so is a tar with
    more than `max_members` members or more than `max_total_bytes` of file contents, before
    anything is written. Everything is checked and extracted into a fresh temp folder beside
    `dest_dir`, which is renamed to `dest_dir` only when all of it succeeded: on refusal or
    failure nothing is left behind.
    """
    if dest_dir.exists() or dest_dir.is_symlink():
        raise FileExistsError(f"extraction target already exists: {dest_dir}")
    _refuse_compressed(tar_path)
    dest_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=dest_dir.parent, prefix=f".{dest_dir.name}.extract-"))
    try:
        # "r:": plain tar only. "r:*" would decompress whatever the file claims to be.
        with tarfile.open(tar_path, "r:") as tar:
            members = _checked_members(tar, max_members, max_total_bytes)
            _extract(tar, members, staging)
        staging.rename(dest_dir)
    except tarfile.TarError as exc:
        shutil.rmtree(staging, ignore_errors=True)
        what = "is not a readable plain tar" if isinstance(exc, tarfile.ReadError) else "refused"
        raise UnsafeArchiveError(f"{tar_path.name} {what}: {exc}") from exc
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return dest_dir


def _refuse_compressed(tar_path: Path) -> None:
    with tar_path.open("rb") as file:
        head = file.read(16)
    for magic, name in _COMPRESSED_MAGIC:
        if magic.match(head):
            raise UnsafeArchiveError(
                f"{tar_path.name} is {name}-compressed: only uncompressed tar is accepted "
                "(artifacts are packed as plain .tar)"
            )


def _extract(tar: tarfile.TarFile, members: list[tarfile.TarInfo], staging: Path) -> None:
    if hasattr(tarfile, "data_filter"):
        # The "data" filter is a second line of defence behind our own checks.
        tar.extractall(staging, members=members, filter="data")
        return
    # Python 3.11 before 3.11.4 (Debian bookworm's, for one) has no extraction filters: the
    # members are already checked to be plain files and folders under the target, so write
    # them ourselves, with ordinary permissions, never trusting the archive's modes or owners.
    for member in members:
        target = staging / member.name
        if member.isdir():
            target.mkdir(parents=True, exist_ok=True)
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        source = tar.extractfile(member)
        if source is None:
            raise UnsafeArchiveError(f"cannot read member {member.name!r}")
        with source, target.open("wb") as out:
            shutil.copyfileobj(source, out, 1024 * 1024)
        target.chmod(0o644)


def _checked_members(
    tar: tarfile.TarFile, max_members: int, max_total_bytes: int
) -> list[tarfile.TarInfo]:
    members: list[tarfile.TarInfo] = []
    total = 0
    # Each path seen (member or implied parent) -> whether it is a folder: a folder and a
    # file of one name cannot both be extracted (the OS refuses the second, mid-extraction).
    kinds: dict[PurePosixPath, bool] = {}
    for member in tar:
        if len(members) >= max_members:
            raise UnsafeArchiveError(f"more than {max_members} members")
        _check_member(member)
        _check_name_clash(member, kinds)
        total += member.size
        if total > max_total_bytes:
            raise UnsafeArchiveError(f"more than {max_total_bytes} bytes once extracted")
        members.append(member)
    return members


def _check_member(member: tarfile.TarInfo) -> None:
    name = member.name
    path = PurePosixPath(name)
    if path.is_absolute() or name.startswith("\\") or re.match(r"^[A-Za-z]:", name):
        raise UnsafeArchiveError(f"absolute path in archive: {name!r}")
    if ".." in path.parts or ".." in name.split("\\"):
        raise UnsafeArchiveError(f"path escapes the target: {name!r}")
    if member.issym() or member.islnk():
        raise UnsafeArchiveError(f"links are not allowed: {name!r} -> {member.linkname!r}")
    if member.isdev():
        raise UnsafeArchiveError(f"device or fifo is not allowed: {name!r}")
    if member.issparse():
        # We never pack sparse files; a sparse member is a small tar that writes a big file.
        raise UnsafeArchiveError(f"sparse files are not allowed: {name!r}")
    if not (member.isfile() or member.isdir()):
        raise UnsafeArchiveError(f"unsupported member type {member.type!r}: {name!r}")


def _check_name_clash(member: tarfile.TarInfo, kinds: dict[PurePosixPath, bool]) -> None:
    path = PurePosixPath(member.name)  # "a/./b/" and "a/b" are one path
    for parent in reversed(path.parents[:-1]):  # outermost first, "." left out
        if kinds.setdefault(parent, True) is False:
            raise UnsafeArchiveError(f"{member.name!r} is inside {str(parent)!r}, which is a file")
    if path in kinds:
        what = "a folder and a file" if kinds[path] != member.isdir() else "twice"
        raise UnsafeArchiveError(f"{str(path)!r} is in the archive {what}")
    kinds[path] = member.isdir()


def _walk_sorted(folder: Path) -> Iterator[Path]:
    # os.walk does not follow symlinked folders; they show up in `dirs` and get refused.
    for root, dirs, files in os.walk(folder):
        dirs.sort()
        base = Path(root)
        for name in sorted(dirs + files):
            yield base / name


def _anonymous(info: tarfile.TarInfo) -> tarfile.TarInfo:
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info
