"""Fixtures shared by the unit tests: a real PostgreSQL cluster for the store contracts."""

from tests.postgres import fresh_pg_url, pg_database, postgres_cluster

__all__ = ["fresh_pg_url", "pg_database", "postgres_cluster"]
