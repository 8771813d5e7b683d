"""What a node type is, and what a running node may touch.

A node type declares its config schema and ports; the engine gives each run a `NodeContext`
that exposes only narrow services (counters, child spawning, logging, outputs), so nodes stay
ignorant of how and where the execution runs.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol

from pydantic import BaseModel, ConfigDict

from twintrack.domain.execution import TriggerEvent

ERROR_PORT = "error"


class NodeError(Exception):
    """A node failed in a way the flow author should see; the message is shown as is."""


class InfrastructureError(Exception):
    """A service the node needs stayed unavailable past its retries: not the flow's fault.

    The engine does not report it as a node failure: it abandons the run, so the worker's claim
    lapses and recovery runs the execution again.
    """


class NodeConfig(BaseModel):
    """Base for config schemas: unknown keys are errors, so typos surface at validation."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class Counters(Protocol):
    """Durable counters, incremented in their own transaction (the `tally` node).

    `key` makes an increment idempotent: repeating it with the same key (a retry after a lost
    connection) counts once and returns the count the first one produced.
    """

    async def increment(self, name: str, *, key: str | None = None) -> int: ...


@dataclass(frozen=True)
class SpawnedChild:
    execution_id: str
    flow_id: str
    depth: int
    #: an earlier attempt of the parent already announced it (`child.spawned` is in the stream)
    announced: bool = False


def child_depth(parent_depth: int, max_depth: int) -> int:
    """The depth of a child of a parent at `parent_depth`: the one depth-cap rule, for every
    spawner (both tracks and `twintrack run`). NodeError when it would pass EXECUTION_MAX_DEPTH."""
    depth = parent_depth + 1
    if depth > max_depth:
        raise NodeError(
            f"cannot spawn a child at depth {depth}: EXECUTION_MAX_DEPTH is {max_depth}"
        )
    return depth


class ChildSpawner(Protocol):
    """Creates and starts a child execution; raises NodeError when it must not (depth cap).

    `node_id` names the emitting node, so a re-run of the parent can find the child it
    already spawned instead of spawning a second one.
    """

    async def spawn(
        self, *, node_id: str, event: str, payload: Any, flow_id: str | None
    ) -> SpawnedChild: ...


class NodeContext(Protocol):
    """What a node may do besides computing its outputs."""

    @property
    def execution_id(self) -> str: ...

    @property
    def node_id(self) -> str: ...

    @property
    def attempt(self) -> int:
        """Which run of the execution this is: 1, then one more per recovery re-run."""
        ...

    @property
    def trigger_events(self) -> Sequence[TriggerEvent]: ...

    @property
    def execution_input(self) -> tuple[bool, Any]:
        """(True, value) when the execution's `options.inputs` sets a value for this node."""
        ...

    @property
    def counters(self) -> Counters: ...

    async def log(self, message: str) -> None: ...

    async def set_output(self, name: str, value: Any) -> None: ...

    async def spawn_child(self, *, event: str, payload: Any, flow_id: str | None) -> str: ...


class NodeType(ABC):
    """A kind of node. Subclasses set `type_name` and `config_model` and implement `run`."""

    type_name: ClassVar[str]
    config_model: ClassVar[type[NodeConfig]] = NodeConfig
    #: fixed input ports: name -> required
    inputs: ClassVar[Mapping[str, bool]] = {}
    #: fixed output ports (the `error` port exists on every node and is not listed)
    outputs: ClassVar[Sequence[str]] = ()
    description: ClassVar[str] = ""
    #: whether running the node acts on the world (a counter, a child, a call out). A shadow
    #: run (engine/shadow.py) never runs such a node: it replays the original's result. True
    #: unless a type says otherwise, so a plugin that does not declare it is never run twice.
    side_effects: ClassVar[bool] = True

    def input_ports(self, config: NodeConfig) -> Mapping[str, bool]:
        """Input ports for this config (name -> required). Override for dynamic ports."""
        return self.inputs

    def output_ports(self, config: NodeConfig) -> Sequence[str]:
        return self.outputs

    def configured_inputs(self, config: NodeConfig) -> Mapping[str, Any]:
        """Input values supplied by config rather than an edge (an edge wins)."""
        values = config.model_dump()
        return {
            name: values[name] for name in self.input_ports(config) if values.get(name) is not None
        }

    def listens_to(self, config: NodeConfig) -> str | None:
        """The event name a listener node waits for; None for ordinary nodes."""
        return None

    def validate_semantics(self, config: NodeConfig) -> list[str]:
        """Checks beyond the schema (for example template placeholders); messages, if any."""
        return []

    @abstractmethod
    async def run(
        self, ctx: NodeContext, config: NodeConfig, inputs: Mapping[str, Any]
    ) -> Mapping[str, Any]:
        """Compute output port values. Raise NodeError for a failure the author should see."""
