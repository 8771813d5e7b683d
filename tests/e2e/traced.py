"""`python -m tests.e2e.traced api|worker`: the `twintrack` command in a process whose host set
its own TracerProvider first, as an application embedding twintrack would. Each span goes, as
one JSON line, to `$TRACES_DIR/<pid>.jsonl`, so a test can read the spans of every process.

The service must leave this provider in place (`configure_tracing` keeps one that is set, even
with OTEL_TRACES_EXPORTER asking for another): spans that reach the file prove it did.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExporter, SpanExportResult


class JsonLinesExporter(SpanExporter):
    """Appends each finished span to a file, one JSON object per line, at once (no batching:
    a process killed at the end of a test loses nothing)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        with self.path.open("a") as out:
            for span in spans:
                out.write(json.dumps(as_line(span)) + "\n")
        return SpanExportResult.SUCCESS


def as_line(span: ReadableSpan) -> dict[str, object]:
    context = span.get_span_context()
    assert context is not None
    return {
        "name": span.name,
        "trace_id": f"{context.trace_id:032x}",
        "span_id": f"{context.span_id:016x}",
        "parent_id": f"{span.parent.span_id:016x}" if span.parent is not None else None,
        "kind": span.kind.name,
        "attributes": dict(span.attributes or {}),
        "pid": os.getpid(),
    }


def main() -> None:
    folder = Path(os.environ["TRACES_DIR"])
    provider = TracerProvider()
    provider.add_span_processor(
        SimpleSpanProcessor(JsonLinesExporter(folder / f"{os.getpid()}.jsonl"))
    )
    trace.set_tracer_provider(provider)

    from twintrack.entrypoints.cli.main import app

    app()


if __name__ == "__main__":
    main()
