"""Tokenizers end to end: HTTP API -> queue -> real worker -> Data Bank -> loadable artifact."""

from __future__ import annotations

import random
import tarfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import sentencepiece
from fastapi.testclient import TestClient
from transformers import AutoTokenizer, PreTrainedTokenizerFast

from model_trainer.databank.archive import safe_extract
from tests.event_contracts import EventCollector
from tests.processes import wait_until
from tests.stack import Stack, poll, rq_job

# Starts worker processes (or a browser): `make check` runs it, `make test` does not.
pytestmark = pytest.mark.e2e

SHAKESPEARE = Path(__file__).resolve().parents[3] / "shared" / "corpora" / "tinyshakespeare.txt"


def _generated_corpus(lines: int = 3000, seed: int = 0) -> str:
    rng = random.Random(seed)
    words = [
        "the",
        "quick",
        "brown",
        "fox",
        "jumps",
        "over",
        "a",
        "lazy",
        "dog",
        "while",
        "bright",
        "stars",
        "shine",
        "above",
    ]
    extra = ["naïve", "café", "Ünïcödé", "日本語", "emoji🙂", "tab\tsep"]
    out = []
    for _ in range(lines):
        n = rng.randint(3, 14)
        out.append(" ".join(rng.choice(words + extra) for _ in range(n)))
    return "\n".join(out) + "\n"


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, redis_url: str) -> Iterator[Stack]:
    s = Stack(tmp_path_factory.mktemp("tok-stack"), redis_url)
    s.start_worker()
    yield s
    s.close()


@pytest.fixture(scope="module")
def corpus_id(stack: Stack) -> str:
    text = SHAKESPEARE.read_text()[:200_000] if SHAKESPEARE.exists() else _generated_corpus()
    return stack.upload_text(text)


def _train(client: TestClient, body: dict[str, object]) -> dict[str, object]:
    response = client.post("/tokenizers/train", json=body)
    assert response.status_code == 202, response.text
    accepted = response.json()
    assert isinstance(accepted, dict)
    return accepted


def _wait_done(client: TestClient, tokenizer_id: str, timeout: float = 120) -> dict[str, object]:
    return poll(
        lambda: client.get(f"/tokenizers/{tokenizer_id}").json(),
        lambda a: a.get("status") in ("completed", "failed", "cancelled"),
        timeout,
    )


def _download(stack: Stack, client: TestClient, tokenizer_id: str, dest: Path) -> Path:
    pointer = client.get(f"/tokenizers/{tokenizer_id}/artifact").json()
    assert pointer["storage"] == "data-bank"
    tar = dest / "artifact.tar"
    with stack.bank() as bank:
        bank.download(pointer["file_id"], tar)
    with tarfile.open(tar) as archive:
        tops = {m.name.split("/")[0] for m in archive.getmembers()}
    assert tops == {f"tokenizer-{tokenizer_id}"}
    out = safe_extract(tar, dest / "x", max_members=100, max_total_bytes=100 * 1024**2)
    return out / f"tokenizer-{tokenizer_id}"


def _ws(text: str) -> str:
    return " ".join(text.split())


def _holdout_sample() -> list[str]:
    text = (
        SHAKESPEARE.read_text()[300_000:310_000]
        if SHAKESPEARE.exists()
        else _generated_corpus(50, 9)
    )
    lines = [line for line in text.splitlines() if line.strip()][:40]
    return [*lines, "  leading spaces\tand tabs"]


def test_bpe_end_to_end_loads_in_transformers(stack: Stack, corpus_id: str, tmp_path: Path) -> None:
    events = EventCollector(stack.redis_url)
    with stack.client() as client:
        body = {"method": "bpe", "vocab_size": 600, "corpus_file_id": corpus_id, "user_id": 77}
        accepted = _train(client, body)
        assert accepted["status"] == "queued"
        assert accepted["job_id"] == accepted["tokenizer_id"]
        tokenizer_id = str(accepted["tokenizer_id"])
        done = _wait_done(client, tokenizer_id)
        assert done["status"] == "completed", done
        stats = done["stats"]
        assert isinstance(stats, dict)
        assert stats["unknown_token_rate"] == 0.0
        assert 0 < float(stats["tokens_per_char"]) < 1
        folder = _download(stack, client, tokenizer_id, tmp_path)
        listed = client.get("/tokenizers").json()
        assert tokenizer_id in [item["tokenizer_id"] for item in listed["items"]]
        pointer = client.get(f"/tokenizers/{tokenizer_id}/artifact").json()
    # The platform dialect's job events (the v1 dialect speaks of training runs only).
    try:
        events.wait_platform(tokenizer_id, "trainer.job.completed.v1")
    finally:
        events.close()
    platform = events.platform(tokenizer_id)
    assert [e["type"] for e in platform] == ["trainer.job.started.v1", "trainer.job.completed.v1"]
    assert platform[0]["queue"] == stack.queue_name and platform[0]["user_id"] == 77
    assert platform[1]["result_id"] == pointer["file_id"]
    assert platform[1]["result_bytes"] == (tmp_path / "artifact.tar").stat().st_size
    assert not [r for r in events.raw if tokenizer_id in r and "trainer.train." in r]

    auto = AutoTokenizer.from_pretrained(folder)
    fast_class: type[PreTrainedTokenizerFast] = PreTrainedTokenizerFast
    fast = fast_class(tokenizer_file=str(folder / "tokenizer.json"))
    assert auto.eos_token == "<|endoftext|>"
    assert auto.pad_token == "<|pad|>"
    for line in _holdout_sample():
        ids = auto.encode(line, add_special_tokens=False)
        assert auto.decode(ids) == line
        assert fast.decode(fast.encode(line, add_special_tokens=False)) == line
    assert (folder / "manifest.json").exists()


def test_sentencepiece_end_to_end(stack: Stack, corpus_id: str, tmp_path: Path) -> None:
    with stack.client() as client:
        body = {"method": "sentencepiece", "vocab_size": 500, "corpus_file_id": corpus_id}
        tokenizer_id = str(_train(client, body)["tokenizer_id"])
        done = _wait_done(client, tokenizer_id)
        assert done["status"] == "completed", done
        folder = _download(stack, client, tokenizer_id, tmp_path)

    processor = sentencepiece.SentencePieceProcessor(model_file=str(folder / "tokenizer.model"))
    auto = AutoTokenizer.from_pretrained(folder)
    for line in _holdout_sample():
        # Up to normalization: SentencePiece may fold runs of whitespace.
        assert _ws(processor.decode(processor.encode(line))) == _ws(line)
        ids = auto.encode(line, add_special_tokens=False)
        assert _ws(str(auto.decode(ids))) == _ws(line)


def test_same_request_is_one_job_and_seed_changes_the_id(stack: Stack, corpus_id: str) -> None:
    body: dict[str, object] = {"method": "bpe", "vocab_size": 300, "corpus_file_id": corpus_id}
    with stack.client() as client:
        first = _train(client, body)
        second = _train(client, body)
        assert first["tokenizer_id"] == second["tokenizer_id"]
        assert _wait_done(client, str(first["tokenizer_id"]))["status"] == "completed"
        again = _train(client, body)
        assert again["status"] == "completed", "a finished tokenizer is not trained again"
        other = _train(client, {**body, "seed": 7})
        assert other["tokenizer_id"] != first["tokenizer_id"]
    job = rq_job(stack.redis, str(first["tokenizer_id"]))
    assert job.get_status() == "finished"


def test_invalid_bodies_name_the_field(stack: Stack, corpus_id: str) -> None:
    with stack.client() as client:
        cases: list[tuple[dict[str, object], str]] = [
            ({"method": "wordpiece", "corpus_file_id": corpus_id}, "method"),
            ({"method": "bpe", "vocab_size": 10, "corpus_file_id": corpus_id}, "vocab_size"),
            ({"method": "bpe", "corpus_file_id": "nothex"}, "corpus_file_id"),
            (
                {"method": "bpe", "corpus_file_id": corpus_id, "holdout_fraction": 0.9},
                "holdout_fraction",
            ),
            ({"method": "bpe", "corpus_file_id": corpus_id, "surprise": 1}, "surprise"),
            ({"method": "bpe"}, "corpus_file_id"),
        ]
        for body, field in cases:
            response = client.post("/tokenizers/train", json=body)
            assert response.status_code == 422, (body, response.text)
            details = response.json()["details"]
            assert any(field in d["field"] for d in details), (field, details)


def test_unknown_corpus_is_404_at_submit(stack: Stack) -> None:
    with stack.client() as client:
        response = client.post(
            "/tokenizers/train", json={"method": "bpe", "corpus_file_id": "0" * 64}
        )
        assert response.status_code == 404
        assert response.json()["code"] == "NOT_FOUND"
        assert "corpus_file_id" in response.json()["message"]
        assert client.get("/tokenizers/tok-unknown").status_code == 404
        assert client.get("/tokenizers/tok-unknown/artifact").status_code == 404


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (b"good line\nbad byte here: \xff\xfe and more\n", "byte offset 25"),
        (b"", "empty"),
    ],
)
def test_bad_corpus_fails_with_a_clear_message_and_no_retry(
    stack: Stack, content: bytes, expected: str
) -> None:
    corpus = stack.upload_text(content, "bad.txt")
    events = EventCollector(stack.redis_url)
    with stack.client() as client:
        body = {"method": "bpe", "vocab_size": 300, "corpus_file_id": corpus, "user_id": 78}
        accepted = _train(client, body)
        tokenizer_id = str(accepted["tokenizer_id"])
        done = _wait_done(client, tokenizer_id)
        assert done["status"] == "failed"
        assert expected in str(done["message"]), done["message"]
        assert client.get(f"/tokenizers/{tokenizer_id}/artifact").status_code == 404
    try:
        events.wait_platform(tokenizer_id, "trainer.job.failed.v1")
    finally:
        events.close()
    failed = events.platform(tokenizer_id)[-1]
    assert failed["error_kind"] == "user" and failed["message"] == done["message"]
    assert failed["kept"] is True  # the bot DMs a failure
    assert done["attempts"] == 0, "a user error is not retried"
    # RQ marks its job finished once the job process has returned, a moment after our record
    # says failed (longer on a loaded machine): the job body returned, RQ saw no exception.
    job = rq_job(stack.redis, tokenizer_id)
    wait_until(
        lambda: job.get_status(refresh=True) != "started",
        30,
        "RQ to record the end of the job",
    )
    assert job.get_status() == "finished", "the failure was settled by its owner, not RQ"


def test_a_tokenizer_whose_artifact_is_gone_is_trained_again(stack: Stack, corpus_id: str) -> None:
    body: dict[str, object] = {
        "method": "bpe",
        "vocab_size": 280,
        "corpus_file_id": corpus_id,
        "seed": 99,
    }
    with stack.client() as client:
        tokenizer_id = str(_train(client, body)["tokenizer_id"])
        assert _wait_done(client, tokenizer_id)["status"] == "completed"
        file_id = client.get(f"/tokenizers/{tokenizer_id}/artifact").json()["file_id"]
        with stack.bank() as bank:
            bank.delete(file_id)
        run = client.post(
            "/runs/train", json={"corpus_file_id": corpus_id, "tokenizer_id": tokenizer_id}
        )
        assert run.status_code == 409
        assert "not in Data Bank" in run.json()["message"]
        again = _train(client, body)
        assert again["tokenizer_id"] == tokenizer_id and again["status"] == "queued"
        assert _wait_done(client, tokenizer_id)["status"] == "completed"
        assert client.get(f"/tokenizers/{tokenizer_id}/artifact").status_code == 200
