"""Fine-tuning a base model through `run_training`: full and LoRA, the adapter-only
checkpoints a LoRA run keeps and resumes from, the merged artifact stock transformers loads,
and the base model scored before training beside the fine-tuned one."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

import pytest
import torch
from pydantic import ValidationError
from safetensors import safe_open

from model_trainer.errors import UserError
from model_trainer.tokenization.handle import load_tokenizer
from model_trainer.training.chat import ChatTemplate, Message
from model_trainer.training.checkpoint import load_last
from model_trainer.training.config import TrainingSpec
from model_trainer.training.data import IGNORED, WindowSampler, tokenize_chat_corpus
from model_trainer.training.hardware import CpuInfo
from model_trainer.training.loop import Outcome, ProgressInfo, TrainingCallbacks
from model_trainer.training.model import load_pretrained
from model_trainer.training.run import TrainingResult, run_training
from tests.base_models import BaseKind, base_model_folder, generates
from tests.test_training_data import file_id, token_cache, write_corpus

BASE_ID = "a" * 64
RUN = {
    "base_model": BASE_ID,
    "max_seq_len": 32,
    "batch_size": 8,
    "warmup_steps": 2,
    "eval_interval": 10,
    "eval_batches": 2,
    "checkpoint_interval": 10,
    "precision": "fp32",
}


class Inputs:
    def __init__(self, root: Path, kind: BaseKind, cpu: CpuInfo) -> None:
        self.corpus = root / "corpus.txt"
        text = write_corpus(self.corpus)
        self.base = base_model_folder(root / f"base-{kind}", kind, text)
        self.cache = token_cache(root)
        self.cpu = cpu

    def train(
        self,
        run_dir: Path,
        fields: Mapping[str, object],
        callbacks: TrainingCallbacks | None = None,
    ) -> TrainingResult:
        return run_training(
            TrainingSpec.model_validate({**RUN, **fields}),
            self.corpus,
            self.base,
            run_dir,
            self.cache,
            cpu=self.cpu,
            threads=1,
            corpus_id=file_id(self.corpus),
            tokenizer_id=f"base-{BASE_ID}",
            callbacks=callbacks,
        )


class HandBackAt(TrainingCallbacks):
    """Stops the run at `step` as a worker's shutdown would (checkpoint, no artifact)."""

    def __init__(self, step: int) -> None:
        self.step, self.seen = step, 0

    def on_progress(self, info: ProgressInfo) -> None:
        self.seen = info.step

    def should_hand_back(self) -> bool:
        return self.seen >= self.step


def _weights(folder: Path) -> dict[str, torch.Tensor]:
    with safe_open(str(folder / "model.safetensors"), framework="pt") as f:
        names: list[str] = list(f.keys())  # a safetensors file, not a dict
        return {k: f.get_tensor(k) for k in names}


def test_full_fine_tuning_learns_from_the_base_model_and_ships_a_stock_checkpoint(
    tmp_path: Path, cpu: CpuInfo
) -> None:
    inputs = Inputs(tmp_path, "gpt2", cpu)
    result = inputs.train(tmp_path / "run", {"max_steps": 40, "learning_rate": 3e-3})
    assert result.outcome is Outcome.COMPLETED and result.manifest and result.eval
    tuned = result.manifest.fine_tuning
    assert tuned is not None and tuned.base_eval is not None
    assert tuned.method == "full" and tuned.architecture == "GPT2LMHeadModel"
    assert tuned.trainable_params == result.manifest.n_params
    # Before and after, on the same validation tokens: fine-tuning learned the corpus.
    assert tuned.base_eval.n_tokens == result.eval.n_tokens
    assert result.eval.loss < tuned.base_eval.loss - 1.0
    # The config the run used: fine-tuning's defaults, then the request's.
    assert result.manifest.config.optimizer == "adamw" and result.manifest.config.weight_decay == 0
    assert result.manifest.architecture is None
    artifact = result.artifact_dir
    assert artifact is not None
    # The base tokenizer named no pad: the artifact says the one training used (eos).
    config = json.loads((artifact / "tokenizer_config.json").read_text())
    assert config["pad_token"] == config["eos_token"] == "<|endoftext|>"
    base = _weights(inputs.base)
    tuned_weights = _weights(artifact)
    assert set(tuned_weights) == set(base)
    assert not torch.equal(
        tuned_weights["transformer.h.0.attn.c_attn.weight"],
        base["transformer.h.0.attn.c_attn.weight"],
    )
    generates(artifact, "the quick")


def test_lora_checkpoints_hold_the_adapter_only_resume_and_merge(
    tmp_path: Path, cpu: CpuInfo
) -> None:
    inputs = Inputs(tmp_path, "llama", cpu)
    run_dir = tmp_path / "run"
    fields = {"max_steps": 30, "method": "lora", "lora": {"r": 4}, "learning_rate": 1e-2}
    stopped = inputs.train(run_dir, fields, HandBackAt(12))
    assert stopped.outcome is Outcome.INTERRUPTED
    last = load_last(run_dir)
    assert last is not None and 12 <= last.loop.step == stopped.steps < 30
    # Only the adapter (and no base weight) is in the checkpoint: a small file.
    assert last.model and all("lora_" in k for k in last.model)
    assert {k.rsplit(".", 2)[0].rsplit(".", 1)[-1] for k in last.model} == {"lora_A", "lora_B"}
    base_bytes = (inputs.base / "model.safetensors").stat().st_size
    adapter_bytes = sum(t.numel() * t.element_size() for t in last.model.values())
    assert adapter_bytes < base_bytes / 4
    assert last.loop.base_eval is not None

    result = inputs.train(run_dir, fields)
    assert result.outcome is Outcome.COMPLETED and result.manifest and result.eval
    assert result.manifest.training.resumed_at_steps == [stopped.steps]
    tuned = result.manifest.fine_tuning
    assert tuned is not None and tuned.base_eval == last.loop.base_eval
    assert 0 < tuned.trainable_params < result.manifest.n_params / 4
    assert result.eval.loss < tuned.base_eval.loss
    # The merged artifact: the base model's names and shapes, no adapter left, new weights.
    artifact = result.artifact_dir
    assert artifact is not None
    merged, base = _weights(artifact), _weights(inputs.base)
    assert set(merged) == set(base)
    assert all(merged[k].shape == base[k].shape for k in base)
    changed = [k for k in base if not torch.equal(merged[k], base[k])]
    assert changed and all("proj" in k for k in changed)  # only where adapters were
    assert not (artifact / "adapter_config.json").exists()
    generates(artifact, "the quick")


def test_a_lora_run_can_ship_the_adapter_alone(tmp_path: Path, cpu: CpuInfo) -> None:
    inputs = Inputs(tmp_path, "qwen3", cpu)
    result = inputs.train(
        tmp_path / "run", {"max_steps": 10, "method": "lora", "artifact_format": "adapter"}
    )
    artifact = result.artifact_dir
    assert artifact is not None and result.eval is not None
    adapter = json.loads((artifact / "adapter_config.json").read_text())
    assert adapter["r"] == 8 and adapter["peft_type"] == "LORA"
    assert adapter["base_model_name_or_path"] == BASE_ID  # the run's base_model
    assert (artifact / "adapter_model.safetensors").is_file()
    assert not (artifact / "model.safetensors").exists()
    assert (artifact / "tokenizer.json").is_file()
    # Our loaders refuse it clearly instead of letting transformers look for its base.
    with pytest.raises(UserError, match="LoRA adapter only"):
        load_pretrained(artifact)


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"method": "lora"}, "method applies to fine-tuning: give base_model"),
        ({"base_model": BASE_ID, "n_layer": 4}, "n_layer do not apply with base_model"),
        ({"base_model": BASE_ID, "model_family": "gpt2"}, "model_family / model_size"),
        (
            {"base_model": BASE_ID, "method": "lora", "optimizer": "muon"},
            "method lora trains its low-rank adapters with adamw",
        ),
        (
            {"base_model": BASE_ID, "lora": {"r": 4}},
            "lora and artifact_format apply to method lora",
        ),
        ({"base_model": "hf:org"}, "String should match pattern"),
        ({"base_model": BASE_ID, "method": "lora", "lora": {"r": 0}}, "greater than or equal to 1"),
    ],
)
def test_fine_tuning_settings_are_checked(fields: dict[str, object], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        TrainingSpec.model_validate(fields)


def test_fine_tuning_defaults_fill_what_the_request_leaves_out() -> None:
    lora = TrainingSpec.model_validate(
        {"base_model": "hf:HuggingFaceTB/SmolLM2-135M@main", "method": "lora"}
    )
    assert (lora.optimizer, lora.learning_rate, lora.weight_decay) == ("adamw", 2e-4, 0.0)
    assert lora.lora is not None and lora.lora.r == 8
    full = TrainingSpec.model_validate({"base_model": BASE_ID, "learning_rate": 1e-4})
    assert (full.optimizer, full.learning_rate) == ("adamw", 1e-4)
    # A round trip (the job's payload, a checkpoint's config) keeps the values.
    assert TrainingSpec.model_validate_json(lora.model_dump_json()) == lora
    assert lora.identity() != full.identity()


TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}<|endoftext|>{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)
WORDS = ["the", "quick", "brown", "fox", "jumps", "over", "a", "lazy", "dog"]


def _chat_corpus(path: Path, n: int = 300) -> Path:
    lines = []
    for i in range(n):
        word = WORDS[i % len(WORDS)]
        messages = [
            {"role": "system", "content": "answer in capitals"},
            {"role": "user", "content": f"shout {word}"},
            {"role": "assistant", "content": word.upper()},
            {"role": "user", "content": "again"},
            {"role": "assistant", "content": f"{word.upper()} {word.upper()}"},
        ]
        lines.append(json.dumps({"messages": messages, "id": i}))
    path.write_text("\n".join(lines) + "\n")
    return path


def _chat_base(root: Path, kind: BaseKind = "gpt2") -> Path:
    text = _chat_corpus(root / "warmup.jsonl", 50).read_text()
    return base_model_folder(root / f"chat-{kind}", kind, text, chat_template=TEMPLATE)


def test_a_conversation_is_cut_into_what_is_trained_on_and_what_is_only_read(
    tmp_path: Path,
) -> None:
    template = ChatTemplate(_chat_base(tmp_path))
    messages = [
        Message(role="user", content="shout fox"),
        Message(role="assistant", content="FOX"),
        Message(role="user", content="again"),
        Message(role="assistant", content="FOX FOX"),
    ]
    pieces = template.segments(messages, assistant_only=True)
    assert pieces == [
        ("<|user|>shout fox<|endoftext|><|assistant|>", False),
        ("FOX<|endoftext|>", True),
        ("<|user|>again<|endoftext|><|assistant|>", False),
        ("FOX FOX<|endoftext|>", True),
    ]
    assert "".join(t for t, _ in pieces) == template.render(messages)
    assert template.segments(messages, assistant_only=False) == [(template.render(messages), True)]


def test_chat_corpus_tokens_carry_a_mask_and_windows_ignore_the_rest(
    tmp_path: Path,
) -> None:
    base = _chat_base(tmp_path)
    corpus = _chat_corpus(tmp_path / "chat.jsonl")
    tokenizer = load_tokenizer(base, pad_falls_back_to_eos=True)
    cache = token_cache(tmp_path)
    with tokenize_chat_corpus(
        corpus,
        tokenizer,
        ChatTemplate(base),
        "base-x",
        cache,
        corpus_id=file_id(corpus),
        assistant_only=True,
    ) as tokens:
        ids, mask = tokens.tokens(), tokens.mask()
        assert mask is not None and len(mask) == len(ids) and 0 < mask.sum() < len(mask)
        trained = tokenizer.decode(
            [int(t) for t, m in zip(ids[:200], mask[:200], strict=True) if m]
        )
        assert trained.startswith("THE<|endoftext|>THE THE<|endoftext|>QUICK")
        read_only = tokenizer.decode(
            [int(t) for t, m in zip(ids[:60], mask[:60], strict=True) if not m]
        )
        assert "shout the" in read_only and "THE" not in read_only
        sampler = WindowSampler(ids, 16, 8, 0, mask)
        for _ in range(5):
            _, y = sampler.next_batch()
            assert bool((y == IGNORED).any()) and bool((y != IGNORED).any())
    with tokenize_chat_corpus(
        corpus,
        tokenizer,
        ChatTemplate(base),
        "base-x",
        cache,
        corpus_id=file_id(corpus),
        assistant_only=False,
    ) as everything:
        mask_all = everything.mask()
        assert mask_all is not None and bool(mask_all.all())


def test_a_chat_corpus_fine_tunes_on_the_assistants_tokens(tmp_path: Path, cpu: CpuInfo) -> None:
    base = _chat_base(tmp_path)
    corpus = _chat_corpus(tmp_path / "chat.jsonl")
    result = run_training(
        TrainingSpec.model_validate({**RUN, "max_steps": 80, "learning_rate": 3e-3}),
        corpus,
        base,
        tmp_path / "run",
        token_cache(tmp_path),
        cpu=cpu,
        threads=1,
        corpus_id=file_id(corpus),
        tokenizer_id=f"base-{BASE_ID}",
        chat=True,
    )
    assert result.outcome is Outcome.COMPLETED and result.manifest and result.eval
    tuned = result.manifest.fine_tuning
    assert tuned is not None and tuned.base_eval is not None
    assert result.eval.loss < tuned.base_eval.loss
    # The validation curve is the loss of the assistant's tokens (a capitalised echo of the
    # user's word): it falls far below where it started.
    losses = [r["val_loss"] for r in _metric_rows(tmp_path / "run") if r["val_loss"] is not None]
    assert losses[-1] < losses[0] / 2


def _metric_rows(run_dir: Path) -> list[dict[str, float | None]]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    rows: list[dict[str, float | None]] = [json.loads(line) for line in lines]
    return rows


def test_a_base_model_without_a_chat_template_is_refused_for_chat_data(tmp_path: Path) -> None:
    base = base_model_folder(tmp_path / "plain", "gpt2", "the quick brown fox " * 50)
    with pytest.raises(UserError, match="has no chat template"):
        ChatTemplate(base)
