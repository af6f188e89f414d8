"""Settings sources and their priority: environment, then .env, then the TOML file."""

from __future__ import annotations

from pathlib import Path

import pytest

from model_trainer.settings import CONFIG_FILE_ENV, load_settings


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    for name in ("REDIS_URL", "RQ__QUEUE_NAME", "APP__THREADS", "SECURITY__API_KEY", "HF_HOME"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)  # .env is read from the working directory
    return tmp_path


def test_environment_beats_dotenv_beats_toml(
    clean_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    toml = clean_env / "trainer.toml"
    toml.write_text(
        'redis_url = "redis://toml:1/0"\n'
        '[rq]\nqueue_name = "from-toml"\njob_timeout_sec = 99\n'
        "[app]\nthreads = 3\n"
    )
    (clean_env / ".env").write_text("RQ__QUEUE_NAME=from-dotenv\nAPP__THREADS=5\n")
    monkeypatch.setenv(CONFIG_FILE_ENV, str(toml))
    monkeypatch.setenv("APP__THREADS", "7")
    settings = load_settings()
    assert settings.app.threads == 7  # environment
    assert settings.rq.queue_name == "from-dotenv"  # .env over TOML
    assert settings.rq.job_timeout_sec == 99  # only in TOML
    assert settings.redis_url == "redis://toml:1/0"


def test_secrets_are_hidden_and_unknown_names_rejected(
    clean_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SECURITY__API_KEY", "hunter2")
    settings = load_settings()
    assert settings.security.api_key is not None
    assert settings.security.api_key.get_secret_value() == "hunter2"
    assert "hunter2" not in repr(settings)
    (clean_env / ".env").write_text("RQ__NO_SUCH_SETTING=1\n")
    with pytest.raises(ValueError, match="no_such_setting"):
        load_settings()


def test_env_example_documents_every_setting() -> None:
    example = (Path(__file__).resolve().parents[2] / ".env.example").read_text()
    from model_trainer.settings import Settings

    names = ["REDIS_URL", "HF_HOME"]
    for section, field in Settings.model_fields.items():
        annotation = field.annotation
        if isinstance(annotation, type) and hasattr(annotation, "model_fields"):
            names.extend(f"{section.upper()}__{sub.upper()}" for sub in annotation.model_fields)
    missing = [n for n in names if f"{n}=" not in example]
    assert missing == []
