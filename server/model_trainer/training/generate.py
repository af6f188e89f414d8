"""Text generation from a trained model, for the API's `POST /runs/{id}/generate`.

The API imports this module only inside its generation threads (api/generation.py): it
loads torch and transformers, which the API process must not pay for at startup.

Sampling is ours, on the logits, with a `torch.Generator` per request (never the global RNG,
which other threads share): temperature (0 = greedy), top-k, then top-p (nucleus). A prompt
longer than the model's context keeps its last tokens, and generation goes on past the
context by sliding the window: the key/value cache is used while the window has room; when
it is full, the last `context - stride` tokens are run again and the cache continues from
there (`stride` = a quarter of the context), so each new token sees at least three quarters
of a context of text before it and the cost per token stays bounded.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import PreTrainedModel
from transformers.cache_utils import Cache

from model_trainer.errors import GenerationStopped
from model_trainer.tokenization.handle import TokenizerHandle, load_tokenizer
from model_trainer.training.checkpoint import load_weights
from model_trainer.training.config import TrainingSpec
from model_trainer.training.model import MODEL_BUILDERS, load_pretrained, model_spec

log = logging.getLogger("model_trainer.generate")


@dataclass(frozen=True)
class LoadedModel:
    model: PreTrainedModel
    tokenizer: TokenizerHandle
    context: int  # tokens the model attends to (max_position_embeddings)
    nbytes: int  # weights and buffers in memory


@dataclass(frozen=True)
class Sampling:
    max_new_tokens: int
    temperature: float
    top_k: int
    top_p: float
    num_samples: int
    seed: int


@dataclass(frozen=True)
class Generated:
    samples: list[str]
    prompt_tokens: int  # the prompt's tokens the model saw (its last `context` at most)
    new_tokens: int  # per sample


def set_threads(threads: int) -> None:
    if threads > 0:
        torch.set_num_threads(threads)


def _loaded(model: PreTrainedModel, tokenizer: TokenizerHandle) -> LoadedModel:
    model.train(False)  # model.eval(): no dropout
    tensors = [*model.parameters(), *model.buffers()]
    return LoadedModel(
        model=model,
        tokenizer=tokenizer,
        context=int(model.config.max_position_embeddings),
        nbytes=sum(t.numel() * t.element_size() for t in tensors),
    )


def load_artifact(folder: Path, *, base: bool = False) -> LoadedModel:
    """A completed run's artifact folder (a stock transformers checkpoint + tokenizer), or
    with `base` a base model's folder (its tokenizer may name no pad); one with weights
    other than safetensors is a `UserError` (422), unopened."""
    tokenizer = load_tokenizer(folder, pad_falls_back_to_eos=base)
    return _loaded(load_pretrained(folder), tokenizer)


def load_checkpoint(config: TrainingSpec, tokenizer_dir: Path, weights: Path) -> LoadedModel:
    """A checkpoint file's weights in the model the run's request describes."""
    tokenizer = load_tokenizer(tokenizer_dir)
    spec = model_spec(config, tokenizer.vocab_size, tokenizer.eos_id, tokenizer.pad_id)
    # The builder directly, not `build_model`: that seeds torch's global RNG.
    model = MODEL_BUILDERS[config.model_family](spec)
    model.load_state_dict(load_weights(weights))
    return _loaded(model, tokenizer)


def _forward(
    model: PreTrainedModel, ids: torch.Tensor, cache: Cache | None
) -> tuple[torch.Tensor, Cache]:
    output = model(input_ids=ids, past_key_values=cache, use_cache=True)
    logits, past = output.logits, output.past_key_values
    if not isinstance(logits, torch.Tensor) or not isinstance(past, Cache):
        raise TypeError(f"{type(model).__name__} returned no logits or no cache")
    return logits[:, -1, :].float(), past


def _pick(logits: torch.Tensor, s: Sampling, generator: torch.Generator) -> torch.Tensor:
    """One token id per row of `logits` (rows x vocab), shape (rows, 1)."""
    if s.temperature == 0:
        return logits.argmax(dim=-1, keepdim=True)
    # In float64, as the request's numbers are (a temperature of 1e-300 is 0 in float32), and
    # shifted so that the largest is 0 before dividing: a tiny temperature then sends the
    # others to -inf, never the largest to inf (inf - inf in the softmax is nan).
    logits = logits.double()
    logits = (logits - logits.max(dim=-1, keepdim=True).values) / s.temperature
    if 0 < s.top_k < logits.shape[-1]:
        kth = torch.topk(logits, s.top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if s.top_p < 1.0:
        ordered, order = torch.sort(logits, descending=True, dim=-1)
        cumulative = torch.softmax(ordered, dim=-1).cumsum(dim=-1)
        # Drop a token when the ones before it already reach top_p (the first always stays).
        drop = (cumulative - torch.softmax(ordered, dim=-1)) >= s.top_p
        drop[:, 0] = False
        ordered = ordered.masked_fill(drop, float("-inf"))
        logits = torch.full_like(logits, float("-inf")).scatter(-1, order, ordered)
    probs = torch.softmax(logits, dim=-1)
    return torch.multinomial(probs, 1, generator=generator)


def _never() -> bool:
    return False


@torch.inference_mode()
def generate(
    loaded: LoadedModel,
    prompt: str,
    s: Sampling,
    should_stop: Callable[[], bool] = _never,
    on_text: Callable[[list[str]], None] | None = None,
) -> Generated:
    """`s.max_new_tokens` tokens per sample; `should_stop` is asked before each token, and a
    true answer ends the work with `GenerationStopped` (the client left: nobody would read
    the text, and the thread is wanted by the next request). `on_text` (a stream) gets each
    sample's text so far after every token (decoded whole: a token may end a character
    that the one before began)."""
    tokenizer, context = loaded.tokenizer, loaded.context
    prompt_ids = tokenizer.encode_batch([prompt])[0][-context:] or [tokenizer.eos_id]
    generator = torch.Generator().manual_seed(s.seed)
    stride = max(1, context // 4)
    window = torch.tensor([prompt_ids] * s.num_samples, dtype=torch.long)
    new = torch.empty((s.num_samples, 0), dtype=torch.long)
    logits, cache = _forward(loaded.model, window, None)
    for i in range(s.max_new_tokens):
        if should_stop():
            raise GenerationStopped(f"generation stopped after {i} of {s.max_new_tokens} tokens")
        token = _pick(logits, s, generator)
        new = torch.cat([new, token], dim=1)
        if on_text is not None:
            on_text([tokenizer.decode(row) for row in new.tolist()])
        if i == s.max_new_tokens - 1:
            break
        window = torch.cat([window, token], dim=1)
        if window.shape[1] <= context:
            logits, cache = _forward(loaded.model, token, cache)
        else:
            # The window is full: start again from its last `context - stride` tokens.
            window = window[:, -(context - stride) :] if context > stride else window[:, -1:]
            logits, cache = _forward(loaded.model, window, None)
    samples = [tokenizer.decode(row) for row in new.tolist()]
    return Generated(samples=samples, prompt_tokens=len(prompt_ids), new_tokens=s.max_new_tokens)
