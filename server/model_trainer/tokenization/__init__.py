"""Tokenizer training: byte-level BPE and SentencePiece, stats on a holdout, loadable folders.

The worker job calls `train_tokenizer`; model training opens the result with `load_tokenizer`.
"""

from model_trainer.tokenization.config import SpecialTokens, TokenizerTrainConfig
from model_trainer.tokenization.handle import TokenizerHandle, load_tokenizer
from model_trainer.tokenization.stats import TokenizerStats
from model_trainer.tokenization.stopping import TrainingStopped
from model_trainer.tokenization.train import TokenizerTrainResult, train_tokenizer

__all__ = [
    "SpecialTokens",
    "TokenizerHandle",
    "TokenizerStats",
    "TokenizerTrainConfig",
    "TokenizerTrainResult",
    "TrainingStopped",
    "load_tokenizer",
    "train_tokenizer",
]
