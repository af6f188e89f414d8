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

from model_trainer.errors import ErrorCode, UserError
from model_trainer.tokenization.config import TokenizerTrainConfig

TOKENIZER_JSON = "tokenizer.json"
TOKENIZER_CONFIG_JSON = "tokenizer_config.json"
SPECIAL_TOKENS_MAP_JSON = "special_tokens_map.json"
SPECIAL_ROLES = ("bos_token", "eos_token", "pad_token", "unk_token")


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
    return write_special_token_files(folder, special_tokens_map(config))


def write_special_token_files(folder: Path, roles: dict[str, str]) -> list[str]:
    """The two files for special tokens with these roles (eos_token, pad_token, ...)."""
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


def read_special_tokens(folder: Path) -> dict[str, str]:
    """Role -> token text from the folder's files: `tokenizer_config.json` first, then
    `special_tokens_map.json` for roles it lacks. Missing files give an empty answer.

    transformers may store a role as `{"content": "<token>", ...}` (an AddedToken); that
    form is read as well, so folders saved by transformers load too.
    """
    roles: dict[str, str] = {}
    for name in (SPECIAL_TOKENS_MAP_JSON, TOKENIZER_CONFIG_JSON):  # the later one wins
        path = folder / name
        if not path.is_file():
            continue
        loaded: object = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(loaded, dict):
            raise UserError(f"{path} is not a JSON object", ErrorCode.DATA_INVALID)
        for role, value in loaded.items():
            token = value.get("content") if isinstance(value, dict) else value
            if isinstance(role, str) and role in SPECIAL_ROLES and isinstance(token, str):
                roles[role] = token
    return roles


def _write_json(path: Path, content: dict[str, str] | dict[str, str | bool]) -> None:
    path.write_text(json.dumps(content, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
