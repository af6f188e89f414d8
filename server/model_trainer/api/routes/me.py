"""`/whoami`: the principal a key acts as (the dashboard shows who it is, and a banner when
the server runs without keys)."""

from __future__ import annotations

from fastapi import APIRouter

from model_trainer.api.auth import Me, Principal

router = APIRouter(tags=["auth"])


@router.get("/whoami")
async def whoami(who: Me) -> Principal:
    """The key's name and role; `anonymous: true` when the server runs without keys
    (`security.allow_anonymous`): then anyone who reaches it acts as an admin."""
    return who
