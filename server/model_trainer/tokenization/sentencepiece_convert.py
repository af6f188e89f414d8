"""A SentencePiece model as a Hugging Face `tokenizers` pipeline (`tokenizer.json`).

transformers' own converters need the `protobuf` package (not a dependency here) and a
slow tokenizer class; this builds the same pipeline from the processor's piece table and
the one field it cannot give, the normalizer's precompiled character map, read straight
from the serialized model. It matches how `sentencepiece_trainer` trains
(`add_dummy_prefix`, spaces escaped as "▁", pieces never spanning a "▁" in their middle):

- normalizer: SentencePiece's own precompiled map (NFKC / case folding, when configured),
  then "▁" prepended and every space replaced by "▁", as SentencePiece does;
- pre-tokenizer: split before each "▁", which cannot change the result because no piece
  has a "▁" after its first character, and lets the Rust encoder cache words;
- model: Unigram with the piece scores, or BPE with merges rebuilt from the piece order;
  byte fallback as trained;
- decoder: "▁" back to spaces, byte pieces back to bytes, the dummy prefix stripped.

The result encodes to the same ids as `SentencePieceProcessor` (checked by the tests) and
decodes to the same text.
"""

from __future__ import annotations

from tokenizers import (
    AddedToken,
    Regex,
    Tokenizer,
    decoders,
    models,
    normalizers,
    pre_tokenizers,
    processors,
)

from model_trainer.tokenization.sentencepiece_trainer import SentencePieceModel

SPACE = "▁"
# Field numbers in sentencepiece_model.proto.
_MODEL_NORMALIZER_SPEC = 3
_NORMALIZER_PRECOMPILED_CHARSMAP = 2


def to_tokenizers(model: SentencePieceModel, model_type: str) -> Tokenizer:
    sp = model.processor
    size = sp.get_piece_size()
    pieces = [sp.id_to_piece(i) for i in range(size)]
    scores = [sp.get_score(i) for i in range(size)]
    special = [i for i in range(size) if sp.is_control(i) or sp.is_unknown(i)]
    byte_fallback = any(sp.is_byte(i) for i in range(size))
    unk_id = sp.unk_id()

    tokenizer: Tokenizer
    if model_type == "unigram":
        vocab = list(zip(pieces, scores, strict=True))
        tokenizer = Tokenizer(models.Unigram(vocab, unk_id=unk_id, byte_fallback=byte_fallback))
    else:
        ids = {piece: i for i, piece in enumerate(pieces)}
        skip = set(special) | {i for i in range(size) if sp.is_byte(i)}
        tokenizer = Tokenizer(
            models.BPE(
                ids,
                _merges(pieces, ids, skip),
                unk_token=pieces[unk_id],
                fuse_unk=True,
                byte_fallback=byte_fallback,
            )
        )

    steps: list[normalizers.Normalizer] = []
    charsmap = precompiled_charsmap(model.proto)
    if charsmap:
        steps.append(normalizers.Precompiled(charsmap))
    steps += [normalizers.Prepend(SPACE), normalizers.Replace(" ", SPACE)]
    tokenizer.normalizer = normalizers.Sequence(steps)
    tokenizer.pre_tokenizer = pre_tokenizers.Split(Regex(SPACE), behavior="merged_with_next")
    tokenizer.decoder = decoders.Sequence(
        [
            decoders.Replace(SPACE, " "),
            decoders.ByteFallback(),
            decoders.Fuse(),
            decoders.Strip(" ", 1, 0),
        ]
    )
    # An explicit no-op template: transformers would otherwise install its own when the
    # tokenizer has no post-processor.
    tokenizer.post_processor = processors.TemplateProcessing(single="$A", pair="$A $B:1")
    tokenizer.add_special_tokens(
        [AddedToken(pieces[i], special=True, normalized=False) for i in special]
    )
    return tokenizer


def _merges(pieces: list[str], ids: dict[str, int], skip: set[int]) -> list[tuple[str, str]]:
    """BPE merges in SentencePiece's order: a piece's rank is its id (scores fall with it).

    Each piece made of two smaller pieces gives one merge per split point, ordered by the
    ids of the parts, as transformers' converter does.
    """
    merges: list[tuple[str, str]] = []
    for i, piece in enumerate(pieces):
        if i in skip or len(piece) < 2:
            continue
        splits = [
            (piece[:k], piece[k:])
            for k in range(1, len(piece))
            if piece[:k] in ids and piece[k:] in ids
        ]
        splits.sort(key=lambda pair: (ids[pair[0]], ids[pair[1]]))
        merges += splits
    return merges


def precompiled_charsmap(proto: bytes) -> bytes:
    """`normalizer_spec.precompiled_charsmap` of a serialized ModelProto (empty if absent)."""
    spec = _field(proto, _MODEL_NORMALIZER_SPEC)
    return _field(spec, _NORMALIZER_PRECOMPILED_CHARSMAP) if spec else b""


def _field(message: bytes, number: int) -> bytes:
    """The last length-delimited field `number` of a protobuf message (protobuf semantics)."""
    found = b""
    pos = 0
    while pos < len(message):
        key, pos = _varint(message, pos)
        wire_type = key & 7
        if wire_type == 0:
            _, pos = _varint(message, pos)
        elif wire_type == 1:
            pos += 8
        elif wire_type == 5:
            pos += 4
        elif wire_type == 2:
            length, pos = _varint(message, pos)
            if key >> 3 == number:
                found = message[pos : pos + length]
            pos += length
        else:
            raise ValueError(f"unsupported protobuf wire type {wire_type} in a SentencePiece model")
    return found


def _varint(data: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if byte < 0x80:
            return value, pos
