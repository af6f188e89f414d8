"""Names, tags and metadata: how people find their jobs again (`name`, `tags`, `metadata` on
any job request; lists filter by tag and name prefix, store/records.py `list_ids`).

A job's labels are part of its request (kept in its record's `meta`), and are indexed per
kind: one sorted set per tag (`{kinds}:by-tag:{tag}`, score = created) and one of names
(`{kinds}:by-name`, members `<casefolded name>\\0<id>`, all of score 0, read by prefix with
ZRANGEBYLEX). They never change what a job computes: a tokenizer's id hashes its config,
not its labels.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, JsonValue, StringConstraints, field_validator

TAG_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.:=+-]{0,39}$"
MAX_TAGS = 16
MAX_METADATA = 16

Tag = Annotated[str, StringConstraints(pattern=TAG_PATTERN)]
MetadataKey = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_.:-]{1,64}$")]
MetadataValue = Annotated[str, StringConstraints(max_length=256)]
# Printable text without the separator of the name index (\0) or other control characters.
Name = Annotated[
    str, StringConstraints(min_length=1, max_length=100, pattern=r"^[^\x00-\x1f\x7f]+$")
]

LABEL_FIELDS = ("name", "tags", "metadata")


class Labels(BaseModel):
    """What a person calls a job and how they group it; part of every job request."""

    model_config = ConfigDict(extra="forbid")

    name: Name | None = Field(
        default=None, description="a name for people (lists filter by prefix)"
    )
    tags: list[Tag] = Field(
        default_factory=list,
        max_length=MAX_TAGS,
        description=f"up to {MAX_TAGS} tags (letters, digits, _ . : = + -); lists filter by tag",
    )
    metadata: dict[MetadataKey, MetadataValue] = Field(
        default_factory=dict,
        max_length=MAX_METADATA,
        description=f"up to {MAX_METADATA} short string pairs, kept and shown as given",
    )

    @field_validator("tags")
    @classmethod
    def _unique_tags(cls, tags: list[str]) -> list[str]:
        return list(dict.fromkeys(tags))  # a tag given twice is one tag, in first order

    def labels(self) -> Labels:
        """These labels alone (of a request that has more fields)."""
        return Labels(name=self.name, tags=list(self.tags), metadata=dict(self.metadata))

    @classmethod
    def of(cls, request: dict[str, JsonValue] | None) -> Labels:
        """The labels a stored request carries (none when it has none, or unreadable ones)."""
        given = {k: request[k] for k in LABEL_FIELDS if request and k in request}
        try:
            return cls.model_validate(given)
        except ValueError:
            return cls()


def name_member(name: str, record_id: str) -> str:
    """The name index's member: the casefolded name, then the id (names need not be unique)."""
    return f"{name.casefold()}\x00{record_id}"


def name_prefix_range(prefix: str) -> tuple[str, str]:
    """ZRANGEBYLEX bounds of every member whose name starts with `prefix` (casefolded)."""
    folded = prefix.casefold()
    return f"[{folded}", f"[{folded}\U0010ffff"
