"""A trained tokenizer folder as model training (and the tests) use it, for either method.

The one loader of tokenizer folders. It loads `tokenizer.json` with `tokenizers` (fast, and
the same pipeline for BPE and SentencePiece) and takes the special tokens' roles from the
folder's own `tokenizer_config.json` / `special_tokens_map.json` (as `train_tokenizer`
writes them, see transformers_files.py) rather than guessing them from token spellings: a
folder that does not say which token ends a text or pads is refused with a clear error.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from tokenizers import Tokenizer

from model_trainer.errors import ErrorCode, UserError
from model_trainer.tokenization.transformers_files import (
    SPECIAL_TOKENS_MAP_JSON,
    TOKENIZER_CONFIG_JSON,
    TOKENIZER_JSON,
    read_special_tokens,
)


@dataclass(frozen=True)
class TokenizerHandle:
    folder: Path
    tokenizer: Tokenizer
    vocab_size: int
    eos_id: int
    pad_id: int
    bos_id: int | None
    unk_id: int | None  # None for byte-level BPE

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        """Ids per text, no special tokens added (a corpus is one stream of text, not a list
        of sentences); the Rust encoder runs the batch in parallel."""
        return [e.ids for e in self.tokenizer.encode_batch_fast(texts, add_special_tokens=False)]

    def decode(self, ids: list[int], *, skip_special_tokens: bool = False) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=skip_special_tokens)

    def token_to_id(self, token: str) -> int | None:
        return self.tokenizer.token_to_id(token)


def load_tokenizer(folder: Path, *, pad_falls_back_to_eos: bool = False) -> TokenizerHandle:
    """Load a tokenizer folder; `UserError` if it is not one or does not name eos and pad.

    `pad_falls_back_to_eos`: a base model's tokenizer (GPT-2's, Llama's) often names no pad
    token; the end-of-text token pads then, as transformers' own examples do."""
    path = folder / TOKENIZER_JSON
    if not path.is_file():
        raise UserError(
            f"{folder} is not a tokenizer folder: it has no {TOKENIZER_JSON}",
            ErrorCode.DATA_INVALID,
        )
    roles = read_special_tokens(folder)
    if pad_falls_back_to_eos and "pad_token" not in roles and "eos_token" in roles:
        roles["pad_token"] = roles["eos_token"]
    missing = [role for role in ("eos_token", "pad_token") if role not in roles]
    if missing:
        raise UserError(
            f"tokenizer folder {folder} does not name its {' and '.join(missing)}: "
            f"{TOKENIZER_CONFIG_JSON} or {SPECIAL_TOKENS_MAP_JSON} must give them",
            ErrorCode.DATA_INVALID,
        )
    tokenizer = Tokenizer.from_file(str(path))

    def role_id(role: str) -> int:
        token = roles[role]
        token_id = tokenizer.token_to_id(token)
        if token_id is None:
            raise UserError(
                f"tokenizer folder {folder}: its {role} {token!r} is not in the vocabulary",
                ErrorCode.DATA_INVALID,
            )
        return token_id

    def optional_id(role: str) -> int | None:
        return role_id(role) if role in roles else None

    return TokenizerHandle(
        folder=folder,
        tokenizer=tokenizer,
        vocab_size=tokenizer.get_vocab_size(with_added_tokens=True),
        eos_id=role_id("eos_token"),
        pad_id=role_id("pad_token"),
        bos_id=optional_id("bos_token"),
        unk_id=optional_id("unk_token"),
    )
