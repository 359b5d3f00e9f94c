from __future__ import annotations

import pickle
from pathlib import Path

import pytest

from modelshield import ConfigError, Secret, load_config
from modelshield.errors import ServiceUnavailableError

EXAMPLE = Path(__file__).resolve().parents[2] / "shield.example.toml"


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "shield.toml"
    path.write_text(text, encoding="utf-8")
    return path


def test_example_file_loads() -> None:
    config = load_config(EXAMPLE)
    assert config.server.port == 8000
    assert (config.server.blas_threads, config.server.worker_timeout) == (1, 30.0)
    assert "digits" in config.models
    assert config.models["digits"].path.is_absolute()


def test_relative_model_path_is_resolved_against_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, '[models.digits]\npath = "models/digits.sealed"\n')
    config = load_config(path)
    assert config.models["digits"].path == tmp_path.resolve() / "models" / "digits.sealed"
    assert config.source == path.resolve()


@pytest.mark.parametrize(
    ("text", "where"),
    [
        ("[server]\nport = 70000\n", "server.port"),
        ("[server]\nworkers = 0\n", "server.workers"),
        ("[server]\nworker_timeout = 1\n", "server.worker_timeout"),
        ("[server]\nblas_threads = 0\n", "server.blas_threads"),
        ('[server]\nhots = "x"\n', "server.hots"),
        ("[models.digits]\nformat = 'onnx'\n", "models.digits.path"),
        ("[models.digits]\npath = 'a'\nformat = 'pickle'\n", "models.digits.format"),
        ("[logging]\nlevel = 'LOUD'\n", "logging.level"),
        ("[models.'bad name']\npath = 'a'\n", "models"),
    ],
)
def test_bad_field_names_file_and_field(tmp_path: Path, text: str, where: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    message = str(info.value)
    assert message.startswith(f"{path}: {where}")


def test_toml_syntax_error_names_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, "[server\n")
    with pytest.raises(ConfigError, match="invalid TOML"):
        load_config(path)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.toml")


def test_secret_never_shows_itself() -> None:
    secret = Secret("hunter2")
    assert "hunter2" not in repr(secret)
    assert "hunter2" not in str(secret)
    assert "hunter2" not in f"{secret}"
    assert "hunter2" not in f"{secret!r}"
    assert secret.reveal() == "hunter2"
    assert secret == Secret("hunter2")
    assert secret != Secret("hunter3")
    with pytest.raises(TypeError):
        pickle.dumps(secret)


def test_secret_from_env_and_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MS_TEST_PASS", "from-env")
    secret_file = tmp_path / "pass.txt"
    secret_file.write_text("from-file\n", encoding="utf-8")
    path = write(
        tmp_path,
        "[models.a]\npath = 'a'\npassphrase = { env = 'MS_TEST_PASS' }\n"
        "[models.b]\npath = 'b'\npassphrase = { file = 'pass.txt' }\n",
    )
    config = load_config(path)
    assert config.models["a"].passphrase is not None
    assert config.models["a"].passphrase.reveal() == "from-env"
    assert config.models["b"].passphrase is not None
    assert config.models["b"].passphrase.reveal() == "from-file"
    assert "from-env" not in repr(config)
    assert "from-env" not in config.model_dump_json()


def test_secret_from_unset_env_names_the_field(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("MS_TEST_UNSET", raising=False)
    path = write(tmp_path, "[models.a]\npath = 'a'\npassphrase = { env = 'MS_TEST_UNSET' }\n")
    with pytest.raises(ConfigError, match=r"models\.a\.passphrase: .*MS_TEST_UNSET is not set"):
        load_config(path)


def test_sqlite_urls_are_resolved_against_the_file(tmp_path: Path) -> None:
    from modelshield.config import sqlite_path

    path = write(tmp_path, '[audit]\nurl = "sqlite:///state/audit.db"\n')
    config = load_config(path)
    assert sqlite_path(config.audit.url) == tmp_path.resolve() / "state" / "audit.db"
    assert sqlite_path(config.registry.url) == tmp_path.resolve() / "state" / "registry.db"


@pytest.mark.parametrize(
    ("text", "where"),
    [
        ('[audit]\nurl = "mysql://x"\n', "audit.url"),
        ('[registry]\nurl = "redis://x"\n', "registry.url"),
        ('[state]\nurl = "postgresql://x"\n', "state.url"),
        ('[detection]\nstate_url = "sqlite:///x.db"\n', "detection.state_url"),
    ],
)
def test_store_url_schemes(tmp_path: Path, text: str, where: str) -> None:
    with pytest.raises(ConfigError, match=rf"{where}: .*scheme"):
        load_config(write(tmp_path, text))


def test_detector_state_follows_the_state_store_unless_named(tmp_path: Path) -> None:
    from modelshield.gateway._detection import detector_state_store
    from modelshield.stores import RedisDetectorStateStore

    assert detector_state_store(load_config(EXAMPLE)) is None  # memory://: each process its own
    redis_state = load_config(write(tmp_path, '[state]\nurl = "redis://127.0.0.1:1/0"\n'))
    store = detector_state_store(redis_state)  # opening connects lazily: no server needed
    assert isinstance(store, RedisDetectorStateStore)
    store.close()
    own = load_config(
        write(tmp_path, '[state]\nurl = "redis://x"\n[detection]\nstate_url = "memory://"\n')
    )
    assert detector_state_store(own) is None
    pg = load_config(
        write(tmp_path, '[detection]\nstate_url = "postgresql://postgres@127.0.0.1:1/x"\n')
    )
    with pytest.raises(ServiceUnavailableError):  # PostgreSQL connects at once, fails closed
        detector_state_store(pg)


def test_watermark_rates(tmp_path: Path) -> None:
    config = load_config(EXAMPLE)
    assert config.watermark.share == 0.0005
    assert config.watermark.uncertain_share == 0.14
    assert config.watermark.uncertain_below == 0.95
    path = write(tmp_path, "[watermark]\nshare = 0.01\nuncertain_share = 0.005\n")
    with pytest.raises(ConfigError, match="uncertain_share must be at least share"):
        load_config(path)
