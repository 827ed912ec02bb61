"""Reading rule files with line numbers, so every error can name the file and line it comes from.

:class:`LineLoader` is a ``yaml.SafeLoader`` that builds :class:`LineDict`/:class:`LineList` (plain
``dict``/``list`` subclasses) remembering the line of each key and item. It also follows YAML 1.2 for
scalars administrators write in rules: only ``true``/``false`` are booleans (so ``equals: NO`` stays the
DICOM code string ``NO``), ``18:00`` is a string, not a sexagesimal integer, and dates stay strings.
"""

from __future__ import annotations

import re
from typing import Any

import yaml
from yaml.nodes import MappingNode, SequenceNode


class LineDict(dict):
    """A mapping from a YAML file; ``line`` is its own line, ``key_lines[key]`` the line of each key."""

    line: int = 0
    key_lines: dict[Any, int]


class LineList(list):
    """A sequence from a YAML file; ``line`` is its own line, ``item_lines[i]`` the line of each item."""

    line: int = 0
    item_lines: list[int]


_Base = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml's parser when available (≈10× faster)


class LineLoader(_Base):  # type: ignore[misc,valid-type]
    """Safe YAML loader recording 1-based line numbers (see the module docstring)."""

    yaml_implicit_resolvers: dict[str, list[tuple[str, re.Pattern[str]]]] = {}


def _resolvers() -> None:
    keep = ("tag:yaml.org,2002:null", "tag:yaml.org,2002:merge", "tag:yaml.org,2002:value")
    for first, entries in yaml.SafeLoader.yaml_implicit_resolvers.items():
        for tag, regexp in entries:
            if tag in keep:
                LineLoader.yaml_implicit_resolvers.setdefault(first, []).append((tag, regexp))
    LineLoader.add_implicit_resolver(
        "tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF")
    )
    LineLoader.add_implicit_resolver(
        "tag:yaml.org,2002:int", re.compile(r"^[-+]?(?:0|[1-9][0-9]*)$"), list("-+0123456789")
    )
    LineLoader.add_implicit_resolver(
        "tag:yaml.org,2002:float",
        re.compile(r"^[-+]?(?:[0-9]+\.[0-9]*|\.[0-9]+)(?:[eE][-+]?[0-9]+)?$|^[-+]?[0-9]+[eE][-+]?[0-9]+$"),
        list("-+0123456789."),
    )


_resolvers()


def _construct_mapping(loader: LineLoader, node: MappingNode) -> LineDict:
    loader.flatten_mapping(node)
    result = LineDict()
    result.line = node.start_mark.line + 1
    result.key_lines = {}
    for key_node, value_node in node.value:
        key = loader.construct_object(key_node, deep=True)
        if key in result:
            raise yaml.constructor.ConstructorError(
                "while constructing a mapping", node.start_mark,
                f"found duplicate key '{key}'", key_node.start_mark,
            )
        result[key] = loader.construct_object(value_node, deep=True)
        result.key_lines[key] = key_node.start_mark.line + 1
    return result


def _construct_sequence(loader: LineLoader, node: SequenceNode) -> LineList:
    result = LineList(loader.construct_object(child, deep=True) for child in node.value)
    result.line = node.start_mark.line + 1
    result.item_lines = [child.start_mark.line + 1 for child in node.value]
    return result


LineLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)
LineLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_SEQUENCE_TAG, _construct_sequence)


def load_yaml(text: str) -> Any:
    """Parse ``text``; raises ``yaml.YAMLError`` (with ``problem_mark``) on a syntax error."""
    return yaml.load(text, Loader=LineLoader)  # noqa: S506 - LineLoader is a SafeLoader
