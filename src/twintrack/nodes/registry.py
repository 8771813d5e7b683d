"""The catalog of node types: built-ins plus plugins from the `twintrack.nodes` entry points."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from importlib.metadata import entry_points

from twintrack.nodes.base import NodeType
from twintrack.nodes.builtin import BUILTIN_NODE_TYPES

ENTRY_POINT_GROUP = "twintrack.nodes"


class PluginError(Exception):
    """A plugin could not be loaded or clashes with an existing type name."""


class NodeRegistry:
    """Maps type names to node type instances. Built once per process and shared."""

    def __init__(self, types: Iterable[NodeType] = ()) -> None:
        self._types: dict[str, NodeType] = {}
        for node_type in types:
            self.register(node_type)

    def register(self, node_type: NodeType) -> None:
        name = getattr(node_type, "type_name", None)
        if not isinstance(name, str) or not name:
            raise PluginError(f"{type(node_type).__name__} has no type_name")
        if name in self._types:
            raise PluginError(f"node type '{name}' is already registered")
        self._types[name] = node_type

    def get(self, type_name: str) -> NodeType | None:
        return self._types.get(type_name)

    def names(self) -> list[str]:
        return sorted(self._types)

    def __iter__(self) -> Iterator[NodeType]:
        return iter(self._types.values())

    def load_plugins(self, group: str = ENTRY_POINT_GROUP) -> None:
        """Register every entry point of `group`; each must name a NodeType subclass."""
        for ep in entry_points(group=group):
            try:
                obj = ep.load()
            except Exception as exc:
                raise PluginError(
                    f"node plugin '{ep.name}' ({ep.value}) failed to load: {exc}"
                ) from exc
            if not (isinstance(obj, type) and issubclass(obj, NodeType)):
                raise PluginError(
                    f"node plugin '{ep.name}' ({ep.value}) is not a NodeType subclass"
                )
            self.register(obj())


def builtin_registry() -> NodeRegistry:
    return NodeRegistry(cls() for cls in BUILTIN_NODE_TYPES)


def default_registry() -> NodeRegistry:
    """Built-ins plus installed plugins."""
    registry = builtin_registry()
    registry.load_plugins()
    return registry
