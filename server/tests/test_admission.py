"""Admission at submit: a run's memory estimate against what a worker may use, and bounds.

The estimate (training/memory.py) is checked against reality: the parameter count against
models built by `training.model`, and the bytes against the peak RSS growth of real training
steps measured in a fresh process. The refusals go through the real HTTP stack (the app
from `create_app(build_context(...))` under TestClient), real Redis and the real Data Bank;
worker memory is reported by real `Reaper`s, as workers report it.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from fastapi.testclient import TestClient
from pydantic import SecretStr
from redis import Redis
from rq import Queue

from model_trainer.api.main import build_context, create_app
from model_trainer.api.schemas import TrainRequest
from model_trainer.databank.client import DataBankClient
from model_trainer.jobs.context import WorkerContext
from model_trainer.jobs.reaper import Reaper
from model_trainer.settings import AdmissionSettings, RecoverySettings, Settings
from model_trainer.store.keys import RUN_KEYS, TOKENIZER_KEYS, worker_memory_key, workers_key
from model_trainer.store.records import RecordMeta, Status, StatusStore, TokenizerSummary
from model_trainer.training.config import TrainingSpec
from model_trainer.training.memory import (
    GIB,
    estimate_run_memory,
    gib,
    gpt2_parameters,
    machine_memory_bytes,
    model_parameters,
)
from model_trainer.training.model import build_model, count_params, model_spec
from model_trainer.training.optimizer import make_optimizer
from tests.databank_fixtures import UPLOAD_KEY, DataBankServer
from tests.processes import child_env
from tests.stack import Answer

# GPT-2 with AdamW unless a case names another family or optimizer (the estimate's formulas
# are checked per family and optimizer below).
BASE = {"model_family": "gpt2", "optimizer": "adamw"}
VOCAB = 2000
# What a client asking for a model no CPU worker can hold might send.
GIANT = {"n_layer": 96, "n_embd": 16384, "max_seq_len": 8192, "batch_size": 4096}
# The largest model the bounds let through: refused by the estimate on any real machine.
LARGEST_IN_BOUNDS = {"n_layer": 48, "n_embd": 4096, "max_seq_len": 8192, "batch_size": 1024}


def _config(**fields: object) -> TrainingSpec:
    return TrainingSpec.model_validate({**BASE, **fields})


# -- 1. the estimate against real models and real steps -----------------------------------


@pytest.mark.parametrize(
    ("fields", "vocab_size"),
    [
        ({"model_size": "tiny"}, 300),
        ({"model_size": "mini", "max_seq_len": 256}, 4096),
        ({"n_layer": 3, "n_head": 2, "n_embd": 48, "max_seq_len": 100}, 1000),
    ],
)
def test_parameter_count_is_exact(fields: dict[str, object], vocab_size: int) -> None:
    config = _config(**fields)
    model = build_model(model_spec(config, vocab_size, 0, None), config.model_family, seed=1)
    arch = config.resolved()
    expected = count_params(model)
    assert gpt2_parameters(vocab_size, arch.n_layer, arch.n_embd, config.max_seq_len) == expected
    estimate = estimate_run_memory(config, vocab_size)
    assert estimate.parameters == expected
    assert estimate.state_bytes == 16 * expected


@pytest.mark.parametrize(
    "fields",
    [
        {"model_family": "llama"},
        {"model_family": "llama", "n_kv_head": 2, "tie_word_embeddings": False},
        {"model_family": "qwen3", "model_size": "mini", "n_kv_head": 3, "optimizer": "muon"},
        {"model_family": "gpt2", "tie_word_embeddings": False, "optimizer": "muon"},
    ],
)
def test_parameter_count_and_optimizer_state_of_every_family(fields: dict[str, object]) -> None:
    config = _config(max_seq_len=96, **fields)
    model = build_model(model_spec(config, 777, 0, None), config.model_family, seed=1)
    assert model_parameters(config, 777) == count_params(model)
    optimizer = make_optimizer(model, config)
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    optimizer.step()  # creates every state buffer
    state_numbers = sum(
        t.numel()
        for part in optimizer.parts.values()
        for s in part.state.values()
        for t in s.values()
        if isinstance(t, torch.Tensor) and t.dim() > 0
    )
    weights_and_grads = 2 * count_params(model)
    # What the estimate counts as state: weights, gradients, the optimizers' buffers.
    expected_bytes = 4 * (weights_and_grads + state_numbers)
    assert estimate_run_memory(config, 777).state_bytes == expected_bytes


# Measures each configuration's training step in a process of its own, its peak RSS (VmHWM)
# then that step's alone. One fresh process imports torch and transformers once and forks a
# child per configuration; the child resets its peak to what it inherited (clear_refs 5) and
# reports the growth. Mirrors `TrainingLoop._train_step` with the project's own builders and
# fp32 (the estimate's bound).
_MEASURE_STEPS = """
import json, os, sys
import numpy as np
import torch
import torch.nn.functional as F
from model_trainer.training.config import Precision, TrainingSpec
from model_trainer.training.data import WindowSampler, validation_batches
from model_trainer.training.step import autocast, forward_logits
from model_trainer.training.optimizer import make_optimizer
from model_trainer.training.model import build_model, model_spec

def status(field):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise KeyError(field)

def measure(config, vocab):
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # VmHWM := VmRSS: the peak from here on is this step's
    tokens = np.random.default_rng(0).integers(0, vocab, size=200_000, dtype=np.uint16)
    base = status("VmRSS")
    model = build_model(model_spec(config, vocab, 0, None), config.model_family, config.seed)
    model.train()
    optimizer = make_optimizer(model, config)
    val = validation_batches(tokens, config.max_seq_len, config.batch_size, config.eval_batches)
    sampler = WindowSampler(tokens, config.max_seq_len, config.batch_size, config.seed)
    for _ in range(2):  # the second step has gradients and both AdamW moments at once
        x, y = sampler.next_batch()
        with autocast(Precision.FP32):
            logits = forward_logits(model, x)
            loss = F.cross_entropy(logits.flatten(0, 1).float(), y.flatten())
        torch.autograd.backward(loss)
        torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return {"base": base, "growth": status("VmHWM") - base}

vocab = int(sys.argv[1])
for config_json in sys.argv[2:]:
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(read)
        config = TrainingSpec.model_validate_json(config_json)
        os.write(write, json.dumps(measure(config, vocab)).encode())
        os._exit(0)
    os.close(write)
    with os.fdopen(read) as answer:
        print(answer.read(), flush=True)
    assert os.waitpid(pid, 0)[1] == 0
"""

STEP_SHAPES: dict[str, dict[str, object]] = {
    # dropout 0: attention's flash kernel stores no T x T scores
    "gpt2": {"n_layer": 2, "n_head": 4, "n_embd": 256, "max_seq_len": 256, "batch_size": 16},
    # dropout > 0: the math path keeps the scores (the estimate's `a = 4 T` term)
    "gpt2-dropout": {
        "n_layer": 2,
        "n_head": 4,
        "n_embd": 128,
        "max_seq_len": 512,
        "batch_size": 8,
        "dropout": 0.1,
    },
    # the rotary families: SwiGLU, RMSNorm (and QK-norm), Muon's single buffer
    "llama-muon": {
        "model_family": "llama",
        "n_layer": 2,
        "n_head": 4,
        "n_embd": 256,
        "max_seq_len": 256,
        "batch_size": 16,
        "optimizer": "muon",
    },
    "qwen3": {
        "model_family": "qwen3",
        "n_layer": 2,
        "n_head": 4,
        "n_embd": 256,
        "max_seq_len": 256,
        "batch_size": 16,
    },
}


def _step_config(name: str) -> TrainingSpec:
    return _config(eval_batches=4, **STEP_SHAPES[name])


@pytest.fixture(scope="module")
def measured_steps() -> dict[str, dict[str, int]]:
    """Each of STEP_SHAPES's measured base and peak growth, from one fresh process."""
    configs = [_step_config(name).model_dump_json() for name in STEP_SHAPES]
    answer = subprocess.run(
        [sys.executable, "-c", _MEASURE_STEPS, str(VOCAB), *configs],
        env=child_env({"OMP_NUM_THREADS": "2"}),
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert answer.returncode == 0, answer.stderr
    lines = answer.stdout.strip().splitlines()[-len(STEP_SHAPES) :]
    return {name: json.loads(line) for name, line in zip(STEP_SHAPES, lines, strict=True)}


@pytest.mark.parametrize("name", list(STEP_SHAPES))
def test_estimate_is_near_the_measured_peak_of_a_training_step(
    name: str, measured_steps: dict[str, dict[str, int]]
) -> None:
    config = _step_config(name)
    measured = measured_steps[name]
    estimate = estimate_run_memory(config, VOCAB)
    if config.dropout > 0:
        assert estimate.attention_score_bytes > estimate.activation_bytes / 2
    # The process's own baseline (Python, torch, transformers loaded) is the runtime's share.
    assert measured["base"] < estimate.runtime_bytes
    ratio = (estimate.total_bytes - estimate.runtime_bytes) / measured["growth"]
    assert 0.5 <= ratio <= 3, (ratio, estimate, measured)


def test_the_estimate_module_does_not_load_torch() -> None:
    """The API imports it: loading torch there would cost the API ~0.4 GiB and seconds."""
    code = (
        "import sys, model_trainer.training.memory, model_trainer.api.main; "
        "print(sorted(m for m in ('torch', 'transformers') if m in sys.modules))"
    )
    answer = subprocess.run(
        [sys.executable, "-c", code], env=child_env({}), capture_output=True, text=True, check=True
    )
    assert answer.stdout.strip() == "[]"


def test_machine_memory_is_the_smaller_of_cgroup_limit_and_memtotal(tmp_path: Path) -> None:
    meminfo = tmp_path / "meminfo"
    meminfo.write_text("MemTotal:       16384000 kB\nMemFree:        1000 kB\n")
    v2, v1 = tmp_path / "memory.max", tmp_path / "memory.limit_in_bytes"
    total = 16384000 * 1024
    assert machine_memory_bytes((v2, v1), meminfo) == total  # no cgroup files
    v2.write_text("max\n")
    v1.write_text("9223372036854771712\n")  # cgroup v1's "no limit"
    assert machine_memory_bytes((v2, v1), meminfo) == total
    v2.write_text(f"{4 * GIB}\n")
    assert machine_memory_bytes((v2, v1), meminfo) == 4 * GIB
    assert machine_memory_bytes((v2,), tmp_path / "absent") == 4 * GIB
    assert machine_memory_bytes((tmp_path / "absent",), tmp_path / "absent") is None
    here = machine_memory_bytes()
    assert here is not None and here > 256 * 1024**2


# -- 2. refusals at submit, through the HTTP stack ----------------------------------------


class Submit:
    """A completed tokenizer (vocabulary `VOCAB`) and a corpus in Data Bank, and the API."""

    def __init__(self, settings: Settings, redis: Redis, bank: DataBankClient, root: Path) -> None:
        self.settings = settings
        self.redis = redis
        self.corpus_id = _upload(bank, root, "to be or not to be\n" * 50)
        self.tokenizer_id = f"tok-{uuid.uuid4().hex[:12]}"
        tokenizers = StatusStore(redis, TOKENIZER_KEYS, TokenizerSummary)
        tokenizers.create(self.tokenizer_id, RecordMeta(created_at=time.time(), request={}))
        tokenizer_file = _upload(bank, root, f"tok {uuid.uuid4()}")
        tokenizers.set_progress(self.tokenizer_id, TokenizerSummary(vocab_size=VOCAB))
        tokenizers.set_status(
            self.tokenizer_id,
            Status.COMPLETED,
            also=tokenizers.file_id_commands(self.tokenizer_id, tokenizer_file),
        )

    def body(self, **fields: object) -> dict[str, object]:
        return {
            "corpus_file_id": self.corpus_id,
            "tokenizer_id": self.tokenizer_id,
            "max_steps": 10,
            **fields,
        }

    def config(self, **fields: object) -> TrainRequest:
        return TrainRequest.model_validate(self.body(**fields))

    def client(self, **admission: object) -> TestClient:
        settings = self.settings.model_copy(
            update={"admission": AdmissionSettings.model_validate(admission)}
        )
        return TestClient(create_app(build_context(settings)))

    def queued(self) -> int:
        """Jobs in our queue plus run records: what a refused submit must leave unchanged."""
        jobs = Queue(self.settings.rq.queue_name, connection=self.redis).count
        return jobs + int(self.redis.zcard(RUN_KEYS.index))

    def worker(self, name: str, memory: int | None, seen_ago: float = 0.0) -> Reaper:
        """A real worker's reaper; `memory` None reads this machine's, as workers do."""
        ctx = WorkerContext(self.settings, self.redis, DataBankClient("http://unused"), name)
        reaper = Reaper(ctx, clock=lambda: time.time() - seen_ago, memory_bytes=memory)
        # Only the presence step of `tick()`: the rest of a pass acts on every test's runs.
        reaper._say_alive()
        return reaper


def _upload(bank: DataBankClient, directory: Path, text: str) -> str:
    path = directory / f"{uuid.uuid4().hex}.bin"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return bank.upload_file(path).file_id


@pytest.fixture
def submit(
    settings: Settings,
    redis_client: Redis,
    databank_server: DataBankServer,
    databank_client: DataBankClient,
    tmp_path: Path,
) -> Iterator[Submit]:
    app = settings.app.model_copy(
        update={
            "data_bank_api_url": databank_server.url,
            "data_bank_api_key": SecretStr(UPLOAD_KEY),
        }
    )
    recovery = RecoverySettings(worker_presence_ttl_sec=20)
    settings = settings.model_copy(update={"app": app, "recovery": recovery})
    setup = Submit(settings, redis_client, databank_client, tmp_path / "uploads")
    yield setup
    queue = settings.rq.queue_name
    redis_client.delete(workers_key(queue), worker_memory_key(queue))


def _refused(response: Answer) -> tuple[str, list[dict[str, str]]]:
    assert response.status_code == 422, response.text
    body = response.json()
    assert isinstance(body, dict)
    assert body["code"] == "VALIDATION_ERROR"
    assert body["request_id"] == response.headers["x-request-id"]
    message, details = body["message"], body["details"]
    assert isinstance(message, str) and isinstance(details, list)
    return message, details


def _accepted(response: Answer) -> str:
    assert response.status_code == 202, response.text
    body = response.json()
    assert isinstance(body, dict)
    run_id = body["run_id"]
    assert isinstance(run_id, str)
    return run_id


# A mini model with a long context and big batches: about 8 GiB by the estimate.
BIG = {"model_size": "mini", "max_seq_len": 1024, "batch_size": 24}


def test_refused_over_the_configured_limit_admitted_under(submit: Submit) -> None:
    big = estimate_run_memory(submit.config(**BIG), VOCAB)
    assert 4 * GIB < big.total_bytes < 16 * GIB
    with submit.client(worker_memory_bytes=4 * GIB, memory_fraction=0.9) as client:
        before = submit.queued()
        message, details = _refused(client.post("/runs/train", json=submit.body(**BIG)))
        assert submit.queued() == before  # no record, no job
        assert f"needs about {gib(big.total_bytes)}" in message
        assert "more than the 3.60 GiB: 0.9 of 4.00 GiB" in message
        assert "ADMISSION__WORKER_MEMORY_BYTES" in message
        assert "lower n_embd (now 384), n_layer (now 6), batch_size (now 24) or " in message
        assert "max_seq_len (now 1024)" in message
        assert [d["field"] for d in details] == ["n_embd", "n_layer", "batch_size", "max_seq_len"]
        assert {d["type"] for d in details} == {"memory_limit"}
        assert f"the estimate is {big.total_bytes} bytes" in details[0]["message"]
        assert f"the limit {int(4 * GIB * 0.9)} bytes" in details[0]["message"]

        # The same model with a shorter context and smaller batches fits.
        small = submit.body(model_size="mini", max_seq_len=256, batch_size=8)
        run_id = _accepted(client.post("/runs/train", json=small))
        assert client.get(f"/runs/{run_id}").json()["status"] == "queued"
        assert submit.queued() == before + 2  # its record and its job

    # The limit is inclusive: an estimate equal to it is admitted, one byte more is not.
    exact = big.total_bytes
    with submit.client(worker_memory_bytes=exact, memory_fraction=1.0) as client:
        _accepted(client.post("/runs/train", json=submit.body(**BIG)))
    with submit.client(worker_memory_bytes=exact - 1, memory_fraction=1.0) as client:
        _refused(client.post("/runs/train", json=submit.body(**BIG)))


def test_dropout_and_eval_batches_are_named_when_they_weigh(submit: Submit) -> None:
    fields = {"model_size": "tiny", "max_seq_len": 2048, "batch_size": 64, "dropout": 0.1}
    with submit.client(worker_memory_bytes=2 * GIB) as client:
        message, details = _refused(client.post("/runs/train", json=submit.body(**fields)))
        assert "of which attention scores" in message
        assert "dropout (now 0.1)" in message
        assert "dropout" in [d["field"] for d in details]
        # A narrow one-layer model: its validation windows are a good part of the total.
        windows = {"n_layer": 1, "n_embd": 8, "max_seq_len": 8192, "batch_size": 1024}
        windows["eval_batches"] = 1000
        message, details = _refused(client.post("/runs/train", json=submit.body(**windows)))
        assert "eval_batches (now 1000)" in message


def test_limit_is_the_largest_live_workers_reported_memory(submit: Submit) -> None:
    big = submit.body(**BIG)
    with submit.client() as client:
        # Nothing known (no setting, no worker up): admitted rather than blocked.
        _accepted(client.post("/runs/train", json=big))

        small = submit.worker("worker-small", 4 * GIB)
        message, _ = _refused(client.post("/runs/train", json=big))
        assert "0.9 of 4.00 GiB, the memory of the largest live worker (worker-small)" in message

        # A second, larger worker: the largest live one sets the limit.
        large = submit.worker("worker-large", 64 * GIB)
        _accepted(client.post("/runs/train", json=big))

        # It stops: back to the small one's limit.
        large.leave()
        assert (
            submit.redis.hget(worker_memory_key(submit.settings.rq.queue_name), "worker-large")
            is None
        )
        _refused(client.post("/runs/train", json=big))

        # A large worker last seen longer ago than worker_presence_ttl_sec does not count.
        submit.worker("worker-stale", 64 * GIB, seen_ago=60)
        message, _ = _refused(client.post("/runs/train", json=big))
        assert "(worker-small)" in message
        small.leave()
        _accepted(client.post("/runs/train", json=big))

        # A worker reporting what it reads from its own machine.
        here = machine_memory_bytes()
        assert here is not None
        submit.worker("worker-here", None)
        reported = submit.redis.hget(
            worker_memory_key(submit.settings.rq.queue_name), "worker-here"
        )
        assert reported is not None and int(reported) == here
        fits = client.post("/runs/train", json=submit.body(model_size="tiny"))
        _accepted(fits)


def test_reaper_forgets_the_memory_of_workers_long_gone(submit: Submit) -> None:
    queue = submit.settings.rq.queue_name
    submit.worker("worker-gone", 8 * GIB, seen_ago=10 * 20 + 5)
    assert submit.redis.hexists(worker_memory_key(queue), "worker-gone")
    submit.worker("worker-now", 8 * GIB)
    assert not submit.redis.hexists(worker_memory_key(queue), "worker-gone")
    assert submit.redis.zscore(workers_key(queue), "worker-gone") is None
    assert submit.redis.hget(worker_memory_key(queue), "worker-now") == str(8 * GIB).encode()


# -- 3. configs no worker can run ---------------------------------------------------------


def test_a_giant_config_is_refused_and_never_queued(submit: Submit) -> None:
    with submit.client() as client:  # no limit known: the bounds refuse it on their own
        before = submit.queued()
        message, details = _refused(client.post("/runs/train", json=submit.body(**GIANT)))
        assert {d["field"] for d in details} == {"n_layer", "n_embd", "batch_size"}
        assert "n_layer" in message
        assert submit.queued() == before

    # The largest model within the bounds: refused by the estimate on a 1 TiB worker.
    largest = estimate_run_memory(submit.config(**LARGEST_IN_BOUNDS), VOCAB)
    assert largest.total_bytes > 100 * 1024 * GIB  # over 100 TiB
    with submit.client(worker_memory_bytes=1024 * GIB) as client:
        message, _ = _refused(client.post("/runs/train", json=submit.body(**LARGEST_IN_BOUNDS)))
        assert f"needs about {gib(largest.total_bytes)}" in message
        assert submit.queued() == before


@pytest.mark.parametrize(
    ("field", "too_big", "largest"),
    [
        ("n_layer", 49, 48),
        ("n_head", 129, 128),
        ("n_embd", 4097, 4096),
        ("max_seq_len", 8193, 8192),
        ("batch_size", 1025, 1024),
        ("eval_batches", 1001, 1000),
        ("eval_interval", 1_000_001, 1_000_000),
        ("checkpoint_interval", 1_000_001, 1_000_000),
        ("warmup_steps", 1_000_001, 1_000_000),
        ("learning_rate", 100.5, 100.0),
        ("grad_clip", 1000.5, 1000.0),
    ],
)
def test_numeric_bounds(field: str, too_big: float, largest: float) -> None:
    extra: dict[str, object] = {"n_head": 1} if field == "n_embd" else {}
    if field == "n_head":
        extra = {"n_embd": 128 * 4}
    assert getattr(_config(**{field: largest}, **extra), field) == largest
    with pytest.raises(ValueError, match=field):
        _config(**{field: too_big}, **extra)
