"""The small JSON files that make a `tokenizer.json` folder load in transformers.

`tokenizer_config.json` names the generic fast tokenizer class, so `AutoTokenizer` uses
`tokenizer.json` as it is (no model-specific class rebuilding it), and gives the special
tokens their roles; `special_tokens_map.json` repeats the roles for readers older than
transformers 5. Written by hand rather than with `save_pretrained`, so saving needs no
transformers import and the content is exactly what is written here.
"""

from __future__ import annotations

import json
from pathlib import Path

from model_trainer.tokenization.config import TokenizerTrainConfig

TOKENIZER_JSON = "tokenizer.json"
TOKENIZER_CONFIG_JSON = "tokenizer_config.json"
SPECIAL_TOKENS_MAP_JSON = "special_tokens_map.json"


def special_tokens_map(config: TokenizerTrainConfig) -> dict[str, str]:
    """Roles of the special tokens; end of text doubles as beginning of sequence (GPT-2)."""
    special = config.special_tokens
    roles = {
        "bos_token": special.end_of_text,
        "eos_token": special.end_of_text,
        "pad_token": special.pad,
    }
    if special.unk is not None:
        roles["unk_token"] = special.unk
    return roles


def write_transformers_files(config: TokenizerTrainConfig, folder: Path) -> list[str]:
    """Write the two files next to `tokenizer.json`; returns their names."""
    roles = special_tokens_map(config)
    tokenizer_config: dict[str, str | bool] = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        **roles,
        # transformers 4 would otherwise "clean up" spaces before punctuation on decode,
        # breaking the exact round trip.
        "clean_up_tokenization_spaces": False,
    }
    _write_json(folder / TOKENIZER_CONFIG_JSON, tokenizer_config)
    _write_json(folder / SPECIAL_TOKENS_MAP_JSON, roles)
    return [TOKENIZER_CONFIG_JSON, SPECIAL_TOKENS_MAP_JSON]


def _write_json(path: Path, content: dict[str, str] | dict[str, str | bool]) -> None:
    path.write_text(json.dumps(content, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
