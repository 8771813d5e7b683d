"""Flow validation (DESIGN §1.1): every rule rejects with a message naming what is at fault."""

from __future__ import annotations

import json
from typing import Any

import pytest

from twintrack.domain.execution import ExecutionOptions
from twintrack.domain.flow import (
    MAX_EDGES,
    MAX_FLOW_BYTES,
    MAX_NODES,
    Flow,
    FlowEdge,
    FlowValidationError,
    Issue,
    check_options,
    parse_flow_json,
    validate_flow,
)
from twintrack.nodes.registry import builtin_registry

REGISTRY = builtin_registry()


def node(node_id: str, type_: str, **config: Any) -> dict[str, Any]:
    return {"id": node_id, "type": type_, "config": config}


def edge(src: str, dst: str) -> dict[str, str]:
    return {"from": src, "to": dst}


def doc(nodes: list[dict[str, Any]], edges: list[dict[str, str]] | None = None) -> dict[str, Any]:
    return {"name": "f", "nodes": nodes, "edges": edges or []}


def flow(nodes: list[dict[str, Any]], edges: list[dict[str, str]] | None = None) -> Flow:
    return validate_flow(doc(nodes, edges), REGISTRY)


def issues_of(data: Any) -> list[Issue]:
    with pytest.raises(FlowValidationError) as caught:
        validate_flow(data, REGISTRY)
    assert caught.value.issues, "a FlowValidationError must carry at least one issue"
    return caught.value.issues


def one_issue(data: Any) -> Issue:
    issues = issues_of(data)
    assert len(issues) == 1, issues
    return issues[0]


def parse_issue(raw: bytes | str) -> Issue:
    with pytest.raises(FlowValidationError) as caught:
        parse_flow_json(raw, REGISTRY)
    assert len(caught.value.issues) == 1, caught.value.issues
    return caught.value.issues[0]


def const_and_delay() -> list[dict[str, Any]]:
    """Two nodes whose inputs are all optional, so an edge problem is the only problem."""
    return [node("c", "const", value=1), node("d", "delay", ms=0)]


# -- node types and ports ---------------------------------------------------------------


def test_unknown_node_type_names_node_and_type() -> None:
    issue = one_issue(doc([node("c", "const", value=1), node("x", "nope")]))
    assert issue.location == "nodes[1].type"
    assert "node 'x'" in issue.message
    assert "unknown node type 'nope'" in issue.message
    known = "const, delay, emit, fail, listen, math, output, tally, template"
    assert f"(known: {known})" in issue.message


def test_unknown_output_port_on_edge_source() -> None:
    issue = one_issue(doc(const_and_delay(), [edge("c.nope", "d.value")]))
    assert issue.location == "edges[0].from"
    assert "node 'c'" in issue.message
    assert "no output port 'nope'" in issue.message
    assert "(output ports: value, error)" in issue.message


def test_unknown_input_port_on_edge_target() -> None:
    issue = one_issue(doc(const_and_delay(), [edge("c.value", "d.val")]))
    assert issue.location == "edges[0].to"
    assert "node 'd'" in issue.message
    assert "no input port 'val'" in issue.message
    assert "(input ports: value)" in issue.message


def test_error_port_is_not_an_input_port() -> None:
    nodes = [node("c", "const", value=1), node("d", "delay", ms=0)]
    issue = one_issue(doc(nodes, [edge("c.value", "d.error")]))
    assert issue.location == "edges[0].to"
    assert "no input port 'error'" in issue.message


def test_every_node_has_an_error_output_port() -> None:
    f = flow(
        [node("m", "math", op="div", a=1, b=0), node("o", "output", name="err")],
        [edge("m.error", "o.value")],
    )
    assert f.outgoing("m") == (FlowEdge("m", "error", "o", "value"),)


# -- ids -------------------------------------------------------------------------------


def test_duplicate_ids() -> None:
    issue = one_issue(doc([node("a", "const", value=1), node("a", "const", value=2)]))
    assert issue.location == "nodes[1].id"
    assert issue.message == "duplicate node id 'a'"


@pytest.mark.parametrize(
    "bad_id",
    ["has space", "dot.ted", "", "x" * 65, "caf\u00e9", "slash/y", "trailing-newline\n"],
)
def test_invalid_ids(bad_id: str) -> None:
    issue = one_issue(doc([node(bad_id, "const", value=1)]))
    assert issue.location == "nodes[0].id"
    assert f"node id '{bad_id}'" in issue.message
    assert "[A-Za-z0-9_-]{1,64}" in issue.message


def test_longest_valid_id_and_all_allowed_characters() -> None:
    long_id = "a" * 64
    f = flow([node(long_id, "const", value=1), node("Az09_-", "const", value=2)])
    assert list(f.nodes) == [long_id, "Az09_-"]


# -- edges -----------------------------------------------------------------------------


def test_cycle_message_lists_the_path() -> None:
    nodes = [node("d1", "delay", ms=0), node("d2", "delay", ms=0), node("d3", "delay", ms=0)]
    edges = [
        edge("d1.value", "d2.value"),
        edge("d2.value", "d3.value"),
        edge("d3.value", "d1.value"),
    ]
    issue = one_issue(doc(nodes, edges))
    assert issue.location == "edges"
    assert issue.message == "flow has a cycle: d1 -> d2 -> d3 -> d1"


def test_cycle_through_the_error_port_is_a_cycle() -> None:
    nodes = [node("d1", "delay", ms=0), node("d2", "delay", ms=0)]
    issue = one_issue(doc(nodes, [edge("d1.value", "d2.value"), edge("d2.error", "d1.value")]))
    assert issue.message == "flow has a cycle: d1 -> d2 -> d1"


def test_self_loop_is_rejected() -> None:
    issue = one_issue(doc([node("d", "delay", ms=0)], [edge("d.value", "d.value")]))
    assert issue.location == "edges[0]"
    assert "node 'd' is connected to itself" in issue.message


def test_input_port_fed_twice() -> None:
    nodes = [
        node("c1", "const", value=1),
        node("c2", "const", value=2),
        node("m", "math", op="add", b=1),
    ]
    issue = one_issue(doc(nodes, [edge("c1.value", "m.a"), edge("c2.value", "m.a")]))
    assert issue.location == "edges[1].to"
    assert "input port 'm.a' is fed by more than one edge" in issue.message


def test_output_port_may_feed_many_inputs() -> None:
    f = flow(
        [node("c", "const", value=3), node("m", "math", op="mul")],
        [edge("c.value", "m.a"), edge("c.value", "m.b")],
    )
    assert [e.target_port for e in f.outgoing("c")] == ["a", "b"]


def test_malformed_edge_ref_without_a_dot() -> None:
    issue = one_issue(doc(const_and_delay(), [edge("c", "d.value")]))
    assert issue.location == "edges[0].from"
    assert issue.message == "'c' must have the form 'nodeId.port'"


@pytest.mark.parametrize("ref", ["c.", ".value"])
def test_edge_ref_with_empty_node_or_port(ref: str) -> None:
    issue = one_issue(doc(const_and_delay(), [edge(ref, "d.value")]))
    assert issue.location == "edges[0].from"
    assert f"'{ref}' must have the form 'nodeId.port'" == issue.message


def test_edge_to_unknown_node() -> None:
    issue = one_issue(doc([node("c", "const", value=1)], [edge("c.value", "ghost.value")]))
    assert issue.location == "edges[0].to"
    assert "unknown node 'ghost'" in issue.message


def test_edge_from_unknown_node() -> None:
    issue = one_issue(doc(const_and_delay(), [edge("ghost.value", "d.value")]))
    assert issue.location == "edges[0].from"
    assert "unknown node 'ghost'" in issue.message


# -- required inputs -------------------------------------------------------------------


def test_required_input_neither_connected_nor_configured() -> None:
    nodes = [node("c", "const", value=1), node("m", "math", op="add")]
    issue = one_issue(doc(nodes, [edge("c.value", "m.a")]))
    assert issue.location == "nodes[1]"
    assert issue.message == "node 'm': required input 'b' is neither connected nor configured"


def test_required_input_configured_in_config_is_valid() -> None:
    f = flow(
        [node("c", "const", value=1), node("m", "math", op="add", b=5)],
        [edge("c.value", "m.a")],
    )
    m = f.nodes["m"]
    assert m.node_type.configured_inputs(m.config) == {"b": 5}
    assert set(f.incoming("m")) == {"a"}


def test_output_node_needs_its_value() -> None:
    issue = one_issue(doc([node("o", "output", name="x")]))
    assert issue.location == "nodes[0]"
    assert "node 'o': required input 'value'" in issue.message


def test_optional_inputs_may_stay_unconnected() -> None:
    f = flow(
        [node("d", "delay", ms=0), node("f", "fail", message="m"), node("e", "emit", event="x")]
    )
    assert all(f.incoming(n) == {} for n in f.nodes)


# -- config schemas --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("type_", "config", "location", "message_part"),
    [
        ("math", {"op": "pow"}, "nodes[0].config.op", "'add', 'sub', 'mul' or 'div'"),
        ("math", {}, "nodes[0].config.op", "Field required"),
        ("math", {"op": "add", "a": "1", "b": 2}, "nodes[0].config.a", "valid"),
        ("math", {"op": "add", "a": True, "b": 2}, "nodes[0].config.a", "valid"),
        ("delay", {"ms": -1}, "nodes[0].config.ms", "greater than or equal to 0"),
        ("const", {"value": 1, "bogus": 2}, "nodes[0].config.bogus", "Extra inputs"),
        ("fail", {"message": ""}, "nodes[0].config.message", "at least 1 character"),
        ("output", {}, "nodes[0].config.name", "Field required"),
        ("emit", {"event": ""}, "nodes[0].config.event", "at least 1 character"),
        ("const", {}, "nodes[0].config.value", "Field required"),
    ],
)
def test_config_failing_the_schema(
    type_: str, config: dict[str, Any], location: str, message_part: str
) -> None:
    issues = issues_of(doc([{"id": "n", "type": type_, "config": config}]))
    # a union field (math a/b: int or float) reports one issue per member: `...config.a.int`
    schema_issues = [i for i in issues if i.location.startswith(location)]
    assert schema_issues, issues
    assert all(i.message.startswith("node 'n': ") for i in schema_issues)
    assert any(message_part in i.message for i in schema_issues), schema_issues


@pytest.mark.parametrize(
    ("template", "named", "problem"),
    [
        ("{a.b}", "{a.b}", "no attribute or index access"),
        ("x {a[0]}", "{a[0]}", "no attribute or index access"),
        ("{0}", "{0}", "no positional fields"),
        ("{}", "{}", "no positional fields"),
        ("hi {a!r}", "{a}", "must not have a format spec or conversion"),
        ("{a:>5}", "{a}", "must not have a format spec or conversion"),
    ],
)
def test_template_placeholder_must_be_a_plain_name(template: str, named: str, problem: str) -> None:
    issues = issues_of(doc([node("t", "template", template=template)]))
    located = [i for i in issues if i.location == "nodes[0].config"]
    assert len(located) == 1, issues
    assert located[0].message.startswith(f"node 't': placeholder '{named}' must")
    assert problem in located[0].message


def test_template_malformed_braces() -> None:
    issue = one_issue(doc([node("t", "template", template="oops {")]))
    assert issue.location == "nodes[0].config"
    assert "node 't': template is malformed" in issue.message


def test_template_values_key_that_is_not_a_placeholder() -> None:
    issue = one_issue(doc([node("t", "template", template="{a}", values={"a": 1, "zz": 2})]))
    assert issue.location == "nodes[0].config"
    assert issue.message == (
        "node 't': config.values has 'zz', which is not a placeholder of the template"
    )


def test_template_placeholders_become_required_inputs() -> None:
    nodes = [node("c", "const", value=1), node("t", "template", template="{a} {b} {a}")]
    issue = one_issue(doc(nodes, [edge("c.value", "t.a")]))
    assert issue.message == "node 't': required input 'b' is neither connected nor configured"
    f = flow(
        [node("c", "const", value=1), node("t", "template", template="{a} {b}", values={"b": 2})],
        [edge("c.value", "t.a")],
    )
    assert dict(f.nodes["t"].input_ports()) == {"a": True, "b": True}


# -- sizes -----------------------------------------------------------------------------


def test_more_than_max_nodes() -> None:
    nodes = [node(f"n{i}", "const", value=i) for i in range(MAX_NODES + 1)]
    issue = one_issue(doc(nodes))
    assert issue.location == "nodes"
    assert issue.message == "1001 nodes; the limit is 1000"


def test_exactly_max_nodes_is_valid() -> None:
    f = flow([node(f"n{i}", "const", value=i) for i in range(MAX_NODES)])
    assert len(f.nodes) == 1000


def test_more_than_max_edges() -> None:
    edges = [edge("c.value", f"o{i}.value") for i in range(MAX_EDGES + 1)]
    issue = one_issue(doc([node("c", "const", value=1)], edges))
    assert issue.location == "edges"
    assert issue.message == "5001 edges; the limit is 5000"


def test_exactly_max_edges_is_valid() -> None:
    ports = [f"p{j}" for j in range(10)]
    template = " ".join("{" + p + "}" for p in ports)
    nodes = [node("c", "const", value=1)]
    edges: list[dict[str, str]] = []
    for i in range(MAX_EDGES // len(ports)):
        nodes.append(node(f"t{i}", "template", template=template))
        edges += [edge("c.value", f"t{i}.{p}") for p in ports]
    f = flow(nodes, edges)
    assert len(f.edges) == 5000


def _body_of_size(size: int) -> str:
    """A valid flow document whose UTF-8 encoding is exactly `size` bytes."""
    base = json.dumps(doc([node("c", "const", value="")]))
    padding = size - len(base.encode())
    return json.dumps(doc([node("c", "const", value="x" * padding)]))


def test_body_over_one_mebibyte() -> None:
    raw = _body_of_size(MAX_FLOW_BYTES + 1)
    issue = parse_issue(raw)
    assert issue.location == ""
    assert issue.message == f"flow body is {MAX_FLOW_BYTES + 1} bytes; the limit is 1048576 (1 MiB)"
    assert parse_issue(raw.encode()).message == issue.message


def test_body_of_exactly_one_mebibyte_is_valid() -> None:
    raw = _body_of_size(MAX_FLOW_BYTES)
    assert len(raw.encode()) == MAX_FLOW_BYTES
    assert parse_flow_json(raw, REGISTRY).nodes["c"].type == "const"


def test_body_size_counts_utf8_bytes_not_characters() -> None:
    raw = json.dumps(
        doc([node("c", "const", value="\u00e9" * (MAX_FLOW_BYTES // 2))]), ensure_ascii=False
    )
    assert len(raw) < MAX_FLOW_BYTES < len(raw.encode())
    assert "the limit is 1048576" in parse_issue(raw).message


@pytest.mark.parametrize("raw", ["{nope", "", b"\xff\xfe{", '{"name": "f", "nodes": []'])
def test_invalid_json(raw: str | bytes) -> None:
    issue = parse_issue(raw)
    assert issue.location == ""
    assert issue.message.startswith("flow is not valid JSON")


@pytest.mark.parametrize("constant", ["NaN", "Infinity", "-Infinity"])
def test_non_standard_json_constants_are_rejected(constant: str) -> None:
    raw = '{"name": "f", "nodes": [{"id": "c", "type": "const", "config": {"value": %s}}]}'
    issue = parse_issue(raw % constant)
    assert issue.message.startswith("flow is not valid JSON")
    assert constant in issue.message


def test_parse_flow_json_valid() -> None:
    f = parse_flow_json(json.dumps(doc(const_and_delay(), [edge("c.value", "d.value")])), REGISTRY)
    assert list(f.nodes) == ["c", "d"]


# -- document shape --------------------------------------------------------------------


def test_document_shape_errors_name_the_field() -> None:
    issues = issues_of({"nodes": [{"id": "a", "type": "const", "extra": 1}], "bogus": True})
    locations = {i.location for i in issues}
    assert {"name", "nodes[0].extra", "bogus"} <= locations


def test_document_must_be_an_object() -> None:
    issue = one_issue([1, 2])
    assert "dictionary" in issue.message


def test_edge_needs_from_and_to() -> None:
    issues = issues_of(doc(const_and_delay(), [{"from": "c.value"}]))
    assert [i.location for i in issues] == ["edges[0].to"]


def test_several_problems_are_reported_at_once() -> None:
    nodes = [
        node("a", "const", value=1),
        node("a", "const", value=2),
        node("bad id", "const", value=3),
        node("x", "nope"),
        node("m", "math", op="pow"),
        node("o", "output", name="out"),
        node("t", "template", template="{a.b}"),
    ]
    edges = [edge("a.nope", "o.value"), edge("a", "o.value"), edge("a.value", "ghost.value")]
    issues = issues_of(doc(nodes, edges))
    by_location = {i.location: i.message for i in issues}
    assert by_location["nodes[1].id"] == "duplicate node id 'a'"
    assert "node id 'bad id'" in by_location["nodes[2].id"]
    assert "unknown node type 'nope'" in by_location["nodes[3].type"]
    assert "node 'm'" in by_location["nodes[4].config.op"]
    assert "placeholder '{a.b}'" in by_location["nodes[6].config"]
    assert "no output port 'nope'" in by_location["edges[0].from"]
    assert "must have the form" in by_location["edges[1].from"]
    assert "unknown node 'ghost'" in by_location["edges[2].to"]
    assert "required input 'value'" in by_location["nodes[5]"]
    assert len(issues) == 9, issues
    with pytest.raises(FlowValidationError) as caught:
        validate_flow(doc(nodes, edges), REGISTRY)
    assert "nodes[1].id: duplicate node id 'a'" in str(caught.value)


# -- options ---------------------------------------------------------------------------


def _options_flow() -> Flow:
    return flow(
        [
            node("c", "const", value=1),
            node("m", "math", op="add", b=1),
            node("o", "output", name="r"),
        ],
        [edge("c.value", "m.a"), edge("m.result", "o.value")],
    )


def test_check_options_accepts_real_nodes() -> None:
    check_options(_options_flow(), ExecutionOptions(breakpoints=["m", "o"], inputs={"c": 7}))


def test_breakpoint_naming_unknown_node() -> None:
    with pytest.raises(FlowValidationError) as caught:
        check_options(_options_flow(), ExecutionOptions(breakpoints=["m", "zz"]))
    assert caught.value.issues == [
        Issue("options.breakpoints[1]", "breakpoint names unknown node 'zz'")
    ]


def test_inputs_naming_non_const_or_unknown_node() -> None:
    with pytest.raises(FlowValidationError) as caught:
        check_options(_options_flow(), ExecutionOptions(inputs={"c": 1, "m": 2, "ghost": 3}))
    assert caught.value.issues == [
        Issue("options.inputs.m", "inputs may only set const nodes; 'm' is a 'math' node"),
        Issue(
            "options.inputs.ghost",
            "inputs may only set const nodes; 'ghost' is not a node of this flow",
        ),
    ]


# -- the validated model ---------------------------------------------------------------


def test_valid_flow_exposes_declaration_order_and_adjacency() -> None:
    f = flow(
        [
            node("out", "output", name="sum"),
            node("m", "math", op="add"),
            node("b", "const", value=2),
            node("a", "const", value=1),
        ],
        [edge("a.value", "m.a"), edge("b.value", "m.b"), edge("m.result", "out.value")],
    )
    assert f.name == "f"
    assert list(f.nodes) == ["out", "m", "b", "a"]
    assert [n.index for n in f.nodes.values()] == [0, 1, 2, 3]
    assert f.incoming("m") == {
        "a": FlowEdge("a", "value", "m", "a"),
        "b": FlowEdge("b", "value", "m", "b"),
    }
    assert f.incoming("a") == {}
    assert f.outgoing("a") == (FlowEdge("a", "value", "m", "a"),)
    assert f.outgoing("m") == (FlowEdge("m", "result", "out", "value"),)
    assert f.outgoing("out") == ()
    assert f.downstream({"a"}) == {"m", "out"}
    assert f.upstream({"out"}) == {"m", "a", "b"}
    assert f.definition["edges"][0] == {"from": "a.value", "to": "m.a"}
    assert f.nodes["m"].output_ports() == ("result", "error")
