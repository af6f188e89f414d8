"""fetch_artifact against a real Data Bank: plain tars within the caps extract into the cache;
compressed or oversized ones are refused as the user's error, leaving nothing in the cache."""

from __future__ import annotations

import gzip
import io
import tarfile
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest
from pydantic import SecretStr
from redis import Redis

from model_trainer.databank.client import DataBankClient
from model_trainer.errors import ErrorCode, UserError
from model_trainer.jobs.artifacts import fetch_artifact
from model_trainer.jobs.context import WorkerContext
from model_trainer.settings import AppSettings, Settings
from tests.databank_fixtures import UPLOAD_KEY, DataBankServer

FetchContext = Callable[..., WorkerContext]
DEFAULTS = AppSettings()


@pytest.fixture
def worker_ctx(
    tmp_path: Path, redis_client: Redis, databank_server: DataBankServer
) -> FetchContext:
    """A worker's context (its own disk under tmp_path) with the artifact caps given."""

    def make(
        artifact_max_members: int = DEFAULTS.artifact_max_members,
        artifact_max_bytes: int = DEFAULTS.artifact_max_bytes,
    ) -> WorkerContext:
        app = AppSettings(
            data_root=tmp_path / "worker" / "data",
            threads=1,
            data_bank_api_url=databank_server.url,
            data_bank_api_key=SecretStr(UPLOAD_KEY),
            artifact_max_members=artifact_max_members,
            artifact_max_bytes=artifact_max_bytes,
        )
        settings = Settings(redis_url="redis://unused:1/0", app=app)
        bank = DataBankClient(databank_server.url, UPLOAD_KEY, backoff_base_sec=0.01)
        return WorkerContext(settings, redis_client, bank, worker_name="fetch-test")

    return make


def _cache(ctx: WorkerContext) -> Path:
    return ctx.settings.app.data_root / "artifact-cache" / "tokenizer"


def _files(folder: Path) -> list[str]:
    """Everything under `folder` (hidden temp files included), as relative paths."""
    if not folder.exists():
        return []
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*"))


def _upload_tar(
    ctx: WorkerContext, tmp_path: Path, members: list[tuple[str, bytes]], tops: int = 1
) -> str:
    """A plain tar of `members` (under one top folder, or `tops` of them), uploaded."""
    path = tmp_path / f"{uuid.uuid4().hex[:8]}.tar"
    with tarfile.open(path, "w") as tar:
        for top in range(tops):
            for name, data in members:
                info = tarfile.TarInfo(f"tokenizer-t{top}/{name}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return ctx.databank.upload_file(path).file_id


def _gzip_bomb(path: Path, expanded: int) -> Path:
    """A .tar.gz of about expanded / 1000 bytes whose one member is `expanded` zero bytes.

    Built without compressing gigabytes: gzip allows members back to back, so one member
    of 16 MiB of zeros, compressed once, is repeated.
    """
    block = 16 << 20
    info = tarfile.TarInfo("tokenizer-t0/zeros.bin")
    info.size = expanded
    zeros = gzip.compress(bytes(block), compresslevel=9)
    with path.open("wb") as out:
        out.write(gzip.compress(info.tobuf(format=tarfile.USTAR_FORMAT)))
        for _ in range(expanded // block):
            out.write(zeros)
    return path


def test_a_good_tar_extracts_once_and_leaves_no_tar(
    worker_ctx: FetchContext, tmp_path: Path
) -> None:
    ctx = worker_ctx()
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    (src / "tokenizer.json").write_text('{"model": {}}')
    (src / "sub" / "notes.txt").write_text("hello")
    file_id = ctx.databank.upload_directory(src, "tokenizer-good").file_id

    folder = fetch_artifact(ctx, file_id, "tokenizer", "tok-good")
    assert folder == _cache(ctx) / "tok-good" / file_id / "tokenizer-good"
    assert (folder / "sub" / "notes.txt").read_text() == "hello"
    assert _files(_cache(ctx)) == [
        "tok-good",
        f"tok-good/{file_id}",
        f"tok-good/{file_id}/tokenizer-good",
        f"tok-good/{file_id}/tokenizer-good/sub",
        f"tok-good/{file_id}/tokenizer-good/sub/notes.txt",
        f"tok-good/{file_id}/tokenizer-good/tokenizer.json",
    ]
    ctx.databank.delete(file_id)  # a second fetch is served from the cache
    assert fetch_artifact(ctx, file_id, "tokenizer", "tok-good") == folder


def test_a_gzip_bomb_is_refused_without_writing_the_expansion(
    worker_ctx: FetchContext, tmp_path: Path
) -> None:
    ctx = worker_ctx()  # default caps: 2 GiB would be within artifact_max_bytes if it were a tar
    bomb = _gzip_bomb(tmp_path / "bomb.tar.gz", 2 << 30)
    assert bomb.stat().st_size < 3 << 20
    with gzip.open(bomb) as stream:  # what it claims: one member of 2 GiB
        assert tarfile.TarInfo.frombuf(stream.read(512), "utf-8", "strict").size == 2 << 30
    file_id = ctx.databank.upload_file(bomb).file_id

    with pytest.raises(UserError, match="gzip-compressed: only uncompressed tar") as caught:
        fetch_artifact(ctx, file_id, "tokenizer", "tok-bomb")
    assert caught.value.code == ErrorCode.DATA_INVALID
    assert "train the tokenizer again" in caught.value.message
    assert _files(_cache(ctx)) == []  # no folder for it, no .tar, no temp folder


def test_a_tar_over_the_member_cap_is_refused(worker_ctx: FetchContext, tmp_path: Path) -> None:
    ctx = worker_ctx(artifact_max_members=5)
    file_id = _upload_tar(ctx, tmp_path, [(f"f{i}.txt", b"x") for i in range(8)])
    with pytest.raises(UserError, match="more than 5 members"):
        fetch_artifact(ctx, file_id, "tokenizer", "tok-many")
    assert not (_cache(ctx) / "tok-many").exists()
    assert _files(_cache(ctx)) == []


def test_a_tar_over_the_byte_cap_is_refused(worker_ctx: FetchContext, tmp_path: Path) -> None:
    ctx = worker_ctx(artifact_max_members=5, artifact_max_bytes=1000)
    # Small enough a file to be downloaded; its headers say 1,200 bytes once extracted.
    file_id = _upload_tar(ctx, tmp_path, [("a.bin", b"a" * 600), ("b.bin", b"b" * 600)])
    tokenizer_id = "tok-bytes"
    with pytest.raises(UserError, match="more than 1000 bytes once extracted"):
        fetch_artifact(ctx, file_id, "tokenizer", tokenizer_id)
    assert not (_cache(ctx) / tokenizer_id).exists()
    assert _files(_cache(ctx)) == []


def test_a_file_too_big_to_be_an_artifact_is_not_downloaded(
    worker_ctx: FetchContext, tmp_path: Path
) -> None:
    ctx = worker_ctx(artifact_max_members=5, artifact_max_bytes=1000)
    file_id = _upload_tar(ctx, tmp_path, [("big.bin", b"z" * 300_000)])
    with pytest.raises(UserError, match=r"bytes, more than an artifact may hold"):
        fetch_artifact(ctx, file_id, "tokenizer", "tok-big")
    assert not ctx.settings.app.data_root.exists()  # nothing written at all


def test_a_tar_not_shaped_as_ours_is_refused(worker_ctx: FetchContext, tmp_path: Path) -> None:
    ctx = worker_ctx()
    file_id = _upload_tar(ctx, tmp_path, [("a.txt", b"a")], tops=2)
    with pytest.raises(UserError, match="one top folder"):
        fetch_artifact(ctx, file_id, "tokenizer", "tok-two")
    assert _files(_cache(ctx)) == []


def test_an_artifact_gone_from_data_bank_is_the_users_error(
    worker_ctx: FetchContext, tmp_path: Path
) -> None:
    ctx = worker_ctx()
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.txt").write_text("a")
    file_id = ctx.databank.upload_directory(src, "tokenizer-x").file_id
    ctx.databank.delete(file_id)
    with pytest.raises(UserError, match="not in Data Bank any more"):
        fetch_artifact(ctx, file_id, "tokenizer", "tok-gone")
    assert _files(_cache(ctx)) == []
