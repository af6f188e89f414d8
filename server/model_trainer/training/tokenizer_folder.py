"""The tokenizer as training sees it: a folder holding a Hugging Face `tokenizer.json`.

Training needs only the vocabulary size, the end-of-text and padding ids, a batch encoder
(the Rust one, which encodes many texts in parallel) and a decoder. This mirrors the
tokenization package's `TokenizerHandle`, so either can be passed where one is expected.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from tokenizers import Tokenizer

from model_trainer.errors import ErrorCode, UserError

TOKENIZER_FILE = "tokenizer.json"
# Spellings of the special tokens used by the tokenizers we train or meet, in order of preference.
EOS_TOKENS = ("<|endoftext|>", "</s>", "<eos>", "[EOS]", "<|eos|>")
PAD_TOKENS = ("<pad>", "[PAD]", "<|pad|>")


@dataclass(frozen=True)
class TokenizerFolder:
    folder: Path
    tokenizer: Tokenizer
    vocab_size: int
    eos_id: int | None
    pad_id: int | None

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        # No special tokens: a corpus is one stream of text, not a list of sentences.
        encodings = self.tokenizer.encode_batch(texts, add_special_tokens=False)
        return [e.ids for e in encodings]

    def decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=False)


def load_tokenizer_folder(folder: Path) -> TokenizerFolder:
    path = folder / TOKENIZER_FILE
    if not path.is_file():
        raise UserError(
            f"tokenizer folder {folder} has no {TOKENIZER_FILE}", ErrorCode.DATA_INVALID
        )
    tokenizer = Tokenizer.from_file(str(path))
    eos_id = _first_id(tokenizer, EOS_TOKENS)
    return TokenizerFolder(
        folder=folder,
        tokenizer=tokenizer,
        vocab_size=tokenizer.get_vocab_size(with_added_tokens=True),
        eos_id=eos_id,
        pad_id=_first_id(tokenizer, PAD_TOKENS),
    )


def _first_id(tokenizer: Tokenizer, spellings: tuple[str, ...]) -> int | None:
    for token in spellings:
        token_id = tokenizer.token_to_id(token)
        if token_id is not None:
            return token_id
    return None
