"""Root fixtures: real servers (tests/fixtures/servers.py), isolated databases (database.py), the
time budget every test must keep (budget.py) and the whole session on CI (session_budget.py),
and the same logging set-up for every test (logging_state.py)."""

pytest_plugins = [
    "pytester",
    "tests.fixtures.servers",
    "tests.fixtures.database",
    "tests.fixtures.budget",
    "tests.fixtures.session_budget",
    "tests.fixtures.logging_state",
]
