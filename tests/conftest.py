"""Root fixtures: real servers (tests/fixtures/servers.py), isolated databases (database.py), and
the time budget every test must keep (budget.py)."""

pytest_plugins = [
    "pytester",
    "tests.fixtures.servers",
    "tests.fixtures.database",
    "tests.fixtures.budget",
]
