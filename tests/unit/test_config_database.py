"""``database`` in coordinator.toml selects the engine (ADR 0013); no password in a URL."""

from __future__ import annotations

from pathlib import Path

import pytest

from bridge.config import load_coordinator
from bridge.domain.errors import InvalidInput
from tests.unit.test_config import network_data, write

pytestmark = [pytest.mark.unit, pytest.mark.postgres]


def coordinator(tmp_path: Path, **extra: str) -> Path:
    write(tmp_path / "network.toml", network_data())
    return write(
        tmp_path / "coordinator.toml",
        {
            "network": "network.toml",
            "listen": "127.0.0.1:7000",
            "verifiers": [],
            "relayers": {"brokerage-a": "127.0.0.1:7201", "brokerage-b": "127.0.0.1:7202"},
            **extra,
        },
    )


def test_a_postgresql_url_selects_postgres(tmp_path: Path) -> None:
    cfg = load_coordinator(
        coordinator(
            tmp_path,
            database="postgresql://kstb@db.internal:5432/kstb?sslmode=verify-full",
            database_password_file="secrets/db-password",
        )
    )
    assert cfg.database == "postgresql://kstb@db.internal:5432/kstb?sslmode=verify-full"
    assert cfg.database_password_file == tmp_path / "secrets" / "db-password"


def test_a_path_stays_sqlite(tmp_path: Path) -> None:
    cfg = load_coordinator(coordinator(tmp_path, database="state/c.sqlite"))
    assert cfg.database == tmp_path / "state" / "c.sqlite"
    assert cfg.database_password_file is None


def test_a_password_in_the_url_is_refused(tmp_path: Path) -> None:
    with pytest.raises(InvalidInput, match="must not contain a password") as exc:
        load_coordinator(coordinator(tmp_path, database="postgresql://kstb:hunter2@db/kstb"))
    assert "hunter2" not in str(exc.value)
