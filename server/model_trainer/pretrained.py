"""What a transformers model folder holds, read without loading it (no torch, no pickle).

A pretrained model to start from arrives as a folder (config.json, safetensors weights,
tokenizer files) or as a plain tar of one. `read_model_folder` and `read_model_archive` say
what it is (its architecture, whether transformers loads it as a causal language model, its
context length and vocabulary, and its parameters, counted from the safetensors headers)
and refuse, naming the files, what this service never opens: pickle-based weights (loading
a pickle runs whatever it names), a folder without safetensors, one that is not a causal LM.
The API checks a base model with it before queuing a run; the worker before loading one.
"""

from __future__ import annotations

import json
import math
import struct
import tarfile
from collections.abc import Callable, Iterator
from pathlib import Path, PurePosixPath
from typing import IO

from pydantic import BaseModel, ConfigDict, JsonValue

from model_trainer.errors import ErrorCode, UserError

# Suffixes of pickle-based weight files (torch.save, pickle; what transformers and torch name
# them). Unpickling runs whatever the file says; torch's `weights_only` narrows that, but a
# model here is safetensors only, so such a file is refused, never opened.
PICKLE_WEIGHT_SUFFIXES = frozenset({".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt"})
# Class names transformers gives its causal language models (`*ForCausalLM`, GPT-2's
# `GPT2LMHeadModel` and the like): what AutoModelForCausalLM loads.
CAUSAL_LM_SUFFIXES = ("ForCausalLM", "LMHeadModel")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model")
# A safetensors header is a little-endian u64 length, then that much JSON (the format's spec).
MAX_HEADER_BYTES = 100 * 1024 * 1024
# The configuration keys families use for their context length, most common first.
CONTEXT_KEYS = ("max_position_embeddings", "n_positions", "n_ctx", "seq_length")


# Opens one of the folder's files by its path in the folder.
_Opener = Callable[[str], IO[bytes]]


class ModelFolder(BaseModel):
    """A transformers model folder, as read from its files."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    model_type: str
    architecture: str
    context_length: int | None
    vocab_size: int | None
    hidden_size: int | None
    num_layers: int | None
    intermediate_size: int | None  # the MLP's hidden width
    n_params: int
    weight_bytes: int
    weight_files: list[str]
    tokenizer_files: list[str]
    chat_template: bool


def read_model_folder(folder: Path) -> ModelFolder:
    """The folder's model; `UserError` naming what makes it unusable."""
    files = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())
    return _read(files, lambda name: (folder / name).open("rb"))


def read_model_archive(path: Path) -> ModelFolder:
    """The model of a plain tar of a model folder (its files at the top, or in one folder),
    read member by member without extracting anything."""
    try:
        with tarfile.open(path, "r:") as tar:
            # `./config.json` and `config.json` are the same file (`tar -C folder .`).
            members = {PurePosixPath(m.name).as_posix(): m for m in tar.getmembers() if m.isfile()}
            root = _common_root(list(members))

            def opened(name: str) -> IO[bytes]:
                handle = tar.extractfile(members[f"{root}{name}"])
                if handle is None:
                    raise UserError(f"the model archive's {name} cannot be read")
                return handle

            return _read(sorted(n[len(root) :] for n in members), opened)
    except tarfile.TarError as exc:
        raise UserError(
            f"the base model is not a plain tar of a model folder: {exc}", ErrorCode.DATA_INVALID
        ) from exc


def _common_root(names: list[str]) -> str:
    """`folder/` when every member is in one top folder (`tar -C parent folder`), else ""."""
    tops = {PurePosixPath(n).parts[0] for n in names if len(PurePosixPath(n).parts) > 1}
    flat = any(len(PurePosixPath(n).parts) == 1 for n in names)
    return f"{tops.pop()}/" if len(tops) == 1 and not flat else ""


def _read(files: list[str], opened: _Opener) -> ModelFolder:
    pickled = [f for f in files if PurePosixPath(f).suffix.lower() in PICKLE_WEIGHT_SUFFIXES]
    if pickled:
        raise _refused(
            f"it holds pickle-based weights ({', '.join(pickled[:5])}): only safetensors "
            "weights are loaded, and these files are never opened; save the model with "
            "save_pretrained (safetensors) and upload that folder"
        )
    weights = [f for f in files if f.endswith(".safetensors")]
    if not weights:
        raise _refused("it has no safetensors weights (model.safetensors)")
    if "config.json" not in files:
        raise _refused("it has no config.json")
    config = _json_object(opened, "config.json")
    architectures = config.get("architectures")
    names = (
        [a for a in architectures if isinstance(a, str)] if isinstance(architectures, list) else []
    )
    causal = [a for a in names if a.endswith(CAUSAL_LM_SUFFIXES)]
    if not causal:
        shown = ", ".join(names) if names else "none"
        raise _refused(
            f"it is not a causal language model (config.json's architectures: {shown}); a "
            "base model is one AutoModelForCausalLM loads (GPT-2, Llama, Qwen, Mistral ...)"
        )
    tokenizers = [f for f in files if f in TOKENIZER_FILES]
    if "tokenizer.json" not in tokenizers:
        raise _refused("it has no tokenizer.json (the fast tokenizer the run trains with)")
    chat_template = "chat_template.jinja" in files
    if "tokenizer_config.json" in files:
        chat_template = chat_template or "chat_template" in _json_object(
            opened, "tokenizer_config.json"
        )
    n_params, weight_bytes = 0, 0
    for name in weights:
        with opened(name) as f:
            count, size = _safetensors_sizes(f, name)
        n_params, weight_bytes = n_params + count, weight_bytes + size
    text = config.get("text_config")
    sizes = text if isinstance(text, dict) else config
    return ModelFolder(
        model_type=str(config.get("model_type", "unknown")),
        architecture=causal[0],
        context_length=_first_int(sizes, CONTEXT_KEYS),
        vocab_size=_first_int(sizes, ("vocab_size",)),
        hidden_size=_first_int(sizes, ("hidden_size", "n_embd", "d_model")),
        num_layers=_first_int(sizes, ("num_hidden_layers", "n_layer", "num_layers")),
        intermediate_size=_first_int(sizes, ("intermediate_size", "n_inner", "ffn_dim")),
        n_params=n_params,
        weight_bytes=weight_bytes,
        weight_files=weights,
        tokenizer_files=tokenizers,
        chat_template=chat_template,
    )


def _refused(why: str) -> UserError:
    return UserError(f"the base model cannot be used: {why}", ErrorCode.DATA_INVALID)


def _json_object(opened: _Opener, name: str) -> dict[str, JsonValue]:
    with opened(name) as f:
        try:
            value: JsonValue = json.loads(f.read())
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise _refused(f"its {name} is not JSON ({exc})") from exc
    if not isinstance(value, dict):
        raise _refused(f"its {name} is not a JSON object")
    return value


def _safetensors_sizes(f: IO[bytes], name: str) -> tuple[int, int]:
    """(parameters, bytes of tensor data) of one safetensors file, from its header only."""
    head = f.read(8)
    if len(head) != 8:
        raise _refused(f"{name} is not a safetensors file (too short)")
    (length,) = struct.unpack("<Q", head)
    if length > MAX_HEADER_BYTES:
        raise _refused(f"{name} is not a safetensors file (a {length}-byte header)")
    try:
        header: JsonValue = json.loads(f.read(length))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise _refused(f"{name} is not a safetensors file ({exc})") from exc
    if not isinstance(header, dict):
        raise _refused(f"{name} is not a safetensors file (its header is not an object)")
    params, size = 0, 0
    for key, tensor in _tensors(header):
        shape, offsets = tensor.get("shape"), tensor.get("data_offsets")
        if not isinstance(shape, list) or not all(isinstance(d, int) for d in shape):
            raise _refused(f"{name}: tensor {key} has no shape")
        if not isinstance(offsets, list) or len(offsets) != 2:
            raise _refused(f"{name}: tensor {key} has no data offsets")
        begin, end = offsets
        if not isinstance(begin, int) or not isinstance(end, int):
            raise _refused(f"{name}: tensor {key} has no data offsets")
        params += math.prod(d for d in shape if isinstance(d, int))
        size += end - begin
    return params, size


def _tensors(header: dict[str, JsonValue]) -> Iterator[tuple[str, dict[str, JsonValue]]]:
    for key, value in header.items():
        if key != "__metadata__" and isinstance(value, dict):
            yield key, value


def _first_int(config: dict[str, JsonValue], keys: tuple[str, ...]) -> int | None:
    for key in keys:
        value = config.get(key)
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    return None
