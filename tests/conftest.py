"""Root fixtures: real servers (tests/fixtures/servers.py) and isolated databases (database.py)."""

pytest_plugins = ["tests.fixtures.servers", "tests.fixtures.database"]
