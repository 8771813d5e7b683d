"""The DBOS track: each execution is a durable workflow on a Postgres-backed DBOS queue."""
