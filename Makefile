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

test: setup lint
	$(BIN)/pytest

lint: setup
	$(BIN)/ruff check src tests
	$(BIN)/ruff format --check src tests
	$(BIN)/mypy

fmt: setup
	$(BIN)/ruff check --fix src tests
	$(BIN)/ruff format src tests
