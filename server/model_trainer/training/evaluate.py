"""Evaluate a saved model on a whole token span, and write a few seeded generations.

Metrics (written to `eval/metrics.json`):
- `loss`: mean cross-entropy in nats per predicted token;
- `perplexity`: exp(loss);
- `bits_per_char`: total nats / characters spelled by the predicted tokens / ln 2, which
  compares models with different tokenizers (a character-level model included);
- `tokens_per_char`: predicted tokens / those characters.

The span is cut into consecutive windows of the model's context, and every token after the
first is predicted exactly once, from the tokens before it in its window (the first token
has no context, so it is the only one not scored). For the validation and test splits we
start one token early, at the token before the split, so that every token of the split is
scored and the characters counted are exactly the split's (`data.eval_tokens`; the splits
themselves are defined once, by `data.Holdout`).

`eval/samples.jsonl` holds one seeded continuation per prompt of a fixed set.
"""

from __future__ import annotations

import json
import logging
import math
import time
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict
from transformers import PreTrainedModel

from model_trainer.disk_cache import DiskCache
from model_trainer.errors import UserError
from model_trainer.manifest import read_manifest
from model_trainer.tokenization.handle import TokenizerHandle, load_tokenizer
from model_trainer.training.config import TrainingSpec
from model_trainer.training.data import (
    EvalSplit,
    Holdout,
    TokenArray,
    count_chars,
    eval_tokens,
    tokenize_corpus,
)
from model_trainer.training.model import load_pretrained
from model_trainer.training.step import forward_logits
from service_common.jsonlog import log_fields

log = logging.getLogger("model_trainer.training")

EVAL_DIR = "eval"
METRICS_FILE = "metrics.json"
SAMPLES_FILE = "samples.jsonl"
# Short, corpus-neutral prompts; the same for every run so samples compare across runs.
DEFAULT_PROMPTS = ("The ", "Once upon a time", "\n")
EVAL_BATCH = 16
EVAL_MAX_CONTEXT = 2048


class EvalMetrics(BaseModel):
    model_config = ConfigDict(extra="forbid")

    split: str
    loss: float
    perplexity: float
    bits_per_char: float
    tokens_per_char: float
    n_tokens: int  # tokens scored
    n_chars: int  # characters those tokens spell
    context: int  # window length used
    seconds: float


class Sample(BaseModel):
    model_config = ConfigDict(extra="forbid")

    prompt: str
    completion: str
    seed: int
    max_new_tokens: int
    temperature: float
    top_k: int


@torch.inference_mode()
def sum_nats(
    model: PreTrainedModel, tokens: TokenArray, context: int, batch_size: int = EVAL_BATCH
) -> tuple[float, int]:
    """Total cross-entropy (nats) of tokens[1:], each predicted once; and how many."""
    model.train(False)  # model.eval()
    n_targets = len(tokens) - 1
    if n_targets < 1:
        raise UserError("nothing to evaluate: the text gives fewer than two tokens")
    starts = list(range(0, n_targets, context))
    full = [s for s in starts if s + context <= n_targets]
    total = 0.0
    offsets = np.arange(context + 1, dtype=np.int64)
    for i in range(0, len(full), batch_size):
        rows = np.asarray(full[i : i + batch_size], dtype=np.int64)[:, None] + offsets
        total += _window_nats(model, torch.from_numpy(tokens[rows].astype(np.int64)))
    if len(full) < len(starts):  # the shorter tail window
        tail = np.asarray(tokens[starts[-1] :], dtype=np.int64)
        total += _window_nats(model, torch.from_numpy(tail)[None, :])
    return total, n_targets


def _window_nats(model: PreTrainedModel, windows: torch.Tensor) -> float:
    windows = windows.to(model.device)  # a run trained on a GPU is evaluated there
    logits = forward_logits(model, windows[:, :-1])
    targets = windows[:, 1:]
    # float64 sum: a long split adds up millions of terms.
    nats = F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten(), reduction="none")
    return float(nats.double().sum().item())


def score(
    model: PreTrainedModel,
    tokenizer: TokenizerHandle,
    tokens: TokenArray,
    split: str,
    context: int,
) -> EvalMetrics:
    started = time.perf_counter()
    total, n_tokens = sum_nats(model, tokens, context)
    n_chars = count_chars(tokens[1:], tokenizer)
    loss = total / n_tokens
    return EvalMetrics(
        split=split,
        loss=loss,
        perplexity=math.exp(min(loss, 700.0)),  # exp overflows past ~709
        bits_per_char=total / max(1, n_chars) / math.log(2),
        tokens_per_char=n_tokens / max(1, n_chars),
        n_tokens=n_tokens,
        n_chars=n_chars,
        context=context,
        seconds=round(time.perf_counter() - started, 3),
    )


@runtime_checkable
class CanGenerate(Protocol):
    # transformers types GenerationMixin.generate's `self` with a Protocol that a
    # PreTrainedModel does not satisfy under mypy; this is the part of it we use.
    def generate(self, input_ids: torch.Tensor, **kwargs: object) -> object: ...


@torch.inference_mode()
def generate_samples(
    model: PreTrainedModel,
    tokenizer: TokenizerHandle,
    *,
    prompts: tuple[str, ...] = DEFAULT_PROMPTS,
    seed: int = 1337,
    max_new_tokens: int = 64,
    temperature: float = 0.8,
    top_k: int = 40,
) -> list[Sample]:
    if not isinstance(model, CanGenerate):
        raise TypeError(f"{type(model).__name__} cannot generate text")
    model.train(False)  # model.eval()
    context = int(model.config.max_position_embeddings)
    samples: list[Sample] = []
    for prompt in prompts:
        ids = tokenizer.encode_batch([prompt])[0][-(context - 1) :] or [tokenizer.eos_id]
        n_new = max(1, min(max_new_tokens, context - len(ids)))
        torch.manual_seed(seed)  # each prompt's sample is reproducible on its own
        output = model.generate(
            input_ids=torch.tensor([ids], device=model.device),
            attention_mask=torch.ones(1, len(ids), dtype=torch.long, device=model.device),
            do_sample=True,
            max_new_tokens=n_new,
            temperature=temperature,
            top_k=top_k,
            pad_token_id=tokenizer.pad_id,
        )
        if not isinstance(output, torch.Tensor):
            raise TypeError("generate() returned no token tensor")
        completion = tokenizer.decode(output[0, len(ids) :].tolist())
        samples.append(
            Sample(
                prompt=prompt,
                completion=completion,
                seed=seed,
                max_new_tokens=n_new,
                temperature=temperature,
                top_k=top_k,
            )
        )
    return samples


def write_eval(out_dir: Path, metrics: EvalMetrics, samples: list[Sample]) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / METRICS_FILE).write_text(metrics.model_dump_json(indent=2) + "\n", "utf-8")
    with (out_dir / SAMPLES_FILE).open("w", encoding="utf-8") as f:
        f.writelines(json.dumps(s.model_dump(), ensure_ascii=False) + "\n" for s in samples)


def eval_context(model: PreTrainedModel) -> int:
    """The window evaluation scores in: the model's whole context, up to EVAL_MAX_CONTEXT (a
    base model may take 32k tokens; scores past a few thousand barely change)."""
    return min(int(model.config.max_position_embeddings), EVAL_MAX_CONTEXT)


def evaluate_model(
    model: PreTrainedModel,
    tokenizer: TokenizerHandle,
    tokens: TokenArray,
    out_dir: Path,
    *,
    split: str,
    seed: int = 1337,
) -> EvalMetrics:
    """Score `tokens` (all but the first are predicted), sample, write `out_dir`'s files."""
    metrics = score(model, tokenizer, tokens, split, eval_context(model))
    write_eval(out_dir, metrics, generate_samples(model, tokenizer, seed=seed))
    log.info(
        "evaluated on %s: %.4f nats/token, %.4f bits/char",
        split,
        metrics.loss,
        metrics.bits_per_char,
        extra=log_fields("model_evaluated", split=split, bits_per_char=metrics.bits_per_char),
    )
    return metrics


def evaluate_folder(
    model_dir: Path,
    corpus_path: Path,
    token_cache: DiskCache,
    out_dir: Path,
    *,
    corpus_id: str,
    split: EvalSplit,
    seed: int = 1337,
) -> EvalMetrics:
    """Evaluate a saved model folder (weights, tokenizer files, manifest) on a corpus.

    `corpus_id` is the corpus's Data Bank file id (its SHA-256), a key of its token file in
    `token_cache`.
    `"validation"` and `"test"` score those parts of the run's own corpus, cut as training
    cut it (`data.Holdout`, with the run's `holdout_fraction` from the folder's manifest);
    `"all"` scores the whole text (another corpus, say).
    """
    loaded = load_pretrained(model_dir)
    manifest = read_manifest(model_dir)
    spec = TrainingSpec.model_validate(manifest["config"])
    data = manifest.get("data")
    tokenizer_id = data.get("tokenizer_id") if isinstance(data, dict) else None
    if not isinstance(tokenizer_id, str):
        raise ValueError(f"the manifest in {model_dir} names no tokenizer_id")
    tokenizer = load_tokenizer(model_dir)
    with tokenize_corpus(
        corpus_path, tokenizer, tokenizer_id, token_cache, corpus_id=corpus_id
    ) as cache:
        tokens = cache.tokens()
        holdout = Holdout.of(len(tokens), spec.holdout_fraction)
        scored = eval_tokens(tokens, holdout, split)
        return evaluate_model(loaded, tokenizer, scored, out_dir, split=split, seed=seed)
