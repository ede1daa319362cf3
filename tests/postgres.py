"""Pytest fixtures over a real PostgreSQL cluster (no mocks; ADR 0013).

:func:`postgres_cluster` (session-scoped) starts one cluster under the pytest basetemp and
stops it at the end; :func:`pg_database` creates one database per test module;
:func:`fresh_pg_url` gives each test its own schema in it (``search_path``), so store
contract tests start empty without paying for a database per test.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator

import pytest

from bridge.devnet.postgres import PostgresCluster, start_cluster

__all__ = ["PostgresCluster", "fresh_pg_url", "pg_database", "postgres_cluster", "start_cluster"]


@pytest.fixture(scope="session")
def postgres_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PostgresCluster]:
    """One PostgreSQL cluster for the whole test session."""
    cluster = start_cluster(tmp_path_factory.mktemp("postgres"))
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture(scope="module")
def pg_database(postgres_cluster: PostgresCluster, request: pytest.FixtureRequest) -> str:
    """A database for this test module; returns its name."""
    name = "t_" + request.module.__name__.rsplit(".", 1)[-1][:40] + "_" + secrets.token_hex(3)
    postgres_cluster.create_database(name)
    return name


@pytest.fixture
def fresh_pg_url(postgres_cluster: PostgresCluster, pg_database: str) -> str:
    """A URL whose ``search_path`` is a new, empty schema: one clean store per test."""
    schema = "s_" + secrets.token_hex(6)
    postgres_cluster.psql(f"CREATE SCHEMA {schema}", pg_database)
    return postgres_cluster.url(pg_database, schema)
