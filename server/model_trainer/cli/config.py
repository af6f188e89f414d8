"""Where the CLI finds the API and Data Bank: flags, then the environment, then the file given
with `--env-file`, then the project's stack folder's `client.env` (what `make start` writes:
the local stack's URLs and keys).

Never a `.env` of the current folder: a folder the CLI merely runs in (a cloned repository,
a download) could point `MODEL_TRAINER_URL` at a listener and receive the key. The stack
folder is the project's own (`.stack/` at the root of the checkout the CLI is installed
from, or `STACK_DIR`, as scripts/stack.py reads it), not the current folder's.

Only four names are read; others in those files (a server's `APP__...`) are ignored.
"""

from __future__ import annotations

import os
from pathlib import Path

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_API_URL = "http://127.0.0.1:8000"
DEFAULT_DATA_BANK_URL = "http://127.0.0.1:8001"
# server/model_trainer/cli/config.py -> the checkout's root.
PROJECT_ROOT = Path(__file__).resolve().parents[3]


class CliSettings(BaseSettings):
    model_config = SettingsConfigDict(
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


def stack_env_file() -> Path:
    """The `client.env` that `make start` writes."""
    return Path(os.environ.get("STACK_DIR") or PROJECT_ROOT / ".stack") / "client.env"


def load_cli_settings(
    *,
    api_url: str | None = None,
    api_key: str | None = None,
    data_bank_url: str | None = None,
    data_bank_api_key: str | None = None,
    env_file: Path | None = None,
) -> CliSettings:
    """Flags given (not None) win over the environment, which wins over `env_file`, which
    wins over the stack's `client.env`. `env_file` must exist (a typo must not fall back
    silently to other settings): FileNotFoundError."""
    files = [stack_env_file()]
    if env_file is not None:
        if not env_file.is_file():
            raise FileNotFoundError(f"--env-file {env_file}: no such file")
        files.append(env_file)  # later files win
    base = CliSettings(_env_file=tuple(files))
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
