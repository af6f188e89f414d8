"""Names, tags and metadata: refused field by field when malformed, shown on every job, and
lists filtered by tag, name prefix and status (with paging) from their indexes."""

from __future__ import annotations

import time
import uuid

import pytest
from fastapi.testclient import TestClient
from pydantic import JsonValue
from redis import Redis

from model_trainer.api.main import build_context, create_app
from model_trainer.api.schemas import TokenizerRequest
from model_trainer.settings import Settings
from model_trainer.store.keys import RUN_KEYS, TOKENIZER_KEYS
from model_trainer.store.records import (
    RecordMeta,
    RunProgress,
    Status,
    StatusStore,
    TokenizerSummary,
)

CORPUS = "a" * 64


@pytest.mark.parametrize(
    ("labels", "field"),
    [
        ({"tags": ["has space"]}, "tags"),
        ({"tags": [f"t{i}" for i in range(17)]}, "tags"),
        ({"metadata": {"bad key!": "x"}}, "metadata"),
        ({"metadata": {f"k{i}": "v" for i in range(17)}}, "metadata"),
        ({"metadata": {"k": "v" * 257}}, "metadata"),
        ({"name": "line\nbreak"}, "name"),
        ({"name": ""}, "name"),
    ],
)
def test_malformed_labels_are_a_422_naming_the_field(
    settings: Settings, labels: dict[str, JsonValue], field: str
) -> None:
    with TestClient(create_app(build_context(settings))) as client:
        for path, body in (
            ("/runs/train", {"corpus_file_id": CORPUS, "tokenizer_id": "tok-1"}),
            ("/tokenizers/train", {"method": "bpe", "vocab_size": 300, "corpus_file_id": CORPUS}),
        ):
            answer = client.post(path, json={**body, **labels})
            assert answer.status_code == 422, answer.text
            assert answer.json()["code"] == "VALIDATION_ERROR"
            assert any(field in d["field"] for d in answer.json()["details"]), answer.json()


def test_labels_never_change_a_tokenizers_id() -> None:
    config = {"method": "bpe", "vocab_size": 300, "corpus_file_id": CORPUS}
    plain = TokenizerRequest.model_validate(config)
    labelled = TokenizerRequest.model_validate(
        {**config, "name": "mine", "tags": ["a", "a", "b"], "metadata": {"k": "v"}}
    )
    assert labelled.tags == ["a", "b"]  # a tag given twice is one tag
    assert labelled.config().tokenizer_id() == plain.config().tokenizer_id()


def test_lists_filter_by_tag_name_prefix_and_status(
    settings: Settings, redis_client: Redis
) -> None:
    runs = StatusStore(redis_client, RUN_KEYS, RunProgress)
    tag, other = f"lr-{uuid.uuid4().hex[:8]}", f"bs-{uuid.uuid4().hex[:8]}"
    prefix = f"Sweep {uuid.uuid4().hex[:6]}"
    made: dict[str, str] = {}
    for i, (name, tags, status) in enumerate(
        [
            (f"{prefix} a", [tag], Status.COMPLETED),
            (f"{prefix} b", [tag, other], Status.RUNNING),
            (f"{prefix.lower()} c", [other], Status.COMPLETED),
            (f"other {prefix}", [tag], Status.COMPLETED),
            (None, [tag], Status.FAILED),
        ]
    ):
        run_id = f"run-{uuid.uuid4().hex[:16]}"
        request: dict[str, JsonValue] = {"tags": list(tags), "metadata": {"i": str(i)}}
        if name is not None:
            request["name"] = name
        runs.create(run_id, RecordMeta(created_at=time.time(), request=request))
        runs.set_status(run_id, status)
        made[str(i)] = run_id
        time.sleep(0.002)  # distinct creation times: the lists' order is theirs

    def listed(**params: str | int) -> tuple[list[str], int]:
        body = client.get("/runs", params=params).json()
        ids = [made_index[r["run_id"]] for r in body["items"] if r["run_id"] in made_index]
        return ids, int(body["page"]["total"])

    made_index = {run_id: i for i, run_id in made.items()}
    with TestClient(create_app(build_context(settings))) as client:
        assert listed(tag=tag) == (["4", "3", "1", "0"], 4)  # newest first
        assert listed(tag=tag, status="completed") == (["3", "0"], 2)
        # A prefix matches whatever the case, and only at the start of the name.
        assert listed(name=prefix.upper()) == (["2", "1", "0"], 3)
        assert listed(name=prefix, tag=other) == (["2", "1"], 2)
        assert listed(name=prefix, tag=tag, limit=1, offset=1) == (["0"], 2)
        assert listed(name="no such name at all") == ([], 0)
        shown = client.get(f"/runs/{made['1']}").json()
        assert (shown["name"], shown["tags"], shown["metadata"]) == (
            f"{prefix} b",
            [tag, other],
            {"i": "1"},
        )
        unlabelled = client.get(f"/runs/{made['4']}").json()
        assert (unlabelled["name"], unlabelled["metadata"]) == (None, {"i": "4"})
        assert client.get("/runs", params={"tag": "bad tag"}).status_code == 422

        tokenizers = StatusStore(redis_client, TOKENIZER_KEYS, TokenizerSummary)
        tok_id = f"tok-{uuid.uuid4().hex[:16]}"
        request = {"name": f"{prefix} tok", "tags": [tag]}
        tokenizers.create(tok_id, RecordMeta(created_at=time.time(), request=request))
        found = client.get("/tokenizers", params={"tag": tag, "status": "queued"}).json()
        assert [t["tokenizer_id"] for t in found["items"]] == [tok_id]
        assert found["items"][0]["name"] == f"{prefix} tok"
        assert (
            client.get("/tokenizers", params={"name": prefix, "status": "completed"}).json()[
                "items"
            ]
            == []
        )


def test_a_reset_record_is_found_by_its_new_labels_only(redis_client: Redis) -> None:
    tokenizers = StatusStore(redis_client, TOKENIZER_KEYS, TokenizerSummary)
    tok_id = f"tok-{uuid.uuid4().hex[:16]}"
    old, new = f"old-{uuid.uuid4().hex[:6]}", f"new-{uuid.uuid4().hex[:6]}"
    tokenizers.create(tok_id, RecordMeta(created_at=time.time(), request={"tags": [old]}))
    tokenizers.set_status(tok_id, Status.FAILED)
    tokenizers.reset(tok_id, RecordMeta(created_at=time.time(), request={"tags": [new]}))
    assert tokenizers.list_ids(0, 10, tag=old) == ([], 0)
    assert tokenizers.list_ids(0, 10, tag=new) == ([tok_id], 1)
