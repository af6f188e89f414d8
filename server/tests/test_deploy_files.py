"""docker-compose.yml, railway*.toml and the Dockerfile state the facts deployments rely on."""

from __future__ import annotations

import importlib
import os
import re
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import yaml
from pydantic import BaseModel

from model_trainer.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
DATABANK_SETTINGS = {
    "DATA_ROOT",
    "MIN_FREE_GB",
    "MAX_FILE_BYTES",
    "API_UPLOAD_KEYS",
    "API_READ_KEYS",
    "API_DELETE_KEYS",
    "DELETE_STRICT_404",
}


def _setting_names() -> set[str]:
    names = {"REDIS_URL", "HF_HOME"}
    for section, field in Settings.model_fields.items():
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            names.update(f"{section.upper()}__{sub.upper()}" for sub in annotation.model_fields)
    return names


def _compose() -> dict[str, dict[str, object]]:
    data = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    assert isinstance(data, dict)
    services = data["services"]
    assert isinstance(services, dict)
    return services


def _as_dict(value: object) -> dict[str, object]:
    assert isinstance(value, dict), value
    return {str(k): v for k, v in value.items()}


def test_compose_has_the_four_services_with_their_commands() -> None:
    services = _compose()
    assert {"redis", "databank", "api", "worker"} <= set(services)
    assert services["redis"]["image"] == "redis:7-alpine"
    assert "noeviction" in " ".join(str(c) for c in _list(services["redis"]["command"]))
    assert _list(services["worker"]["command"]) == ["modeltrainer-rq-worker"]
    assert _list(services["databank"]["command"])[0] == "modeltrainer-databank"
    assert "command" not in services["api"], "the API runs the image's default command"
    assert any("8000" in str(p) for p in _list(services["api"]["ports"]))


def _list(value: object) -> list[object]:
    assert isinstance(value, list), value
    return value


def test_compose_health_checks_and_dependencies() -> None:
    services = _compose()
    for name in ("redis", "databank", "api"):
        check = _as_dict(services[name]["healthcheck"])
        assert check["test"], name
    assert "/readyz" in str(_as_dict(services["api"]["healthcheck"])["test"])
    for name in ("api", "worker"):
        deps = _as_dict(services[name]["depends_on"])
        assert _as_dict(deps["redis"])["condition"] == "service_healthy"
        assert _as_dict(deps["databank"])["condition"] == "service_healthy"


def test_api_and_workers_do_not_share_a_disk() -> None:
    services = _compose()
    mounts: dict[str, set[str]] = {}
    for name in ("api", "worker", "worker-2", "worker-gpu", "databank"):
        volumes = [str(v).split(":")[0] for v in _list(services[name]["volumes"])]
        mounts[name] = set(volumes)
    assert not (mounts["api"] & mounts["worker"])
    assert not (mounts["worker"] & mounts["worker-2"])
    assert not (mounts["worker"] & mounts["worker-gpu"])
    assert _list(services["worker-2"]["profiles"]) == ["two-workers"]
    assert _list(services["worker-gpu"]["profiles"]) == ["gpu"]


def test_compose_environment_names_exist_in_the_settings() -> None:
    services = _compose()
    known = _setting_names()
    for name in ("api", "worker", "worker-2", "worker-gpu"):
        env = _as_dict(services[name]["environment"])
        unknown = set(env) - known
        assert not unknown, (name, unknown)
    unknown_bank = set(_as_dict(services["databank"]["environment"])) - DATABANK_SETTINGS
    assert not unknown_bank


def test_compose_publishes_on_localhost_only_and_holds_no_key() -> None:
    """Ports are published on 127.0.0.1 only, and every key comes from the environment (or
    the user's own .env): `${NAME:?...}` or empty by default, never a value of ours."""
    services = _compose()
    published = [
        (name, str(port))
        for name, service in services.items()
        for port in _list(service.get("ports", []))
    ]
    assert published, "compose publishes the API and Data Bank"
    for name, port in published:
        assert port.startswith("127.0.0.1:"), (name, port)
    from_environment = re.compile(r"^\$\{[A-Z_]+(:\?[^}]*|:-)?\}$")
    for name, service in services.items():
        for variable, value in _as_dict(service.get("environment", {})).items():
            if "KEY" in variable:
                assert from_environment.match(str(value)), (name, variable, value)
    example = (ROOT / ".env.example").read_text().splitlines()
    for line in example:
        if "KEY" in line.split("=", 1)[0] and not line.startswith("#"):
            assert line.endswith("="), line  # a name to fill in, no value
    dockerfile = (ROOT / "server" / "Dockerfile").read_text()
    assert "KEY" not in dockerfile


def test_railway_files() -> None:
    api = tomllib.loads((ROOT / "railway.toml").read_text())
    worker = tomllib.loads((ROOT / "railway.worker.toml").read_text())
    for config in (api, worker):
        assert config["build"]["builder"] == "DOCKERFILE"
        assert config["build"]["dockerfilePath"] == "server/Dockerfile"
        assert (ROOT / config["build"]["dockerfilePath"]).exists()
    assert api["deploy"]["healthcheckPath"] == "/readyz"
    assert "startCommand" not in api["deploy"], "the API uses the image's CMD (Hypercorn on $PORT)"
    assert worker["deploy"]["startCommand"] == "modeltrainer-rq-worker"
    assert "healthcheckPath" not in worker["deploy"]


def test_dockerfile_runs_hypercorn_on_port_as_non_root() -> None:
    text = (ROOT / "server" / "Dockerfile").read_text()
    assert "model_trainer.api.main:create_app()" in text
    assert "${PORT:-8000}" in text
    assert "\nUSER app" in text
    assert "TORCH_INDEX_URL" in text and "PIP_FIND_LINKS" in text
    ignore = (ROOT / ".dockerignore").read_text()
    assert ".env" in ignore


def test_console_scripts_name_importable_entry_points() -> None:
    """The deploy files start `modeltrainer-rq-worker` and `modeltrainer-databank`: each
    must name a function that exists in this tree (the tests themselves run them by module)."""
    scripts = tomllib.loads((ROOT / "server" / "pyproject.toml").read_text())["project"]["scripts"]
    assert set(scripts) >= {"modeltrainer-rq-worker", "modeltrainer-databank"}
    for target in scripts.values():
        module_name, _, function = str(target).partition(":")
        assert callable(getattr(importlib.import_module(module_name), function)), target


def test_dockerfile_copies_every_package_the_project_installs() -> None:
    pyproject = tomllib.loads((ROOT / "server" / "pyproject.toml").read_text())
    patterns = pyproject["tool"]["setuptools"]["packages"]["find"]["include"]
    text = (ROOT / "server" / "Dockerfile").read_text()
    # The build context is everything .dockerignore does not exclude: it ignores all, then
    # lets in what the image needs; a COPY of a package left out fails the build.
    allowed = (ROOT / ".dockerignore").read_text().splitlines()
    for pattern in patterns:
        package = str(pattern).removesuffix("*")
        assert f"COPY server/{package} /app/server/{package}" in text, package
        assert (ROOT / "server" / package / "__init__.py").is_file(), package
        assert f"!server/{package}/**" in allowed, package


CPU_INDEX = "https://download.pytorch.org/whl/cpu"


def _torch_version() -> str:
    pins = (ROOT / "server" / "constraints.txt").read_text().splitlines()
    return next(line.removeprefix("torch==") for line in pins if line.startswith("torch=="))


def _fake_torch_wheel(folder: Path, version: str) -> None:
    """A wheel that pip's resolver takes for torch `version` (metadata only)."""
    info = f"torch-{version}.dist-info"
    with zipfile.ZipFile(folder / f"torch-{version}-py3-none-any.whl", "w") as wheel:
        wheel.writestr(
            f"{info}/METADATA", f"Metadata-Version: 2.1\nName: torch\nVersion: {version}\n"
        )
        wheel.writestr(
            f"{info}/WHEEL",
            "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
        )
        wheel.writestr(f"{info}/RECORD", "")


def test_make_setup_picks_the_cpu_torch_and_asks_no_index_it_does_not_need(
    tmp_path: Path,
) -> None:
    """`make setup` installs CPU torch by default: from the machine when pip finds the pinned
    torch offline (a find-links wheel, as here and in CI, where download.pytorch.org is out
    of reach), else from PyTorch's CPU index (PyPI's Linux torch is the CUDA build).
    `make torch-index` prints the extra index `setup` gives pip (nothing: none)."""
    venv = tmp_path / "venv"  # a Python without torch, as before a first `make setup`
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    # Only this test's find-links: no pip.conf, no network (the check is --no-index).
    # Nor the variables of a `make check TORCH=...` this test may run under (MAKEFLAGS).
    env = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL")}
    env |= {"PIP_CONFIG_FILE": os.devnull, "PIP_FIND_LINKS": str(wheels)}

    def torch_index(*variables: str) -> subprocess.CompletedProcess[str]:
        command = ["make", "-s", "-C", str(ROOT), "torch-index", f"PY={venv}/bin/python"]
        return subprocess.run(
            [*command, *variables], env=env, capture_output=True, text=True, timeout=120
        )

    assert torch_index().stdout.strip() == CPU_INDEX  # nothing local: the CPU index
    assert torch_index("TORCH=cuda").stdout.strip() == ""  # PyPI's own (CUDA) build
    chosen = "https://example.invalid/whl/cu128"
    assert torch_index(f"TORCH_INDEX={chosen}").stdout.strip() == chosen
    wrong = torch_index("TORCH=gpu")
    assert wrong.returncode != 0 and "TORCH must be cpu or cuda" in wrong.stderr

    _fake_torch_wheel(wheels, f"{_torch_version()}+cpu")
    found = torch_index()
    assert found.returncode == 0, found.stderr
    assert found.stdout.strip() == ""  # the local wheel: no index asked
