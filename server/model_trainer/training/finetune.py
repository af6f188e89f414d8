"""Fine-tuning a base model: load it, wrap it for LoRA, save what a checkpoint keeps, merge.

A run with `base_model` starts from a transformers model folder (pretrained.py has checked
it: safetensors only, a causal LM, a tokenizer.json) instead of a model built from our
presets. `method: full` trains every weight, like a run from scratch. `method: lora` freezes
the base weights and trains low-rank adapters beside the chosen linear layers (peft's
`LoraModel`); checkpoints then hold only what trains (`trainable_state`), so they are small,
and a resumed run loads the base again and puts the adapters back. The artifact is the base
model with the adapters merged in (`merged_model`: a stock checkpoint for
`AutoModelForCausalLM`), or the adapter alone (`artifact_format: adapter`, peft's files).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from peft import LoraConfig, PeftModel, get_peft_model
from transformers import AutoModelForCausalLM, PreTrainedModel

from model_trainer.errors import ErrorCode, UserError
from model_trainer.pretrained import read_model_folder
from model_trainer.training.config import FineTuneMethod, LoraSpec, TrainingSpec

# The attention's and the MLP's projections where peft's own table has no entry for the
# architecture (its table covers GPT-2, Llama, Qwen2/3, Mistral ... and names only the
# attention's): adapters on every projection fine-tune better at the same rank (QLoRA, §4).
LORA_TARGETS: dict[str, list[str]] = {
    "gpt2": ["c_attn", "c_proj", "c_fc"],
    "llama": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
    "qwen2": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
    "qwen3": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
    "mistral": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
}


@dataclass(frozen=True)
class LoadedBase:
    """A base model ready to train. `model` is what the loop trains (with LoRA, the base
    model with peft's layers put in place, its own weights frozen); `adapter` is peft's
    wrapper of it, which saves the adapter and merges it."""

    model: PreTrainedModel
    adapter: PeftModel | None
    model_type: str


def load_base_model(folder: Path, config: TrainingSpec) -> LoadedBase:
    """The base model of `folder`, in fp32, ready to train as `config.method` says.

    The folder is read again first (`read_model_folder`: pickle weights are never opened);
    `use_safetensors` keeps transformers from falling back to any other format. LoRA's
    adapters are initialised from `config.seed` (B at zero, so step 0 is the base model).
    """
    described = read_model_folder(folder)
    model = AutoModelForCausalLM.from_pretrained(folder, use_safetensors=True, dtype=torch.float32)
    if not isinstance(model, PreTrainedModel):
        raise UserError(f"the base model is not a causal language model ({type(model).__name__})")
    model.set_attn_implementation("sdpa")
    if config.method is FineTuneMethod.FULL:
        return LoadedBase(model, None, described.model_type)
    lora = config.lora or LoraSpec()
    targets = lora.target_modules or LORA_TARGETS.get(described.model_type)
    torch.manual_seed(config.seed)
    try:
        adapted = get_peft_model(
            model,
            LoraConfig(
                r=lora.r,
                lora_alpha=lora.alpha,
                lora_dropout=lora.dropout,
                target_modules=targets,  # None: peft's table for the architecture
                task_type="CAUSAL_LM",
            ),
        )
    except ValueError as exc:  # peft: no target module found, or no default for this type
        raise UserError(
            f"cannot put LoRA adapters on this {described.model_type} model: {exc}; name the "
            "linear layers in lora.target_modules",
            ErrorCode.CONFIG_INVALID,
        ) from exc
    if not isinstance(adapted, PeftModel):
        raise TypeError(f"peft gave a {type(adapted).__name__}")
    # peft put its layers into `model` itself: the loop trains it, frozen base and all.
    return LoadedBase(model, adapted, described.model_type)


def save_adapter(base: LoadedBase, base_model: str, folder: Path) -> None:
    """peft's adapter files (adapter_config.json, adapter_model.safetensors) into `folder`;
    the config names the base model as the run did (not the worker's path to it)."""
    if base.adapter is None:
        raise ValueError("save_adapter needs a LoRA run's model")
    for config in base.adapter.peft_config.values():
        config.base_model_name_or_path = base_model
    base.adapter.save_pretrained(str(folder))


def merged_model(base: LoadedBase) -> PreTrainedModel:
    """A plain transformers model: LoRA's adapters merged into the base weights (in place:
    the adapters are gone from `base.model` afterwards)."""
    if base.adapter is None:
        return base.model
    merged = base.adapter.merge_and_unload()
    if not isinstance(merged, PreTrainedModel):
        raise TypeError(f"merging gave a {type(merged).__name__}")
    return merged
