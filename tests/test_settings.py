"""Settings: embedded defaults, SUTAZAI_* variables, an optional YAML file."""

from __future__ import annotations

from pathlib import Path

import pytest

from sutazai.config import load_settings
from sutazai.errors import ConfigError


def test_defaults_keep_state_under_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SUTAZAI_HOME")
    monkeypatch.chdir(tmp_path)
    settings = load_settings()
    assert settings.home == tmp_path / ".sutazai"
    assert settings.repository_root == tmp_path / ".sutazai" / "repository"
    assert settings.tracking_uri == f"sqlite:///{tmp_path / '.sutazai' / 'mlflow.db'}"


def test_environment_beats_file_and_mlflow_variable_is_honoured(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = tmp_path / "sutazai.yaml"
    config.write_text(f"repository_dir: {tmp_path / 'shared-volume'}\n"
                      "pypi_index_url: https://devpi.internal/root/pypi/+simple\n"
                      "http_timeout_s: 5\n")
    monkeypatch.setenv("SUTAZAI_CONFIG", str(config))
    monkeypatch.setenv("SUTAZAI_HTTP_TIMEOUT_S", "9")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://mlflow.internal:5000")
    settings = load_settings()
    assert settings.repository_root == tmp_path / "shared-volume"
    assert settings.pypi_index_url == "https://devpi.internal/root/pypi/+simple"
    assert settings.http_timeout_s == 9
    assert settings.tracking_uri == "http://mlflow.internal:5000"
    monkeypatch.setenv("SUTAZAI_MLFLOW_TRACKING_URI", "http://other:5000")
    assert load_settings().tracking_uri == "http://other:5000"


def test_invalid_settings_are_clear(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SUTAZAI_HTTP_TIMEOUT_S", "-1")
    with pytest.raises(ConfigError, match="http_timeout_s"):
        load_settings()
    monkeypatch.delenv("SUTAZAI_HTTP_TIMEOUT_S")
    monkeypatch.setenv("SUTAZAI_CONFIG", str(tmp_path / "nope.yaml"))
    with pytest.raises(ConfigError, match="not a file"):
        load_settings()
