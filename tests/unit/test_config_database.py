"""``database`` in coordinator.toml selects the engine (ADR 0013); no password in a URL."""

from __future__ import annotations

from pathlib import Path

import pytest

from bridge.config import load_coordinator
from bridge.config_errors import ConfigError
from bridge.coordinator.__main__ import _database_password
from bridge.coordinator.db import (
    DatabaseSettingRefused,
    open_database,
    postgres_params,
    redact,
)
from bridge.domain.errors import InvalidInput
from bridge.keys.errors import KeyFileExposed
from tests.unit.test_config import network_data, write

pytestmark = [pytest.mark.unit, pytest.mark.postgres]


def coordinator(tmp_path: Path, **extra: str) -> Path:
    write(tmp_path / "network.toml", network_data())
    return write(
        tmp_path / "coordinator.toml",
        {
            "network": "network.toml",
            "listen": "127.0.0.1:7000",
            "verifiers": ["127.0.0.1:7101", "127.0.0.1:7102", "127.0.0.1:7103"],
            "relayers": {"brokerage-a": "127.0.0.1:7201", "brokerage-b": "127.0.0.1:7202"},
            **extra,
        },
    )


def test_a_postgresql_url_selects_postgres(tmp_path: Path) -> None:
    cfg = load_coordinator(
        coordinator(
            tmp_path,
            database="postgresql://kstb@db.internal:5432/kstb?sslmode=verify-full"
            "&sslrootcert=/etc/kstb/db-ca.pem",
            database_password_file="secrets/db-password",
        )
    )
    assert cfg.database == (
        "postgresql://kstb@db.internal:5432/kstb?sslmode=verify-full"
        "&sslrootcert=/etc/kstb/db-ca.pem"
    )
    assert cfg.database_password_file == tmp_path / "secrets" / "db-password"


def test_a_path_stays_sqlite(tmp_path: Path) -> None:
    cfg = load_coordinator(coordinator(tmp_path, database="state/c.sqlite"))
    assert cfg.database == tmp_path / "state" / "c.sqlite"
    assert cfg.database_password_file is None


def test_a_password_in_the_url_is_refused(tmp_path: Path) -> None:
    with pytest.raises(InvalidInput, match="must not contain a password") as exc:
        load_coordinator(coordinator(tmp_path, database="postgresql://kstb:hunter2@db/kstb"))
    assert "hunter2" not in str(exc.value)


# ---- review 2 finding 5: no secret in the URL, in any form; the password file is 0600 --------


@pytest.mark.security
@pytest.mark.parametrize(
    "url",
    [
        "postgresql://kstb@db.internal/kstb?sslmode=verify-full&sslrootcert=/ca.pem&password=hunter2",
        "postgresql://kstb@db.internal/kstb?sslmode=verify-full&sslrootcert=/ca.pem&sslpassword=hunter2",
        "postgresql://kstb:hunter2@db.internal/kstb?sslmode=verify-full&password=hunter2",
        "postgres://kstb@127.0.0.1/kstb?PASSWORD=hunter2",
    ],
)
def test_a_secret_in_any_form_is_refused(tmp_path: Path, url: str) -> None:
    with pytest.raises(ConfigError) as exc:
        load_coordinator(coordinator(tmp_path, database=url))
    assert isinstance(exc.value.__cause__, DatabaseSettingRefused)
    assert "hunter2" not in str(exc.value)
    with pytest.raises(DatabaseSettingRefused) as exc2:
        open_database(url)
    assert "hunter2" not in str(exc2.value)


@pytest.mark.security
def test_redact_hides_every_secret() -> None:
    url = "postgresql://kstb:hunter2@db:5432/k?password=hunter2&sslpassword=hunter2&sslmode=require"
    out = redact(url)
    assert "hunter2" not in out
    assert "db:5432" in out and "sslmode=require" in out


@pytest.mark.security
def test_an_exposed_password_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "db-password"
    path.write_text("hunter2\n")
    path.chmod(0o644)
    with pytest.raises(KeyFileExposed, match="chmod 600"):
        _database_password(path)
    path.chmod(0o600)
    assert _database_password(path) == "hunter2"


# ---- review 2 finding 2: a remote server only over verified TLS ------------------------------


@pytest.mark.security
@pytest.mark.parametrize(
    "url",
    [
        "postgresql://kstb@db.internal/kstb",
        "postgresql://kstb@db.internal/kstb?sslmode=require&sslrootcert=/ca.pem",
        "postgresql://kstb@db.internal/kstb?sslmode=verify-ca&sslrootcert=/ca.pem",
        "postgresql://kstb@10.0.0.5:5432/kstb?sslmode=prefer",
        "postgresql://kstb@127.0.0.1,db.internal/kstb",
        "postgresql://kstb@localhost/kstb?hostaddr=10.0.0.5",
    ],
)
def test_a_remote_server_without_verify_full_is_refused(tmp_path: Path, url: str) -> None:
    with pytest.raises(ConfigError, match="sslmode=verify-full") as exc:
        load_coordinator(coordinator(tmp_path, database=url))
    assert isinstance(exc.value.__cause__, DatabaseSettingRefused)


@pytest.mark.security
def test_verify_full_without_a_root_certificate_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.postgresql/root.crt
    monkeypatch.delenv("PGSSLROOTCERT", raising=False)
    with pytest.raises(DatabaseSettingRefused, match="sslrootcert"):
        postgres_params("postgresql://kstb@db.internal/kstb?sslmode=verify-full")
    (tmp_path / ".postgresql").mkdir()
    (tmp_path / ".postgresql" / "root.crt").write_text("x")
    assert postgres_params("postgresql://kstb@db.internal/kstb?sslmode=verify-full")


@pytest.mark.parametrize(
    "url",
    [
        "postgresql://kstb@127.0.0.1:5432/kstb",
        "postgresql://kstb@localhost/kstb",
        "postgresql://kstb@[::1]:5432/kstb",
        "postgresql://kstb@%2Fvar%2Frun%2Fpostgresql/kstb",
        "postgresql:///kstb?host=/tmp",
    ],
)
def test_development_on_this_host_stays_allowed(url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PGHOST", raising=False)
    assert postgres_params(url)["dbname"] == "kstb"
