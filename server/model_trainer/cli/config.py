"""Where the CLI finds the API and Data Bank: flags, then the environment, then `.env`, then
`.stack/client.env` (what `make start` writes: the local stack's URLs and keys), all relative
to the current directory.

Only four names are read. `.env` in the current directory usually holds the server's settings
as well (`APP__...`, `REDIS_URL`): those are ignored here, not errors.
"""

from __future__ import annotations

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_API_URL = "http://127.0.0.1:8000"
DEFAULT_DATA_BANK_URL = "http://127.0.0.1:8001"


class CliSettings(BaseSettings):
    model_config = SettingsConfigDict(
        # Later files win: a user's .env over what `make start` wrote.
        env_file=(".stack/client.env", ".env"),
        env_file_encoding="utf-8",
        extra="ignore",
        case_sensitive=False,
        populate_by_name=True,
        protected_namespaces=(),
    )

    api_url: str = Field(default=DEFAULT_API_URL, validation_alias="MODEL_TRAINER_URL")
    api_key: SecretStr | None = Field(default=None, validation_alias="MODEL_TRAINER_API_KEY")
    data_bank_url: str = Field(default=DEFAULT_DATA_BANK_URL, validation_alias="DATA_BANK_URL")
    data_bank_api_key: SecretStr | None = Field(default=None, validation_alias="DATA_BANK_API_KEY")


def load_cli_settings(
    *,
    api_url: str | None = None,
    api_key: str | None = None,
    data_bank_url: str | None = None,
    data_bank_api_key: str | None = None,
) -> CliSettings:
    """Flags given (not None) win over the environment, which wins over `.env`."""
    base = CliSettings()
    updates: dict[str, str | SecretStr] = {}
    if api_url is not None:
        updates["api_url"] = api_url
    if api_key is not None:
        updates["api_key"] = SecretStr(api_key)
    if data_bank_url is not None:
        updates["data_bank_url"] = data_bank_url
    if data_bank_api_key is not None:
        updates["data_bank_api_key"] = SecretStr(data_bank_api_key)
    return base.model_copy(update=updates)
