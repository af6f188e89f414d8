"""Instruction data: conversations rendered with a base model's chat template, the loss on
the assistant's tokens only.

A chat corpus is JSON lines, each with a `messages` list of `{role, content}` (OpenAI's and
every fine-tuning tool's shape). Each conversation is rendered by the base model's own chat
template (its tokenizer_config.json's `chat_template`, or `chat_template.jinja`), through
transformers, exactly as generation will prompt the model. The assistant's part of each turn
is what the template adds after the prompt of that turn (`add_generation_prompt`), found by
rendering the conversation up to each assistant message: templates mark turns differently,
and this needs no markers. Those spans are trained on (`loss_on: assistant`, the default),
the rest (system and user turns, the template's own framing) only read; `loss_on: all`
trains on every token. Conversations follow one another in the token stream, as text does.

The mask travels beside the tokens in the token cache (`mask.bin`, one byte a token: 1 where
the loss applies); a training window's targets where it is 0 become -100, which
cross-entropy ignores.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from transformers import AutoTokenizer

from model_trainer.errors import ErrorCode, UserError

MESSAGES_FIELD = "messages"


class Message(BaseModel):
    model_config = ConfigDict(extra="ignore")  # tool calls, names ... are the template's

    role: str = Field(min_length=1)
    content: str


class Conversation(BaseModel):
    model_config = ConfigDict(extra="ignore")  # other fields of the line are not ours

    messages: list[Message] = Field(min_length=1)


class ChatTemplate:
    """A base model folder's chat template, rendered by transformers."""

    def __init__(self, folder: Path) -> None:
        self._tokenizer = AutoTokenizer.from_pretrained(folder)
        if not getattr(self._tokenizer, "chat_template", None):
            raise UserError(
                "the base model has no chat template (tokenizer_config.json's chat_template or "
                "chat_template.jinja): a chat corpus cannot be formatted for it; train on "
                "plain text, or use the instruction-tuned variant of the model",
                ErrorCode.DATA_INVALID,
            )

    def render(self, messages: list[Message], *, prompt: bool = False) -> str:
        rendered = self._tokenizer.apply_chat_template(
            [m.model_dump() for m in messages], tokenize=False, add_generation_prompt=prompt
        )
        if not isinstance(rendered, str):
            raise TypeError("apply_chat_template(tokenize=False) returned no text")
        return rendered

    def segments(self, messages: list[Message], assistant_only: bool) -> list[tuple[str, bool]]:
        """The conversation's text in order, each piece with whether the loss applies."""
        whole = self.render(messages)
        if not assistant_only:
            return [(whole, True)]
        pieces: list[tuple[str, bool]] = []
        done = 0  # characters of `whole` placed so far
        for i, message in enumerate(messages):
            if message.role != "assistant":
                continue
            before = self.render(messages[:i], prompt=True) if i else ""
            through = self.render(messages[: i + 1])
            if not (whole.startswith(through) and through.startswith(before)):
                raise UserError(
                    "the base model's chat template renders a conversation differently when "
                    "it is cut at an assistant message, so the assistant's tokens cannot be "
                    "found: train with loss_on all",
                    ErrorCode.DATA_INVALID,
                )
            start = max(done, len(before))
            if start > done:
                pieces.append((whole[done:start], False))
            pieces.append((whole[start : len(through)], True))
            done = len(through)
        if done < len(whole):
            pieces.append((whole[done:], False))
        return [(text, trained) for text, trained in pieces if text]


def read_conversations(path: Path) -> Iterator[Conversation]:
    """Each line's conversation; `UserError` naming the first line that is not one."""
    try:
        with path.open("r", encoding="utf-8") as lines:
            for number, line in enumerate(lines, start=1):
                if not line.strip():
                    continue
                try:
                    yield Conversation.model_validate(json.loads(line))
                except (json.JSONDecodeError, ValidationError) as exc:
                    raise UserError(
                        f"line {number} of the chat corpus is not a conversation (a JSON "
                        f"object with a `{MESSAGES_FIELD}` list of {{role, content}}): "
                        f"{str(exc).splitlines()[0]}",
                        ErrorCode.CORPUS_UNREADABLE,
                    ) from exc
    except UnicodeDecodeError as exc:
        raise UserError(f"the chat corpus is not UTF-8 text ({exc.reason})") from exc
