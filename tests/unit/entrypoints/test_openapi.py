"""The OpenAPI document generates clients: valid, stable, every operation named and its errors
documented. `docs/openapi.json` is the published copy; regenerate it after a deliberate change
with `UPDATE_OPENAPI=1 .venv/bin/pytest tests/unit/entrypoints/test_openapi.py`."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
from openapi_spec_validator import validate

from twintrack.bootstrap import in_memory
from twintrack.entrypoints.api.app import create_app

PUBLISHED = Path(__file__).resolve().parents[3] / "docs" / "openapi.json"
UNAUTHENTICATED = {"/healthz", "/readyz", "/metrics"}


@pytest.fixture(scope="module")
def schema() -> dict[str, Any]:
    document: dict[str, Any] = create_app(in_memory()).openapi()
    return document


def _operations(schema: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    return [
        (path, method, op) for path, ops in schema["paths"].items() for method, op in ops.items()
    ]


def test_the_document_is_valid_openapi(schema: dict[str, Any]) -> None:
    validate(schema)


def test_every_operation_has_a_unique_readable_id_a_tag_and_a_summary(
    schema: dict[str, Any],
) -> None:
    ids = [op["operationId"] for _, _, op in _operations(schema)]
    assert len(ids) == len(set(ids)), ids
    assert all(i.isidentifier() and "_v1_" not in i for i in ids), ids
    assert all(op.get("tags") and op.get("summary") for _, _, op in _operations(schema))


def test_every_authenticated_operation_documents_its_errors(schema: dict[str, Any]) -> None:
    for path, method, op in _operations(schema):
        if path in UNAUTHENTICATED:
            continue
        documented = set(op["responses"])
        assert {"401", "404", "503", "default"} <= documented, (method, path, documented)
        for code, response in op["responses"].items():
            if code.startswith(("4", "5")) or code == "default":
                ref = response["content"]["application/json"]["schema"]["$ref"]
                assert ref.endswith("/ErrorResponse"), (method, path, code, ref)


def test_the_published_document_is_current(schema: dict[str, Any]) -> None:
    current = json.dumps({**schema, "info": {**schema["info"], "version": "-"}}, indent=1)
    if os.environ.get("UPDATE_OPENAPI"):
        PUBLISHED.write_text(current + "\n")
    assert PUBLISHED.read_text() == current + "\n", (
        "the API changed: review the diff, then regenerate docs/openapi.json (see the docstring)"
    )


def test_admin_answers_are_typed_models(schema: dict[str, Any]) -> None:
    """Generated clients get real types for the admin routes too, not a bare object."""
    admin = [(p, m, op) for p, m, op in _operations(schema) if p.startswith("/v1/admin")]
    assert {(p, m) for p, m, _ in admin} >= {
        ("/v1/admin/rollout", "get"),
        ("/v1/admin/rollout", "put"),
        ("/v1/admin/executions/stop", "post"),
        ("/v1/admin/executions/reroute", "post"),
    }
    for path, method, op in admin:
        answer = op["responses"]["200"]["content"]["application/json"]["schema"]
        assert answer.get("$ref", "").split("/")[-1].endswith("Out"), (method, path, answer)
