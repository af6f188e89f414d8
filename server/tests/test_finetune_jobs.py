"""Fine-tuning through the API on real workers: base models uploaded with `POST /models`
(tiny GPT-2 and Llama folders built here, no network), a full and a LoRA run that complete,
report the base model's figures next to theirs and ship a merged model that stock
transformers loads; a LoRA run SIGKILLed midway resumes on a fresh worker from its adapter
checkpoint; and what cannot be fine-tuned is refused at submit with a clear 422."""

from __future__ import annotations

import io
import json
import shutil
import signal
import tarfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from openai import OpenAI
from transformers import (
    BertConfig,
    BertModel,
)

from model_trainer.settings import AdmissionSettings
from model_trainer.store.checkpoints import read_checkpoints
from tests.base_models import BaseKind, base_model_folder, generates, tar_folder
from tests.processes import wait_until
from tests.stack import Stack, get_json, poll
from tests.test_durable_runs import _owner, _signal_all
from tests.test_finetune import TEMPLATE, _chat_corpus
from tests.test_training_runs import _text

pytestmark = pytest.mark.e2e

STALL_SEC = 120.0
RUN = {
    "max_seq_len": 32,
    "batch_size": 8,
    "warmup_steps": 2,
    "eval_interval": 10,
    "eval_batches": 2,
    "checkpoint_interval": 10,
}


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, redis_url: str) -> Iterator[Stack]:
    s = Stack(tmp_path_factory.mktemp("finetune"), redis_url)
    yield s
    s.close()


@pytest.fixture(autouse=True)
def _no_worker_outlives_its_test(stack: Stack) -> Iterator[None]:
    yield
    stack.retire_all()


@pytest.fixture(scope="module")
def corpus(stack: Stack) -> tuple[str, str]:
    text = _text()[:60_000]
    return stack.upload_text(text), text


def _upload(client: TestClient, tar: Path) -> dict[str, object]:
    response = client.post(
        "/models",
        params={"name": tar.name},
        content=tar.read_bytes(),
        headers={"content-type": "application/x-tar"},
    )
    assert response.status_code == 201, response.text
    answer: dict[str, object] = response.json()
    return answer


def _base(stack: Stack, client: TestClient, kind: BaseKind, text: str, width: int = 32) -> str:
    folder = base_model_folder(
        stack.root / f"{kind}-{uuid.uuid4().hex[:6]}", kind, text, width=width
    )
    info = _upload(client, tar_folder(folder, folder.with_suffix(".tar")))
    return str(info["file_id"])


def _finish(client: TestClient, run_id: str) -> dict[str, object]:
    return poll(
        lambda: get_json(client, f"/runs/{run_id}"),
        lambda a: a["status"] in ("completed", "failed", "cancelled"),
        STALL_SEC,
    )


def _artifact(stack: Stack, client: TestClient, run_id: str, dest: Path) -> Path:
    file_id = get_json(client, f"/runs/{run_id}/artifact")["file_id"]
    tar = dest.with_suffix(".tar")
    with stack.bank() as bank:
        bank.download(str(file_id), tar)
    with tarfile.open(tar) as archive:
        archive.extractall(dest, filter="data")
    return next(dest.iterdir())


def test_full_and_lora_fine_tuning_of_uploaded_models(
    stack: Stack, corpus: tuple[str, str]
) -> None:
    corpus_id, text = corpus
    stack.start_worker()
    with stack.client() as client:
        gpt2 = _base(stack, client, "gpt2", text)
        listed = client.get("/models").json()["items"]
        mine = next(m for m in listed if m["file_id"] == gpt2)
        assert mine["model"]["architecture"] == "GPT2LMHeadModel"
        assert mine["model"]["context_length"] == 128 and mine["model"]["n_params"] > 0

        runs = {}
        for method, extra in (("full", {"learning_rate": 3e-3}), ("lora", {"learning_rate": 1e-2})):
            body = {
                "corpus_file_id": corpus_id,
                "base_model": gpt2,
                "method": method,
                "max_steps": 30,
                **RUN,
                **extra,
            }
            response = client.post("/runs/train", json=body)
            assert response.status_code == 202, response.text
            runs[method] = str(response.json()["run_id"])
        for method, run_id in runs.items():
            done = _finish(client, run_id)
            assert done["status"] == "completed", (done.get("error"), done.get("message"))
            assert "(base model: " in str(done["message"])
            evaluation = get_json(client, f"/runs/{run_id}/eval")
            base = evaluation["base"]
            assert isinstance(base, dict)
            # Before and after, on the same validation text: the fine-tuned model is better.
            assert float(str(evaluation["bits_per_char"])) < float(str(base["bits_per_char"]))
            folder = _artifact(stack, client, run_id, stack.root / f"artifact-{method}")
            generates(folder, "ROMEO:", 5)
            manifest = json.loads((folder / "manifest.json").read_text())
            assert manifest["fine_tuning"]["method"] == method
            # The model before training, for comparison: /generate and OpenAI's client.
            before = client.post(
                f"/runs/{run_id}/generate",
                json={"prompt": "ROMEO:", "max_new_tokens": 5, "checkpoint": "base"},
            )
            assert before.status_code == 200, before.text
            assert before.json()["model"]["source"] == "base"
            assert before.json()["model"]["file_id"] == gpt2
            openai = OpenAI(
                base_url="http://testserver/v1", api_key="anonymous", http_client=client
            )
            assert f"{run_id}@base" in {m.id for m in openai.models.list()}
            completion = openai.completions.create(
                model=f"{run_id}@base", prompt="ROMEO:", max_tokens=4, seed=1
            )
            assert completion.usage is not None and completion.usage.completion_tokens == 4
            # Our own generation serves the merged model like any run's.
            generated = client.post(
                f"/runs/{run_id}/generate", json={"prompt": "ROMEO:", "max_new_tokens": 5}
            )
            assert generated.status_code == 200, generated.text


def test_a_killed_lora_run_resumes_from_its_adapter_checkpoint(
    stack: Stack, corpus: tuple[str, str]
) -> None:
    corpus_id, text = corpus
    worker_a = stack.start_worker(f"a-{uuid.uuid4().hex[:6]}")
    with stack.client() as client:
        # Wide enough that its weights outweigh the loop's own state in a checkpoint.
        llama = _base(stack, client, "llama", text, width=128)
        body = {
            "corpus_file_id": corpus_id,
            "base_model": llama,
            "method": "lora",
            "max_steps": 3000,
            **RUN,
        }
        response = client.post("/runs/train", json=body)
        assert response.status_code == 202, response.text
        run_id = str(response.json()["run_id"])

        def step() -> int:
            progress = get_json(client, f"/runs/{run_id}").get("progress")
            return int(str(progress.get("step", 0))) if isinstance(progress, dict) else 0

        wait_until(
            lambda: read_checkpoints(stack.redis, run_id).latest() is not None,
            STALL_SEC,
            "a checkpoint in Data Bank",
            worker_a,
            progress=step,
        )
        worker_b = stack.start_worker(f"b-{uuid.uuid4().hex[:6]}")
        assert _owner(stack, run_id) == stack.worker_name(worker_a)
        _signal_all(worker_a, signal.SIGKILL)
        worker_a.kill()
        stack.workers.remove(worker_a)
        entry = read_checkpoints(stack.redis, run_id).latest()
        assert entry is not None
        with stack.bank() as bank:
            checkpoint_bytes = bank.head(entry.file_id).size
            base_bytes = bank.head(llama).size
        # The adapter, its optimizer state and the loop's counters: a fraction of the model.
        assert checkpoint_bytes < base_bytes / 2, (checkpoint_bytes, base_bytes)
        before = step()
        wait_until(
            lambda: _owner(stack, run_id) == stack.worker_name(worker_b) and step() > before,
            STALL_SEC,
            "progress on worker B",
            worker_b,
            progress=step,
        )
        answer = get_json(client, f"/runs/{run_id}")
        progress = answer["progress"]
        assert isinstance(progress, dict) and progress["resumed_from_step"] is not None
        client.post(f"/runs/{run_id}/cancel")
        assert _finish(client, run_id)["status"] == "cancelled"


def _bert_tar(root: Path) -> Path:
    folder = root / f"bert-{uuid.uuid4().hex[:6]}"
    BertModel(
        BertConfig(
            num_hidden_layers=1,
            hidden_size=32,
            num_attention_heads=2,
            intermediate_size=64,
            vocab_size=50,
        )
    ).save_pretrained(folder)
    (folder / "tokenizer.json").write_text("{}")
    return tar_folder(folder, folder.with_suffix(".tar"))


def _pickle_tar(root: Path) -> Path:
    tar = root / f"pickled-{uuid.uuid4().hex[:6]}.tar"
    with tarfile.open(tar, "w") as archive:
        for name, data in (
            ("config.json", b'{"architectures": ["GPT2LMHeadModel"]}'),
            ("pytorch_model.bin", b"not opened"),
        ):
            member = tarfile.TarInfo(f"model/{name}")
            member.size = len(data)
            archive.addfile(member, io.BytesIO(data))
    return tar


def test_what_cannot_be_fine_tuned_is_refused_at_submit(
    stack: Stack, corpus: tuple[str, str]
) -> None:
    corpus_id, text = corpus
    with stack.client() as client:
        pickled = client.post("/models", content=_pickle_tar(stack.root).read_bytes())
        assert pickled.status_code == 422, pickled.text
        assert "pytorch_model.bin" in pickled.json()["message"]
        assert "pickle-based weights" in pickled.json()["message"]
        assert "never opened" in pickled.json()["message"]
        bert = client.post("/models", content=_bert_tar(stack.root).read_bytes())
        assert bert.status_code == 422 and "not a causal language model" in bert.json()["message"]
        # Uploaded to Data Bank directly: read at the run's submit, refused there.
        with stack.bank() as bank:
            direct = bank.upload_file(_bert_tar(stack.root)).file_id
        refused = client.post(
            "/runs/train", json={"corpus_file_id": corpus_id, "base_model": direct, **RUN}
        )
        assert (
            refused.status_code == 422
            and "not a causal language model" in refused.json()["message"]
        )

        gpt2 = _base(stack, client, "gpt2", text)
        cases: list[tuple[dict[str, object], str, str]] = [
            ({"max_seq_len": 256}, "max_seq_len", "past the base model's context (128 tokens)"),
            (
                {"tokenizer_id": "tok-0123456789abcdef"},
                "",
                "the base model's own tokenizer is used",
            ),
            ({"n_layer": 4}, "", "do not apply with base_model"),
        ]
        for extra, field, message in cases:
            answer = client.post(
                "/runs/train",
                json={"corpus_file_id": corpus_id, "base_model": gpt2, **RUN, **extra},
            )
            assert answer.status_code == 422, answer.text
            assert message in answer.text
            if field:
                assert [d["field"] for d in answer.json()["details"]] == [field]
        unknown = client.post(
            "/runs/train", json={"corpus_file_id": corpus_id, "base_model": "0" * 64, **RUN}
        )
        assert unknown.status_code == 404, unknown.text

    # Too large for the workers: the estimate from the base model's own size.
    small = stack.settings().model_copy(
        update={"admission": AdmissionSettings(worker_memory_bytes=256 * 1024**2)}
    )
    with stack.client(small) as client:
        answer = client.post(
            "/runs/train", json={"corpus_file_id": corpus_id, "base_model": gpt2, **RUN}
        )
        assert answer.status_code == 422, answer.text
        assert "fine-tuning this GPT2LMHeadModel" in answer.json()["message"]
        assert answer.json()["details"][0]["field"] == "base_model"


def _hub_cache(root: Path, repo: str, folder: Path) -> Path:
    """A Hugging Face hub cache (HF_HOME) holding `folder` as `repo`'s main revision, laid out
    as huggingface_hub writes one: refs/main names the commit, snapshots/<commit> the files."""
    home = root / f"hf-home-{uuid.uuid4().hex[:6]}"
    storage = home / "hub" / f"models--{repo.replace('/', '--')}"
    commit = uuid.uuid4().hex + "0" * 8
    (storage / "refs").mkdir(parents=True)
    (storage / "refs" / "main").write_text(commit)
    shutil.copytree(folder, storage / "snapshots" / commit)
    return home


def test_a_hub_model_is_fine_tuned_from_the_workers_cache_offline(
    stack: Stack, corpus: tuple[str, str]
) -> None:
    corpus_id, text = corpus
    folder = base_model_folder(stack.root / f"hub-{uuid.uuid4().hex[:6]}", "qwen3", text)
    home = _hub_cache(stack.root, "tiny-org/qwen3-tiny", folder)
    # The hub is offline (the default): only what the cache holds can be used.
    stack.start_worker(HF_HOME=str(home), HF_HUB_OFFLINE="1")
    with stack.client() as client:
        runs = {}
        for ref in ("hf:tiny-org/qwen3-tiny", "hf:tiny-org/qwen3-tiny@main", "hf:tiny-org/absent"):
            body = {"corpus_file_id": corpus_id, "base_model": ref, "max_steps": 20, **RUN}
            response = client.post("/runs/train", json=body)
            assert response.status_code == 202, response.text
            runs[ref] = str(response.json()["run_id"])
        for ref in ("hf:tiny-org/qwen3-tiny", "hf:tiny-org/qwen3-tiny@main"):
            done = _finish(client, runs[ref])
            assert done["status"] == "completed", (done.get("error"), done.get("message"))
            assert get_json(client, f"/runs/{runs[ref]}/eval")["base"] is not None
        failed = _finish(client, runs["hf:tiny-org/absent"])
        assert failed["status"] == "failed", failed
        error = failed["error"]
        assert isinstance(error, dict) and error["kind"] == "user"
        assert "not in this worker's hub cache" in str(error["message"])
        assert "APP__HUB_DOWNLOADS=false" in str(error["message"])


def test_a_chat_corpus_through_the_api(stack: Stack, tmp_path: Path) -> None:
    corpus = _chat_corpus(tmp_path / "chat.jsonl")
    corpus_id = stack.upload_text(corpus.read_bytes(), "chat.jsonl")
    folder = base_model_folder(
        stack.root / f"chat-{uuid.uuid4().hex[:6]}",
        "gpt2",
        corpus.read_text(),
        chat_template=TEMPLATE,
    )
    stack.start_worker()
    with stack.client() as client:
        base = str(_upload(client, tar_folder(folder, folder.with_suffix(".tar")))["file_id"])
        plain = client.post(
            "/runs/train",
            json={
                "corpus_file_id": corpus_id,
                "corpus_format": "chat",
                "tokenizer_id": "tok-0123456789abcdef",
                **RUN,
            },
        )
        assert plain.status_code == 422 and "corpus_format chat needs base_model" in plain.text
        body = {
            "corpus_file_id": corpus_id,
            "corpus_format": "chat",
            "base_model": base,
            "max_steps": 30,
            "learning_rate": 3e-3,
            **RUN,
        }
        response = client.post("/runs/train", json=body)
        assert response.status_code == 202, response.text
        run_id = str(response.json()["run_id"])
        done = _finish(client, run_id)
        assert done["status"] == "completed", (done.get("error"), done.get("message"))
        evaluation = get_json(client, f"/runs/{run_id}/eval")
        base_score = evaluation["base"]
        assert isinstance(base_score, dict)
        assert float(str(evaluation["loss"])) < float(str(base_score["loss"]))
        logs = client.get(f"/runs/{run_id}/logs", params={"tail": 5000}).json()["lines"]
        assert any(line.get("event") == "chat_tokens_written" for line in logs)


def test_a_sweep_of_fine_tuning_runs(stack: Stack, corpus: tuple[str, str]) -> None:
    corpus_id, text = corpus
    stack.start_worker()
    with stack.client() as client:
        gpt2 = _base(stack, client, "gpt2", text)
        base = {"corpus_file_id": corpus_id, "base_model": gpt2, "max_steps": 10, **RUN}
        too_long = {
            "base": {**base, "max_seq_len": 512},
            "space": {"method": "grid", "parameters": {"learning_rate": {"values": [1e-3, 3e-3]}}},
        }
        refused = client.post("/sweeps", json=too_long)
        assert refused.status_code == 422 and "base model's context" in refused.text
        body = {
            "base": base,
            "space": {"method": "grid", "parameters": {"learning_rate": {"values": [1e-3, 3e-3]}}},
        }
        response = client.post("/sweeps", json=body)
        assert response.status_code == 202, response.text
        sweep_id = response.json()["sweep_id"]
        done = poll(
            lambda: get_json(client, f"/sweeps/{sweep_id}"),
            lambda a: a["status"] in ("completed", "failed", "cancelled"),
            STALL_SEC,
        )
        assert done["status"] == "completed", done
        leaderboard = done["leaderboard"]
        assert isinstance(leaderboard, list) and len(leaderboard) == 2
