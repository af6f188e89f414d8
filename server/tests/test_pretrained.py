"""Reading a transformers model folder (or a tar of one) without loading it: what it is, its
parameters counted from the safetensors headers, and a clear refusal of pickle-based
weights, folders without safetensors and models that are not causal LMs. The models are
tiny, built here with random weights (no network)."""

from __future__ import annotations

import json
import tarfile
from pathlib import Path

import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import (
    BertConfig,
    BertModel,
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedModel,
)

from model_trainer.errors import UserError
from model_trainer.pretrained import read_model_archive, read_model_folder


def _tokenizer_files(folder: Path, chat: bool = False) -> None:
    vocab = {"<eos>": 0, **{chr(97 + i): i + 1 for i in range(26)}}
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="<eos>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer.save(str(folder / "tokenizer.json"))
    config: dict[str, object] = {"eos_token": "<eos>"}
    if chat:
        config["chat_template"] = "{% for m in messages %}{{ m['content'] }}{% endfor %}"
    (folder / "tokenizer_config.json").write_text(json.dumps(config))


def _saved(model: PreTrainedModel, folder: Path, chat: bool = False) -> Path:
    model.save_pretrained(folder)
    _tokenizer_files(folder, chat)
    return folder


def _tar(folder: Path, path: Path, *, nested: bool) -> Path:
    with tarfile.open(path, "w") as tar:
        tar.add(folder, arcname=folder.name if nested else ".")
    return path


def _params(model: PreTrainedModel) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("nested", [False, True])
def test_a_gpt2_and_a_llama_are_read_from_their_folder_and_their_tar(
    tmp_path: Path, nested: bool
) -> None:
    gpt2 = GPT2LMHeadModel(
        GPT2Config(n_layer=2, n_embd=32, n_head=2, n_positions=64, vocab_size=27)
    )
    llama = LlamaForCausalLM(
        LlamaConfig(
            num_hidden_layers=2,
            hidden_size=32,
            intermediate_size=64,
            num_attention_heads=2,
            num_key_value_heads=1,
            max_position_embeddings=128,
            vocab_size=27,
        )
    )
    for model, name, arch, context, chat in (
        (gpt2, "gpt2", "GPT2LMHeadModel", 64, False),
        (llama, "llama", "LlamaForCausalLM", 128, True),
    ):
        folder = _saved(model, tmp_path / name, chat)
        for info in (
            read_model_folder(folder),
            read_model_archive(_tar(folder, tmp_path / f"{name}.tar", nested=nested)),
        ):
            assert (info.model_type, info.architecture) == (name, arch)
            assert (info.context_length, info.vocab_size, info.hidden_size, info.num_layers) == (
                context,
                27,
                32,
                2,
            )
            # Counted from the headers: the tied embedding once, as the model counts it.
            assert info.n_params == _params(model)
            assert info.weight_bytes == 4 * _params(model)  # float32
            assert info.weight_files == ["model.safetensors"]
            assert info.tokenizer_files == ["tokenizer.json"]
            assert info.chat_template is chat


def test_what_cannot_be_a_base_model_is_refused_naming_why(tmp_path: Path) -> None:
    gpt2 = GPT2LMHeadModel(
        GPT2Config(n_layer=1, n_embd=16, n_head=2, n_positions=32, vocab_size=27)
    )

    pickled = tmp_path / "pickled"
    pickled.mkdir()
    gpt2.config.save_pretrained(pickled)
    torch.save(gpt2.state_dict(), pickled / "pytorch_model.bin")
    _tokenizer_files(pickled)

    not_causal = _saved(
        BertModel(
            BertConfig(
                num_hidden_layers=1,
                hidden_size=16,
                num_attention_heads=2,
                intermediate_size=32,
                vocab_size=27,
            )
        ),
        tmp_path / "bert",
    )

    no_tokenizer = tmp_path / "no-tokenizer"
    gpt2.save_pretrained(no_tokenizer)

    no_weights = tmp_path / "no-weights"
    no_weights.mkdir()
    gpt2.config.save_pretrained(no_weights)

    for folder, says in (
        (pickled, "pickle-based weights (pytorch_model.bin)"),
        (not_causal, "not a causal language model (config.json's architectures: BertModel)"),
        (no_tokenizer, "no tokenizer.json"),
        (no_weights, "no safetensors weights"),
    ):
        for archived in (False, True):
            with pytest.raises(UserError, match="the base model cannot be used") as caught:
                if archived:
                    read_model_archive(_tar(folder, tmp_path / "x.tar", nested=True))
                else:
                    read_model_folder(folder)
            assert says in caught.value.message

    garbage = tmp_path / "garbage.tar"
    garbage.write_bytes(b"not a tar at all" * 100)
    with pytest.raises(UserError, match="not a plain tar"):
        read_model_archive(garbage)
