"""Secrets SutazAI generates for its embedded services: private, stable, never replaced."""

from __future__ import annotations

import stat
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from pydantic import SecretStr

from sutazai.errors import ConfigError
from sutazai.secrets import generated_secret, secret_value


def test_a_generated_secret_is_private_and_stable(tmp_path: Path) -> None:
    with ThreadPoolExecutor(4) as pool:  # racing creators all get the one value
        values = set(pool.map(lambda _: generated_secret(tmp_path, "airflow-admin"), range(8)))
    [value] = values
    path = tmp_path / "secrets" / "airflow-admin"
    assert len(value) >= 32 and path.read_text() == value
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert list(path.parent.iterdir()) == [path]  # no temporary file left behind


def test_the_setting_wins_over_the_generated_secret(tmp_path: Path) -> None:
    assert secret_value(SecretStr("from-vault"), tmp_path, "x") == "from-vault"
    assert not (tmp_path / "secrets" / "x").exists()
    assert secret_value(None, tmp_path, "x") == generated_secret(tmp_path, "x")


def test_a_readable_or_empty_secret_file_is_refused(tmp_path: Path) -> None:
    generated_secret(tmp_path, "key")
    path = tmp_path / "secrets" / "key"
    path.chmod(0o644)
    with pytest.raises(ConfigError, match=r"readable by others.*chmod 600"):
        generated_secret(tmp_path, "key")
    path.chmod(0o600)
    path.write_text("")
    with pytest.raises(ConfigError, match="is empty: delete it"):
        generated_secret(tmp_path, "key")
    with pytest.raises(ConfigError, match="letters, digits"):
        generated_secret(tmp_path, "../escape")
