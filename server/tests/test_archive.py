"""pack_directory / safe_extract: round trips, and every hostile tar refused without a trace."""

from __future__ import annotations

import bz2
import gzip
import io
import lzma
import os
import tarfile
import zipfile
from collections.abc import Callable
from pathlib import Path

import pytest

from model_trainer.databank.archive import pack_directory, safe_extract
from model_trainer.errors import UnsafeArchiveError

LIMITS = {"max_members": 10, "max_total_bytes": 1000}


@pytest.fixture(params=["data-filter", "no-filter"])
def extraction(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Both paths of safe_extract: tarfile's "data" filter, and Pythons without filters."""
    mode = str(request.param)
    if mode == "no-filter":
        monkeypatch.delattr(tarfile, "data_filter")
    return mode


def _tree(root: Path) -> dict[str, bytes | None]:
    """Relative path -> bytes (None for folders)."""
    return {
        p.relative_to(root).as_posix(): None if p.is_dir() else p.read_bytes()
        for p in sorted(root.rglob("*"))
    }


def test_pack_and_extract_round_trip(tmp_path: Path, extraction: str) -> None:
    src = tmp_path / "model"
    (src / "sub" / "deeper").mkdir(parents=True)
    (src / "weights.bin").write_bytes(os.urandom(500))
    (src / "sub" / "config.json").write_text("{}")
    (src / "sub" / "deeper" / "empty").write_bytes(b"")

    first = pack_directory(src, "model-r1", tmp_path / "a.tar")
    second = pack_directory(src, "model-r1", tmp_path / "b.tar")
    assert first.read_bytes() == second.read_bytes()  # same tree, same bytes, same file_id
    with tarfile.open(first) as tar:
        names = tar.getnames()
        assert all(n == "model-r1" or n.startswith("model-r1/") for n in names)
        assert {m.uname for m in tar.getmembers()} == {""}

    out = safe_extract(first, tmp_path / "out", **LIMITS)
    assert out == tmp_path / "out"
    assert _tree(out / "model-r1") == _tree(src)


def test_pack_refuses_links_and_bad_top_names(tmp_path: Path) -> None:
    src = tmp_path / "model"
    src.mkdir()
    (src / "real.txt").write_text("x")
    (src / "link.txt").symlink_to(src / "real.txt")
    with pytest.raises(UnsafeArchiveError, match="only files and folders"):
        pack_directory(src, "model-r1", tmp_path / "a.tar")
    for bad in ("../up", "a/b", "", ".."):
        with pytest.raises(ValueError, match="top folder"):
            pack_directory(src, bad, tmp_path / "b.tar")


# -- hostile archives ----------------------------------------------------------------------

Member = tuple[tarfile.TarInfo, bytes]


def _file(name: str, data: bytes = b"evil") -> Member:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    return info, data


def _special(name: str, kind: bytes, linkname: str = "") -> Member:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = linkname
    return info, b""


# Each case builds its members from the test folder (absolute paths point inside it).
HOSTILE: dict[str, tuple[Callable[[Path], list[Member]], str]] = {
    "dot-dot": (lambda root: [_file("top/ok.txt"), _file("../evil.txt")], "escapes"),
    "nested dot-dot": (lambda root: [_file("top/../../evil.txt")], "escapes"),
    "absolute": (lambda root: [_file(str(root / "evil-absolute.txt"))], "absolute"),
    "symlink": (lambda root: [_special("top/passwd", tarfile.SYMTYPE, "/etc/passwd")], "links"),
    "relative symlink": (lambda root: [_special("top/up", tarfile.SYMTYPE, "../..")], "links"),
    "hardlink": (
        lambda root: [_file("top/a.txt"), _special("top/b.txt", tarfile.LNKTYPE, "top/a.txt")],
        "links",
    ),
    "char device": (lambda root: [_special("top/null", tarfile.CHRTYPE)], "device"),
    "fifo": (lambda root: [_special("top/pipe", tarfile.FIFOTYPE)], "device"),
    "folder then file of one name": (
        lambda root: [_special("top/x", tarfile.DIRTYPE), _file("top/x")],
        "a folder and a file",
    ),
    "file then folder of one name": (
        lambda root: [_file("top/x"), _special("top/x/", tarfile.DIRTYPE)],
        "a folder and a file",
    ),
    "file under a file": (lambda root: [_file("top/x"), _file("top/x/y")], "which is a file"),
    "file over an implied folder": (
        lambda root: [_file("top/x/y"), _file("top/./x")],
        "a folder and a file",
    ),
    "one file twice": (lambda root: [_file("top/x"), _file("top/x")], "twice"),
    "too many members": (lambda root: [_file(f"top/f{i}", b"") for i in range(11)], "members"),
    "too many bytes": (
        lambda root: [_file("top/a", b"x" * 600), _file("top/b", b"y" * 600)],
        "bytes",
    ),
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_archives_are_refused_without_a_trace(
    tmp_path: Path, case: str, extraction: str
) -> None:
    members, reason = HOSTILE[case]
    archive = tmp_path / "in" / "hostile.tar"
    archive.parent.mkdir()
    with tarfile.open(archive, "w") as tar:
        for info, data in members(tmp_path):
            tar.addfile(info, io.BytesIO(data) if info.isfile() else None)
    work = tmp_path / "work"
    work.mkdir()
    before = _tree(tmp_path)

    with pytest.raises(UnsafeArchiveError, match=reason):
        safe_extract(archive, work / "target", **LIMITS)

    assert not (work / "target").exists()
    assert _tree(tmp_path) == before  # nothing written anywhere, no temp folder left


def test_existing_target_is_not_touched(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "a").write_text("a")
    archive = pack_directory(src, "top", tmp_path / "a.tar")
    (tmp_path / "target").mkdir()
    with pytest.raises(FileExistsError):
        safe_extract(archive, tmp_path / "target", **LIMITS)
    assert list((tmp_path / "target").iterdir()) == []


def test_corrupt_archive_is_refused(tmp_path: Path) -> None:
    archive = tmp_path / "junk.tar"
    archive.write_bytes(b"not a tar at all" * 100)
    with pytest.raises(UnsafeArchiveError):
        safe_extract(archive, tmp_path / "target", **LIMITS)
    assert _tree(tmp_path) == {"junk.tar": b"not a tar at all" * 100}


# -- compressed archives --------------------------------------------------------------------


def _compress(kind: str, data: bytes) -> bytes:
    if kind == "gzip":
        return gzip.compress(data)
    if kind == "bzip2":
        return bz2.compress(data)
    if kind == "xz":
        return lzma.compress(data)
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("top/a.txt", data)
    return buffer.getvalue()


@pytest.mark.parametrize("kind", ["gzip", "bzip2", "xz", "zip"])
def test_compressed_archives_are_refused_before_reading(tmp_path: Path, kind: str) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.txt").write_text("hello")
    plain = pack_directory(src, "top", tmp_path / "plain.tar")
    archive = tmp_path / "in" / "artifact.tar"
    archive.parent.mkdir()
    archive.write_bytes(_compress(kind, plain.read_bytes()))
    if kind != "zip":  # a valid tar inside: tarfile's "r:*" would have extracted it
        with tarfile.open(archive, "r:*") as tar:
            assert tar.getnames() == ["top", "top/a.txt"]
    work = tmp_path / "work"
    work.mkdir()
    before = _tree(tmp_path)

    with pytest.raises(UnsafeArchiveError, match=f"{kind}-compressed: only uncompressed tar"):
        safe_extract(archive, work / "target", **LIMITS)

    assert _tree(tmp_path) == before
    # The same tar, uncompressed, is fine.
    out = safe_extract(plain, work / "target", **LIMITS)
    assert (out / "top" / "a.txt").read_text() == "hello"


def test_sparse_members_are_refused(tmp_path: Path, extraction: str) -> None:
    info = tarfile.TarInfo("top/sparse.bin")
    info.type = tarfile.GNUTYPE_SPARSE
    archive = tmp_path / "sparse.tar"
    with tarfile.open(archive, "w", format=tarfile.GNU_FORMAT) as tar:
        tar.addfile(info)
    with tarfile.open(archive) as tar:
        assert tar.getmembers()[0].issparse()
    with pytest.raises(UnsafeArchiveError, match="sparse"):
        safe_extract(archive, tmp_path / "target", **LIMITS)
    assert not (tmp_path / "target").exists()
