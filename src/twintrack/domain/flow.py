"""The flow model and its validation.

Validation collects every problem it can find rather than stopping at the first, and each
message names the node, edge or field at fault, because a flow author fixes them in one go.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from twintrack.domain.execution import ExecutionOptions

if TYPE_CHECKING:
    from twintrack.nodes.base import NodeConfig, NodeType

MAX_FLOW_BYTES = 1024 * 1024
MAX_NODES = 1000
MAX_EDGES = 5000
# \Z, not $: `$` also matches before a trailing newline, which would let "a\n" through.
NODE_ID_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}\Z")
ERROR_PORT = "error"


class NodeCatalog(Protocol):
    def get(self, type_name: str) -> NodeType | None: ...

    def names(self) -> list[str]: ...


@dataclass(frozen=True)
class Issue:
    """One validation problem: where (a JSON path) and what, in words a flow author can act on."""

    location: str
    message: str

    def __str__(self) -> str:
        return f"{self.location}: {self.message}" if self.location else self.message


class FlowValidationError(Exception):
    """The flow (or the options for running it) broke one or more rules."""

    def __init__(self, issues: list[Issue]):
        self.issues = issues
        super().__init__("; ".join(str(i) for i in issues))


class _NodeDoc(BaseModel):
    model_config = ConfigDict(extra="forbid")
    id: str
    type: str
    config: dict[str, Any] = Field(default_factory=dict)


class _EdgeDoc(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    from_: str = Field(alias="from")
    to: str


class _FlowDoc(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(min_length=1, max_length=256)
    nodes: list[_NodeDoc]
    edges: list[_EdgeDoc] = Field(default_factory=list)


@dataclass(frozen=True)
class FlowNode:
    id: str
    type: str
    config: NodeConfig
    node_type: NodeType
    index: int

    def input_ports(self) -> Mapping[str, bool]:
        return self.node_type.input_ports(self.config)

    def output_ports(self) -> tuple[str, ...]:
        return (*self.node_type.output_ports(self.config), ERROR_PORT)


@dataclass(frozen=True)
class FlowEdge:
    source: str
    source_port: str
    target: str
    target_port: str


@dataclass(frozen=True)
class Flow:
    """A validated flow: nodes in declaration order, edges, and adjacency for the engine."""

    name: str
    nodes: dict[str, FlowNode]
    edges: tuple[FlowEdge, ...]
    definition: dict[str, Any]
    _incoming: dict[str, dict[str, FlowEdge]] = field(repr=False)
    _outgoing: dict[str, tuple[FlowEdge, ...]] = field(repr=False)

    def incoming(self, node_id: str) -> dict[str, FlowEdge]:
        """Connected input ports of a node: port -> the one edge feeding it."""
        return self._incoming[node_id]

    def outgoing(self, node_id: str) -> tuple[FlowEdge, ...]:
        return self._outgoing[node_id]

    def downstream(self, roots: set[str]) -> set[str]:
        """Every node reachable from `roots` along edges (roots excluded unless reachable)."""
        return _reach(roots, lambda n: (e.target for e in self._outgoing[n]))

    def upstream(self, roots: set[str]) -> set[str]:
        return _reach(roots, lambda n: (e.source for e in self._incoming[n].values()))


def _reach(roots: set[str], step: Any) -> set[str]:
    seen: set[str] = set()
    stack = list(roots)
    while stack:
        for nxt in step(stack.pop()):
            if nxt not in seen:
                seen.add(nxt)
                stack.append(nxt)
    return seen


def _pydantic_issues(prefix: str, exc: ValidationError) -> list[Issue]:
    issues = []
    for err in exc.errors():
        loc = ".".join(str(p) if not isinstance(p, int) else f"[{p}]" for p in err["loc"])
        loc = loc.replace(".[", "[")
        where = f"{prefix}.{loc}" if prefix and loc else (prefix or loc)
        issues.append(Issue(where.replace(".[", "["), err["msg"]))
    return issues


def parse_flow_json(raw: bytes | str, catalog: NodeCatalog) -> Flow:
    """Parse and validate a flow document given as JSON text (size-limited to 1 MiB)."""
    size = len(raw.encode("utf-8", "surrogatepass") if isinstance(raw, str) else raw)
    if size > MAX_FLOW_BYTES:
        raise FlowValidationError(
            [Issue("", f"flow body is {size} bytes; the limit is {MAX_FLOW_BYTES} (1 MiB)")]
        )
    try:
        data = json.loads(raw, parse_constant=_reject_constant)
    except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError, _reject_constant
        raise FlowValidationError([Issue("", f"flow is not valid JSON: {exc}")]) from exc
    return validate_flow(data, catalog)


def _reject_constant(name: str) -> Any:
    # NaN/Infinity are not JSON (RFC 8259); Python accepts them, Postgres jsonb does not.
    raise ValueError(f"{name} is not allowed (not part of JSON)")


def validate_flow(data: Any, catalog: NodeCatalog) -> Flow:
    """Validate a decoded flow document against every rule: known node types and ports, edges
    between existing ports, no cycle, size limits."""
    try:
        doc = _FlowDoc.model_validate(data)
    except ValidationError as exc:
        raise FlowValidationError(_pydantic_issues("", exc)) from exc
    issues: list[Issue] = []
    if len(doc.nodes) > MAX_NODES:
        issues.append(Issue("nodes", f"{len(doc.nodes)} nodes; the limit is {MAX_NODES}"))
    if len(doc.edges) > MAX_EDGES:
        issues.append(Issue("edges", f"{len(doc.edges)} edges; the limit is {MAX_EDGES}"))
    if issues:
        raise FlowValidationError(issues)

    nodes = _check_nodes(doc, catalog, issues)
    edges = _check_edges(doc, nodes, issues)
    incoming: dict[str, dict[str, FlowEdge]] = {n: {} for n in nodes}
    outgoing: dict[str, list[FlowEdge]] = {n: [] for n in nodes}
    for i, edge in edges:
        fed = incoming[edge.target]
        if edge.target_port in fed:
            issues.append(
                Issue(
                    f"edges[{i}].to",
                    f"input port '{edge.target}.{edge.target_port}' is fed by more than one edge",
                )
            )
            continue
        fed[edge.target_port] = edge
        outgoing[edge.source].append(edge)
    for node in nodes.values():
        for port, required in node.input_ports().items():
            configured = node.node_type.configured_inputs(node.config)
            if required and port not in incoming[node.id] and port not in configured:
                issues.append(
                    Issue(
                        f"nodes[{node.index}]",
                        f"node '{node.id}': required input '{port}' is neither connected "
                        "nor configured",
                    )
                )
    cycle = _find_cycle(list(nodes), outgoing)
    if cycle:
        issues.append(Issue("edges", "flow has a cycle: " + " -> ".join(cycle)))
    if issues:
        raise FlowValidationError(issues)
    return Flow(
        name=doc.name,
        nodes=nodes,
        edges=tuple(e for _, e in edges),
        definition=doc.model_dump(by_alias=True),
        _incoming=incoming,
        _outgoing={k: tuple(v) for k, v in outgoing.items()},
    )


def _check_nodes(doc: _FlowDoc, catalog: NodeCatalog, issues: list[Issue]) -> dict[str, FlowNode]:
    nodes: dict[str, FlowNode] = {}
    seen: set[str] = set()
    for index, nd in enumerate(doc.nodes):
        where = f"nodes[{index}]"
        if not NODE_ID_RE.match(nd.id):
            issues.append(
                Issue(f"{where}.id", f"node id '{nd.id}' must match [A-Za-z0-9_-]{{1,64}}")
            )
            continue
        if nd.id in seen:
            issues.append(Issue(f"{where}.id", f"duplicate node id '{nd.id}'"))
            continue
        seen.add(nd.id)
        node_type = catalog.get(nd.type)
        if node_type is None:
            issues.append(
                Issue(
                    f"{where}.type",
                    f"node '{nd.id}': unknown node type '{nd.type}' "
                    f"(known: {', '.join(catalog.names())})",
                )
            )
            continue
        try:
            config = node_type.config_model.model_validate(nd.config)
        except ValidationError as exc:
            for issue in _pydantic_issues(f"{where}.config", exc):
                issues.append(Issue(issue.location, f"node '{nd.id}': {issue.message}"))
            continue
        for problem in node_type.validate_semantics(config):
            issues.append(Issue(f"{where}.config", f"node '{nd.id}': {problem}"))
        nodes[nd.id] = FlowNode(nd.id, nd.type, config, node_type, index)
    return nodes


def _split_ref(ref: str) -> tuple[str, str] | None:
    node, sep, port = ref.rpartition(".")
    return (node, port) if sep and node and port else None


def _check_edges(
    doc: _FlowDoc, nodes: dict[str, FlowNode], issues: list[Issue]
) -> list[tuple[int, FlowEdge]]:
    known_ids = {nd.id for nd in doc.nodes}
    edges: list[tuple[int, FlowEdge]] = []
    for i, ed in enumerate(doc.edges):
        ends: list[tuple[str, str]] = []
        for key, ref, direction in (("from", ed.from_, "output"), ("to", ed.to, "input")):
            where = f"edges[{i}].{key}"
            parts = _split_ref(ref)
            if parts is None:
                issues.append(Issue(where, f"'{ref}' must have the form 'nodeId.port'"))
                continue
            node_id, port = parts
            node = nodes.get(node_id)
            if node is None:
                if node_id not in known_ids:
                    issues.append(Issue(where, f"edge refers to unknown node '{node_id}'"))
                continue  # the node itself is invalid and already reported
            ports = node.output_ports() if direction == "output" else tuple(node.input_ports())
            if port not in ports:
                listed = ", ".join(ports) or "none"
                issues.append(
                    Issue(
                        where,
                        f"node '{node_id}' ({node.type}) has no {direction} port '{port}' "
                        f"({direction} ports: {listed})",
                    )
                )
                continue
            ends.append((node_id, port))
        if len(ends) == 2:
            (src, sport), (dst, dport) = ends
            if src == dst:
                issues.append(Issue(f"edges[{i}]", f"node '{src}' is connected to itself"))
                continue
            edges.append((i, FlowEdge(src, sport, dst, dport)))
    return edges


def _find_cycle(order: list[str], outgoing: Mapping[str, list[FlowEdge]]) -> list[str] | None:
    """One cycle as a path of node ids (first id repeated at the end), or None."""
    white, grey, black = 0, 1, 2
    colour = dict.fromkeys(order, white)
    for root in order:
        if colour[root] != white:
            continue
        path: list[str] = [root]
        iters: list[Iterator[FlowEdge]] = [iter(outgoing[root])]
        colour[root] = grey
        while iters:
            edge = next(iters[-1], None)
            if edge is None:
                colour[path.pop()] = black
                iters.pop()
                continue
            nxt = edge.target
            if colour[nxt] == grey:
                return [*path[path.index(nxt) :], nxt]
            if colour[nxt] == white:
                colour[nxt] = grey
                path.append(nxt)
                iters.append(iter(outgoing[nxt]))
    return None


def check_options(flow: Flow, options: ExecutionOptions) -> None:
    """Options that only make sense for this flow: breakpoints and inputs name real nodes."""
    issues = [
        Issue(f"options.breakpoints[{i}]", f"breakpoint names unknown node '{node_id}'")
        for i, node_id in enumerate(options.breakpoints)
        if node_id not in flow.nodes
    ]
    for node_id in options.inputs:
        node = flow.nodes.get(node_id)
        if node is None or node.type != "const":
            issues.append(
                Issue(
                    f"options.inputs.{node_id}",
                    f"inputs may only set const nodes; '{node_id}' is "
                    + ("not a node of this flow" if node is None else f"a '{node.type}' node"),
                )
            )
    if issues:
        raise FlowValidationError(issues)
