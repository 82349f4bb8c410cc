"""Alembic migrations for the ledger; one history for SQLite and Postgres."""
