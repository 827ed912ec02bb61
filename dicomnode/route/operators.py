"""The operators of value tests, applied to one value (a tuple of atoms, or ``None`` when absent).

* ``exists: true`` — the attribute is present (even without a value); ``missing: true`` — it is absent.
* ``empty: true`` — absent, or present with no value / only blank text.
* ``equals: X`` — exactly one value, equal to X; ``equals: [A, B]`` — the values are A, B in this order.
* ``in: [A, B]`` — some value is one of the list.
* ``contains: X`` — some value equals X (for multi-valued attributes such as ImageType);
  ``contains: [A, B]`` — every listed item is among the values.
* ``regex: P`` — some value matches P (``re.search``: anchor with ``^…$`` for a full match).
* ``range: [low, high]`` (inclusive, either bound may be ``null``), ``gt``/``ge``/``lt``/``le`` — some value
  is a number satisfying the comparison. Text that is not a number never satisfies a numeric test.

Comparing a number from the rule with a value compares numerically (``equals: 3`` matches DS ``"3.0"``);
text comparisons ignore leading/trailing blanks and are case-sensitive unless ``ignore_case: true``.
``exists``/``missing``/``empty`` with ``false`` negate. Every other operator is false on an absent value.
"""

from __future__ import annotations

import re
from typing import Any

from dicomnode.route.conditions import ValueTest
from dicomnode.route.paths import Atom, Value


def _number(atom: Any) -> float | None:
    if isinstance(atom, bool):
        return None
    if isinstance(atom, int | float):
        return float(atom)
    try:
        return float(str(atom).strip())
    except ValueError:
        return None


def _equal(atom: Atom, expected: Any, ignore_case: bool) -> bool:
    if isinstance(expected, int | float) or isinstance(atom, int | float):
        left, right = _number(atom), _number(expected)
        if left is not None and right is not None:
            return left == right
    left_text, right_text = str(atom).strip(), str(expected).strip()
    if ignore_case:
        return left_text.casefold() == right_text.casefold()
    return left_text == right_text


class Matcher:
    """A value test compiled to plain Python (built once per condition; called per distinct value)."""

    __slots__ = ("op", "operand", "icase", "pattern", "wanted")

    def __init__(self, op: str, operand: Any, icase: bool, pattern: re.Pattern[str] | None) -> None:
        self.op, self.operand, self.icase, self.pattern = op, operand, icase, pattern
        self.wanted = operand if isinstance(operand, list) else [operand]

    def __call__(self, value: Value | None) -> bool:
        op, operand, icase = self.op, self.operand, self.icase
        if op == "exists":
            return (value is not None) == operand
        if op == "missing":
            return (value is None) == operand
        if op == "empty":
            blank = value is None or all(str(atom).strip() == "" for atom in value)
            return blank == operand
        if not value:
            return False
        if op == "equals":
            if isinstance(operand, list):
                return len(value) == len(operand) and all(
                    _equal(a, e, icase) for a, e in zip(value, operand, strict=True)
                )
            return len(value) == 1 and _equal(value[0], operand, icase)
        if op == "in":
            return any(_equal(atom, item, icase) for atom in value for item in operand)
        if op == "contains":
            return all(any(_equal(atom, item, icase) for atom in value) for item in self.wanted)
        if op == "regex":
            search = self.pattern.search  # type: ignore[union-attr]
            return any(search(str(atom)) for atom in value)
        for atom in value:
            number = _number(atom)
            if number is None:
                continue
            if op == "range":
                low, high = operand
                if (low is None or number >= low) and (high is None or number <= high):
                    return True
            elif (
                (op == "gt" and number > operand)
                or (op == "ge" and number >= operand)
                or (op == "lt" and number < operand)
                or (op == "le" and number <= operand)
            ):
                return True
        return False


def value_holds(test: ValueTest, value: Value | None) -> bool:
    """Whether ``value`` satisfies ``test`` (see the module docstring)."""
    return test.matcher(value)


def describe_test(test: ValueTest) -> str:
    """``equals 'CT'``, ``in ['ABDOMEN', 'LIVER']``, ``range [0.5, 5.0]`` …"""
    op, operand = test.operator, test.operand
    if isinstance(operand, bool):
        text = f"{op}: {str(operand).lower()}"
    elif op == "regex":
        text = f"regex /{operand}/"
    else:
        text = f"{op} {operand!r}"
    return text + (" (ignoring case)" if test.ignore_case else "")


def show_value(value: Value | None, limit: int = 80) -> str:
    if value is None:
        return "absent"
    if not value:
        return "empty"
    text = repr(value[0]) if len(value) == 1 else "[" + ", ".join(repr(a) for a in value) + "]"
    return text if len(text) <= limit else text[: limit - 1] + "…"
