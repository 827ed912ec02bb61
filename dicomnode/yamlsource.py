"""Reading the node's YAML files (rules, pipelines) with line numbers, validated by strict pydantic models,
so every problem names the file, the line, the key and the reason.

:class:`LineLoader` is a ``yaml.SafeLoader`` that builds :class:`LineDict`/:class:`LineList` (plain
``dict``/``list`` subclasses) remembering the line of each key and item. It also follows YAML 1.2 for
scalars administrators write: only ``true``/``false`` are booleans (so ``equals: NO`` stays the DICOM
code string ``NO``), ``18:00`` is a string, not a sexagesimal integer, and dates stay strings.

:func:`field_problems` turns a pydantic ``ValidationError`` into :class:`FieldProblem` s — the key path as
the author wrote it, its line and a reason — deciding from pydantic's error *types* and their context
(``err["type"]``, ``err["ctx"]``), which are pydantic's stable interface, never from its English messages.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import yaml
from pydantic import ValidationError
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


def yaml_problem(exc: yaml.YAMLError) -> tuple[int | None, str]:
    """The line (1-based, when known) and the text of a YAML syntax error."""
    mark = getattr(exc, "problem_mark", None)
    problem = getattr(exc, "problem", None) or str(exc)
    return (mark.line + 1 if mark else None), f"invalid YAML: {problem}"


@dataclass(frozen=True)
class FieldProblem:
    """One invalid key of a YAML document: its path (``then.quiet_seconds``, ``steps[2].window``), line
    and reason."""

    key: str
    line: int | None
    reason: str

    def __str__(self) -> str:
        return f"{self.key}: {self.reason}" if self.key else self.reason


# pydantic error type -> what the value should be (phrases joined when a union's members all fail)
_SHOULD_BE = {
    "string_type": "text",
    "int_type": "a whole number",
    "int_parsing": "a whole number",
    "int_from_float": "a whole number",
    "float_type": "a number",
    "float_parsing": "a number",
    "bool_type": "true or false",
    "bool_parsing": "true or false",
    "list_type": "a list",
    "tuple_type": "a list",
    "set_type": "a list",
    "dict_type": "a mapping",
    "model_type": "a mapping",
    "model_attributes_type": "a mapping",
    "none_required": "null",
}
# pydantic error type -> a reason built from the error's context
_BOUNDS = {
    "greater_than": "should be greater than {gt}",
    "greater_than_equal": "should be at least {ge}",
    "less_than": "should be less than {lt}",
    "less_than_equal": "should be at most {le}",
    "too_short": "should have at least {min_length} item(s)",
    "too_long": "should have at most {max_length} item(s)",
    "string_too_short": "should have at least {min_length} character(s)",
    "string_too_long": "should have at most {max_length} character(s)",
    "string_pattern_mismatch": "should match the pattern {pattern}",
    "literal_error": "should be {expected}",
    "enum": "should be {expected}",
}


def _reason(errors: Sequence[Any], unknown_key_hint: str) -> str:
    """One reason for the errors pydantic reported at one key (several when a union's members all fail)."""
    first = errors[0]
    kind = first["type"]
    if kind == "extra_forbidden":
        return f"unknown key '{first['loc'][-1]}'{unknown_key_hint}"
    if kind == "missing":
        return f"'{first['loc'][-1]}' is required"
    wanted: list[str] = []
    others: list[str] = []
    for error in errors:
        ctx = error.get("ctx") or {}
        if error["type"] in ("value_error", "assertion_error") and "error" in ctx:
            text = str(ctx["error"])  # the validator's own sentence
        elif error["type"] in _SHOULD_BE:
            phrase = _SHOULD_BE[error["type"]]
            if phrase not in wanted:
                wanted.append(phrase)
            continue
        elif error["type"] in _BOUNDS:
            shown = {k: f"{v:g}" if isinstance(v, float) else v for k, v in ctx.items()}
            text = _BOUNDS[error["type"]].format(**shown)
        else:  # a custom error type (ours) or one not listed: pydantic's message as it is
            text = str(error["msg"])
        if text not in others:
            others.append(text)
    parts = others + ([_join_should_be(wanted)] if wanted else [])
    text = " or ".join(parts)
    value = first.get("input")
    if kind not in ("value_error", "assertion_error") and not isinstance(value, dict):
        text += f" (got {value!r})"  # a mapping is shown by its own keys' problems
    return text


def _join_should_be(phrases: list[str]) -> str:
    if "a number" in phrases and "a whole number" in phrases:
        phrases = [p for p in phrases if p != "a whole number"]
    if len(phrases) == 1:
        return f"should be {phrases[0]}"
    return f"should be {', '.join(phrases[:-1])} or {phrases[-1]}"


def _descends(node: Any, part: Any) -> bool:  # noqa: ANN401 - YAML data
    if isinstance(node, dict):
        return part in node
    return isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node)


def locate(data: Any, loc: Sequence[int | str], missing: bool = False) -> tuple[str, int | None]:  # noqa: ANN401
    """The key path of a pydantic error location as the author wrote it, and its line.

    The location is walked along the data: a part the data does not have is a union member's tag that
    pydantic adds (``str``, a discriminator value, a model name) and is left out — except a missing key
    (``missing``), which ends the path."""
    out = ""
    node = data
    line = getattr(data, "line", None)
    for i, part in enumerate(loc):
        following = loc[i + 1] if i + 1 < len(loc) else None
        if isinstance(node, dict) and part in node:
            child = node[part]
            if following is not None and not _descends(child, following) and following in node:
                continue  # a discriminator tag equal to a key of the same mapping ('tag' in {tag: ...})
            out += f".{part}" if out else str(part)
            line = node.key_lines.get(part, line) if isinstance(node, LineDict) else line
            node = child
        elif isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node):
            out += f"[{part}]"
            line = node.item_lines[part] if isinstance(node, LineList) else line
            node = node[part]
        elif missing and following is None and isinstance(node, dict):
            out += f".{part}" if out else str(part)
    return out, line


def field_problems(exc: ValidationError, data: Any, unknown_key_hint: str = "") -> list[FieldProblem]:  # noqa: ANN401
    """The problems of a validation error of ``data`` (parsed by :func:`load_yaml`), one per key."""
    grouped: dict[str, list[Any]] = {}
    lines: dict[str, int | None] = {}
    for error in exc.errors():
        key, line = locate(data, error["loc"], missing=error["type"] == "missing")
        grouped.setdefault(key, []).append(error)
        lines.setdefault(key, line)
    return [
        FieldProblem(key, lines[key], _reason(errors, unknown_key_hint)) for key, errors in grouped.items()
    ]
