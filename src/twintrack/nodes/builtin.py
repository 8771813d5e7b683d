"""The built-in node types: const, math, template, delay, fail, emit, listen, output, tally."""

from __future__ import annotations

import asyncio
import json
import math
import string
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar, Literal

from pydantic import Field, StrictFloat, StrictInt

from twintrack.nodes.base import NodeConfig, NodeContext, NodeError, NodeType

_MAX_DELAY_MS = 7 * 24 * 3600 * 1000


class ConstConfig(NodeConfig):
    value: Any


class ConstNode(NodeType):
    type_name = "const"
    side_effects = False
    config_model = ConstConfig
    outputs = ("value",)
    description = "Emits its value; options.inputs may override it per execution."

    async def run(
        self, ctx: NodeContext, config: NodeConfig, inputs: Mapping[str, Any]
    ) -> Mapping[str, Any]:
        assert isinstance(config, ConstConfig)
        overridden, value = ctx.execution_input
        return {"value": value if overridden else config.value}


class MathConfig(NodeConfig):
    op: Literal["add", "sub", "mul", "div"]
    a: StrictInt | StrictFloat | None = None
    b: StrictInt | StrictFloat | None = None


def _number(port: str, value: Any) -> int | float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise NodeError(f"input '{port}' must be a number, got {type(value).__name__}")
    return value


class MathNode(NodeType):
    type_name = "math"
    side_effects = False
    config_model = MathConfig
    inputs: ClassVar[Mapping[str, bool]] = {"a": True, "b": True}
    outputs = ("result",)
    description = "Arithmetic on a and b; division by zero fails the node."

    async def run(
        self, ctx: NodeContext, config: NodeConfig, inputs: Mapping[str, Any]
    ) -> Mapping[str, Any]:
        assert isinstance(config, MathConfig)
        a, b = _number("a", inputs["a"]), _number("b", inputs["b"])
        if config.op == "add":
            result = a + b
        elif config.op == "sub":
            result = a - b
        elif config.op == "mul":
            result = a * b
        else:
            if b == 0:
                raise NodeError("division by zero")
            result = a / b
        if isinstance(result, float) and not math.isfinite(result):
            # inf/nan are not JSON: events and the outputs column could not store them
            raise NodeError(f"result of {config.op} is not a finite number")
        return {"result": result}


class TemplateConfig(NodeConfig):
    template: str = Field(max_length=65536)
    values: dict[str, Any] = Field(default_factory=dict)


def template_placeholders(template: str) -> tuple[list[str], list[str]]:
    """Placeholder names in order of first use, and problems (attribute/index access, specs)."""
    names: list[str] = []
    problems: list[str] = []
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError as exc:
        return [], [f"template is malformed: {exc}"]
    for _literal, field, spec, conversion in parsed:
        if field is None:
            continue
        if not field.isidentifier():
            problems.append(
                f"placeholder '{{{field}}}' must be a plain name "
                "(no attribute or index access, no positional fields)"
            )
        elif spec or conversion:
            problems.append(f"placeholder '{{{field}}}' must not have a format spec or conversion")
        elif field not in names:
            names.append(field)
    return names, problems


def _text(value: Any) -> str:
    """Strings as they are; everything else as JSON, so `None` reads `null`, not `None`."""
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)


class TemplateNode(NodeType):
    type_name = "template"
    side_effects = False
    config_model = TemplateConfig
    outputs = ("text",)
    description = "Renders {name} placeholders from same-named inputs (or config.values)."

    def input_ports(self, config: NodeConfig) -> Mapping[str, bool]:
        assert isinstance(config, TemplateConfig)
        names, _ = template_placeholders(config.template)
        return dict.fromkeys(names, True)

    def configured_inputs(self, config: NodeConfig) -> Mapping[str, Any]:
        assert isinstance(config, TemplateConfig)
        return {k: v for k, v in config.values.items() if k in self.input_ports(config)}

    def validate_semantics(self, config: NodeConfig) -> list[str]:
        assert isinstance(config, TemplateConfig)
        names, problems = template_placeholders(config.template)
        problems += [
            f"config.values has '{key}', which is not a placeholder of the template"
            for key in config.values
            if key not in names
        ]
        return problems

    async def run(
        self, ctx: NodeContext, config: NodeConfig, inputs: Mapping[str, Any]
    ) -> Mapping[str, Any]:
        assert isinstance(config, TemplateConfig)
        parts: list[str] = []
        for literal, field, _spec, _conv in string.Formatter().parse(config.template):
            parts.append(literal)
            if field is not None:
                parts.append(_text(inputs[field]))
        return {"text": "".join(parts)}


class DelayConfig(NodeConfig):
    ms: int = Field(ge=0, le=_MAX_DELAY_MS)


class DelayNode(NodeType):
    type_name = "delay"
    side_effects = False
    config_model = DelayConfig
    inputs: ClassVar[Mapping[str, bool]] = {"value": False}
    outputs = ("value",)
    description = "Waits ms milliseconds, then passes value on; stop cancels it at once."

    async def run(
        self, ctx: NodeContext, config: NodeConfig, inputs: Mapping[str, Any]
    ) -> Mapping[str, Any]:
        assert isinstance(config, DelayConfig)
        await asyncio.sleep(config.ms / 1000)
        return {"value": inputs.get("value")}


class FailConfig(NodeConfig):
    message: str = Field(min_length=1, max_length=4096)


class FailNode(NodeType):
    type_name = "fail"
    side_effects = False
    config_model = FailConfig
    inputs: ClassVar[Mapping[str, bool]] = {"value": False}
    description = "Always fails with its message."

    async def run(
        self, ctx: NodeContext, config: NodeConfig, inputs: Mapping[str, Any]
    ) -> Mapping[str, Any]:
        assert isinstance(config, FailConfig)
        raise NodeError(config.message)


class EmitConfig(NodeConfig):
    event: str = Field(min_length=1, max_length=256)
    flow_id: str | None = None


class EmitNode(NodeType):
    type_name = "emit"
    side_effects = True  # spawns a real child
    config_model = EmitConfig
    inputs: ClassVar[Mapping[str, bool]] = {"payload": False}
    description = "Spawns a child execution started by the event (same flow unless flow_id)."

    async def run(
        self, ctx: NodeContext, config: NodeConfig, inputs: Mapping[str, Any]
    ) -> Mapping[str, Any]:
        assert isinstance(config, EmitConfig)
        await ctx.spawn_child(
            event=config.event, payload=inputs.get("payload"), flow_id=config.flow_id
        )
        return {}


class ListenConfig(NodeConfig):
    event: str = Field(min_length=1, max_length=256)


class ListenNode(NodeType):
    type_name = "listen"
    side_effects = False
    config_model = ListenConfig
    outputs = ("payload",)
    description = "In a child started by its event, outputs the event's payload."

    def listens_to(self, config: NodeConfig) -> str | None:
        assert isinstance(config, ListenConfig)
        return config.event

    async def run(
        self, ctx: NodeContext, config: NodeConfig, inputs: Mapping[str, Any]
    ) -> Mapping[str, Any]:
        assert isinstance(config, ListenConfig)
        for event in ctx.trigger_events:
            if event.name == config.event:
                return {"payload": event.payload}
        raise NodeError(f"event '{config.event}' was not received")  # the engine skips these


class OutputConfig(NodeConfig):
    name: str = Field(min_length=1, max_length=256)


class OutputNode(NodeType):
    type_name = "output"
    side_effects = False
    config_model = OutputConfig
    inputs: ClassVar[Mapping[str, bool]] = {"value": True}
    description = "Stores value under name in the execution's outputs."

    async def run(
        self, ctx: NodeContext, config: NodeConfig, inputs: Mapping[str, Any]
    ) -> Mapping[str, Any]:
        assert isinstance(config, OutputConfig)
        await ctx.set_output(config.name, inputs["value"])
        return {}


class TallyConfig(NodeConfig):
    name: str = Field(min_length=1, max_length=256)


class TallyNode(NodeType):
    type_name = "tally"
    side_effects = True  # writes a durable counter
    config_model = TallyConfig
    inputs: ClassVar[Mapping[str, bool]] = {"value": False}
    outputs = ("count",)
    description = "Increments a durable counter in its own transaction; outputs the new count."

    async def run(
        self, ctx: NodeContext, config: NodeConfig, inputs: Mapping[str, Any]
    ) -> Mapping[str, Any]:
        assert isinstance(config, TallyConfig)
        # Exactly once per attempt: an increment retried after a lost connection counts once.
        key = f"{ctx.execution_id}/{ctx.attempt}/{ctx.node_id}"
        return {"count": await ctx.counters.increment(config.name, key=key)}


BUILTIN_NODE_TYPES: Sequence[type[NodeType]] = (
    ConstNode,
    MathNode,
    TemplateNode,
    DelayNode,
    FailNode,
    EmitNode,
    ListenNode,
    OutputNode,
    TallyNode,
)
