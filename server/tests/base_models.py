"""Tiny base models to fine-tune, built here with random weights (no network): a transformers
model folder as `save_pretrained` writes one (config, safetensors, a fast tokenizer that, like
GPT-2's and Llama's, names an end-of-text token and no pad), and a tar of it for Data Bank."""

from __future__ import annotations

import json
import shutil
import tarfile
from pathlib import Path
from typing import Literal, TypedDict

import torch
from tokenizers import Tokenizer
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedModel,
    Qwen3Config,
    Qwen3ForCausalLM,
)

from model_trainer.training.evaluate import CanGenerate
from tests.test_training_data import EOS, train_bpe

BaseKind = Literal["gpt2", "llama", "qwen3"]
CONTEXT = 128


def base_model_folder(
    folder: Path, kind: BaseKind, text: str, *, width: int = 32, chat_template: str | None = None
) -> Path:
    """A base model of `kind`, `width` wide, with a byte-level BPE tokenizer trained on
    `text`, its files as transformers writes them (tokenizer_config.json names the class and
    the end-of-text token, no pad)."""
    scratch = train_bpe(folder.with_name(folder.name + "-tok"), text)
    folder.mkdir(parents=True)
    shutil.copyfile(scratch / "tokenizer.json", folder / "tokenizer.json")
    config: dict[str, object] = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "eos_token": EOS,
        "model_max_length": CONTEXT,
    }
    if chat_template is not None:
        config["chat_template"] = chat_template
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    vocab = Tokenizer.from_file(str(folder / "tokenizer.json")).get_vocab_size()
    torch.manual_seed(0)
    model: PreTrainedModel
    if kind == "gpt2":
        model = GPT2LMHeadModel(
            GPT2Config(n_layer=2, n_embd=width, n_head=2, n_positions=CONTEXT, vocab_size=vocab)
        )
    elif kind == "llama":
        model = LlamaForCausalLM(LlamaConfig(**_rotary_shape(width, vocab)))
    else:
        model = Qwen3ForCausalLM(Qwen3Config(**_rotary_shape(width, vocab)))
    model.save_pretrained(folder)
    return folder


class _RotaryShape(TypedDict):
    num_hidden_layers: int
    hidden_size: int
    intermediate_size: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    max_position_embeddings: int
    vocab_size: int


def _rotary_shape(width: int, vocab: int) -> _RotaryShape:
    """What the Llama and the Qwen3 share: two layers, grouped-query attention."""
    return _RotaryShape(
        num_hidden_layers=2,
        hidden_size=width,
        intermediate_size=2 * width,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=width // 2,
        max_position_embeddings=CONTEXT,
        vocab_size=vocab,
    )


def generates(folder: Path, prompt: str, new_tokens: int = 8) -> str:
    """Load `folder` with stock transformers (AutoModelForCausalLM, AutoTokenizer) and
    continue `prompt` greedily by `new_tokens` tokens."""
    loaded = AutoModelForCausalLM.from_pretrained(folder)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model: PreTrainedModel = loaded
    assert isinstance(model, CanGenerate)
    ids = tokenizer(prompt, return_tensors="pt")["input_ids"]
    assert isinstance(ids, torch.Tensor)
    out = model.generate(
        input_ids=ids,
        max_new_tokens=new_tokens,
        do_sample=False,
        pad_token_id=tokenizer.pad_token_id,
    )
    assert isinstance(out, torch.Tensor) and out.shape[1] == ids.shape[1] + new_tokens
    text = tokenizer.decode(out[0].tolist())
    assert isinstance(text, str)
    return text


def tar_folder(folder: Path, dest: Path) -> Path:
    """A plain tar of `folder` under its own name (what `modeltrainer model upload` sends)."""
    with tarfile.open(dest, "w") as tar:
        tar.add(folder, arcname=folder.name)
    return dest
