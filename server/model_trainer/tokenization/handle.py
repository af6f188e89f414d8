"""A trained tokenizer folder as model training uses it, for either method.

Loads `tokenizer.json` with `tokenizers` (fast, and the same pipeline for BPE and
SentencePiece) and takes the special tokens' roles from `special_tokens_map.json`.
Same shape as `training.tokenizer_folder.TokenizerFolder`, so either can be passed.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from tokenizers import Tokenizer

from model_trainer.errors import ErrorCode, UserError
from model_trainer.tokenization.transformers_files import SPECIAL_TOKENS_MAP_JSON, TOKENIZER_JSON


@dataclass(frozen=True)
class TokenizerHandle:
    folder: Path
    tokenizer: Tokenizer
    vocab_size: int
    eos_id: int
    pad_id: int
    unk_id: int | None  # None for byte-level BPE

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        """Ids per text, no special tokens added; the Rust encoder runs the batch in parallel."""
        return [e.ids for e in self.tokenizer.encode_batch_fast(texts, add_special_tokens=False)]

    def decode(self, ids: list[int], *, skip_special_tokens: bool = False) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=skip_special_tokens)

    def token_to_id(self, token: str) -> int | None:
        return self.tokenizer.token_to_id(token)


def load_tokenizer(folder: Path) -> TokenizerHandle:
    """Load a folder written by `train_tokenizer`; `UserError` if it is not one."""
    path = folder / TOKENIZER_JSON
    roles_path = folder / SPECIAL_TOKENS_MAP_JSON
    if not path.is_file() or not roles_path.is_file():
        raise UserError(
            f"{folder} is not a tokenizer folder: it needs {TOKENIZER_JSON} and "
            f"{SPECIAL_TOKENS_MAP_JSON}",
            ErrorCode.DATA_INVALID,
        )
    tokenizer = Tokenizer.from_file(str(path))
    loaded = json.loads(roles_path.read_text(encoding="utf-8"))
    if not isinstance(loaded, dict):
        raise UserError(f"{roles_path} is not a JSON object", ErrorCode.DATA_INVALID)
    roles = {k: v for k, v in loaded.items() if isinstance(k, str) and isinstance(v, str)}

    def role_id(role: str) -> int | None:
        token = roles.get(role)
        return None if token is None else tokenizer.token_to_id(token)

    eos_id, pad_id = role_id("eos_token"), role_id("pad_token")
    if eos_id is None or pad_id is None:
        raise UserError(
            f"{roles_path} must name eos_token and pad_token tokens of the vocabulary",
            ErrorCode.DATA_INVALID,
        )
    return TokenizerHandle(
        folder=folder,
        tokenizer=tokenizer,
        vocab_size=tokenizer.get_vocab_size(with_added_tokens=True),
        eos_id=eos_id,
        pad_id=pad_id,
        unk_id=role_id("unk_token"),
    )
