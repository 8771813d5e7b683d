# The two commands of the README, plus the checks CI runs. Every target sets itself up first
# (pinned uv in .tools/, locked packages in .venv/), so each works on a fresh machine.
.PHONY: setup run test lint fmt hello

BIN = .venv/bin

setup:
	@./scripts/bootstrap.sh >/dev/null

run: setup
	$(BIN)/twintrack dev

hello: setup
	$(BIN)/twintrack run examples/hello.json

# Two test processes, one file at a time each, every process with its own embedded PostgreSQL
# and broker: the suite mostly waits (leases, stalls, restarts, grace periods), so two of them
# share a 2-core machine well. Per file, so module-scoped deployments are built once.
test: setup lint
	$(BIN)/pytest -n 2 --dist loadfile

lint: setup
	$(BIN)/ruff check src tests
	$(BIN)/ruff format --check src tests
	$(BIN)/mypy

fmt: setup
	$(BIN)/ruff check --fix src tests
	$(BIN)/ruff format src tests
