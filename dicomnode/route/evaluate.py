"""Evaluating conditions and rule sets against a series (no eval: the models are interpreted).

Multi-instance semantics of an attribute test (``tag``):

* ``scope: first`` (default): the value of the first instance (lowest InstanceNumber) decides;
* ``scope: any``: the test holds if it holds for at least one instance;
* ``scope: all``: the test holds if it holds for every instance (false for a series without instances).

Every evaluation can produce an :class:`Explanation` tree saying which condition held or failed and why.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime

from dicomnode.route.conditions import (
    AllCondition,
    AnyCondition,
    CalledAECondition,
    CallingAECondition,
    InstancesCondition,
    NotCondition,
    SeriesInStudyCondition,
    StudyHasSeriesCondition,
    TagCondition,
    TimeCondition,
    ValueTest,
)
from dicomnode.route.headers import SeriesView
from dicomnode.route.operators import describe_test, show_value, value_holds
from dicomnode.route.rules import Rule


@dataclass
class Explanation:
    held: bool
    text: str
    children: list[Explanation] = field(default_factory=list)

    def lines(self, indent: int = 0) -> list[str]:
        mark = "✓" if self.held else "✗"
        out = [f"{'  ' * indent}{mark} {self.text}"]
        for child in self.children:
            out.extend(child.lines(indent + 1))
        return out

    def failed_leaves(self) -> list[str]:
        if not self.children:
            return [] if self.held else [self.text]
        return [text for child in self.children for text in child.failed_leaves()]


@dataclass
class EvalContext:
    """What conditions can look at besides the attributes of the subject series."""

    subject: SeriesView  # the series (series rules) or all instances of the study (study rules)
    series_in_study: int = 1
    calling_ae: str | None = None
    called_ae: str | None = None
    received_at: datetime = field(default_factory=datetime.now)  # local time
    study_series: Callable[[], Sequence[SeriesView]] | None = None  # the study's series, loaded on demand
    own_output: str | None = None  # why the subject is the node's own output (route.ownership), or None
    _study_cache: Sequence[SeriesView] | None = field(default=None, repr=False)

    def series_of_study(self) -> Sequence[SeriesView]:
        if self._study_cache is None:
            self._study_cache = list(self.study_series()) if self.study_series else [self.subject]
        return self._study_cache

    def for_series(self, view: SeriesView) -> EvalContext:
        ctx = EvalContext(
            view, self.series_in_study, self.calling_ae, self.called_ae, self.received_at, self.study_series
        )  # own_output is the subject's, not the other series'

        ctx._study_cache = self._study_cache
        return ctx


Result = tuple[bool, Explanation | None]


def _ae(name: str, test: ValueTest | str, value: str | None, explain: bool) -> Result:
    if isinstance(test, str):
        held = value is not None and value.strip() == test.strip()
        what = f"equals {test!r}"
    else:
        held = value_holds(test, None if value is None else (value.strip(),))
        what = describe_test(test)
    shown = "unknown" if value is None else repr(value)
    return held, (Explanation(held, f"{name} {what} (is {shown})") if explain else None)


_BOUNDED = ("gt", "ge", "lt", "le")


def _bounded(op: str, x: float, scope: str, bounds: tuple[bool, float, float, float, float] | None) -> bool:
    """A numeric comparison over all instances from the per-path bounds (see SeriesView.numeric_bounds)."""
    if bounds is None:
        return False
    every, min_largest, max_largest, min_smallest, max_smallest = bounds
    if scope == "all" and not every:
        return False
    largest = min_largest if scope == "all" else max_largest  # the instance least/most likely to pass
    smallest = max_smallest if scope == "all" else min_smallest
    return {"gt": largest > x, "ge": largest >= x, "lt": smallest < x, "le": smallest <= x}[op]


def _tag(cond: TagCondition, ctx: EvalContext, explain: bool) -> Result:
    matcher, path, subject = cond.matcher, cond.path, ctx.subject
    if cond.scope == "first":
        first = subject.first_value(path)
        held = bool(subject.headers) and matcher(first)
        if not explain:
            return held, None
        shown = "no instances" if not subject.headers else show_value(first)
        return held, Explanation(held, f"{cond.tag} {describe_test(cond)} (first instance: {shown})")
    if not explain and matcher.op in _BOUNDED:
        return _bounded(matcher.op, matcher.operand, cond.scope, subject.numeric_bounds(path)), None
    distinct = subject.distinct_values(path)
    if not explain:
        if cond.scope == "any":
            return any(matcher(v) for v in distinct), None
        return bool(distinct) and all(matcher(v) for v in distinct), None
    outcomes = {value: matcher(value) for value in distinct}
    held = any(outcomes.values()) if cond.scope == "any" else bool(outcomes) and all(outcomes.values())
    values = subject.instance_values(path)
    count = sum(1 for v in values if outcomes[v])
    example = next((v for v in values if outcomes[v] != (cond.scope == "all")), values[0] if values else None)
    return held, Explanation(
        held,
        f"{cond.tag} {describe_test(cond)} for {cond.scope} instances: holds for {count} of {len(values)} "
        f"(e.g. {show_value(example)})",
    )


def evaluate(cond: object, ctx: EvalContext, explain: bool = False) -> Result:
    """Evaluate one condition model; the explanation is built only when ``explain`` is true."""
    if isinstance(cond, TagCondition):
        return _tag(cond, ctx, explain)
    if isinstance(cond, AllCondition | AnyCondition):
        parts = cond.all if isinstance(cond, AllCondition) else cond.any
        want_all = isinstance(cond, AllCondition)
        children: list[Explanation] = []
        held = want_all
        for part in parts:
            ok, why = evaluate(part, ctx, explain)
            if why is not None:
                children.append(why)
            if ok != want_all:
                held = ok
                if not explain:
                    break
        label = "all of" if want_all else "any of"
        return held, (Explanation(held, label, children) if explain else None)
    if isinstance(cond, NotCondition):
        ok, why = evaluate(cond.not_, ctx, explain)
        return (not ok), (Explanation(not ok, "not", [why]) if why is not None else None)
    if isinstance(cond, CallingAECondition):
        return _ae("calling AE", cond.calling_ae, ctx.calling_ae, explain)
    if isinstance(cond, CalledAECondition):
        return _ae("called AE", cond.called_ae, ctx.called_ae, explain)
    if isinstance(cond, InstancesCondition):
        count = ctx.subject.instance_count
        held = cond.instances.holds(count)
        text = f"instances {cond.instances.describe()} (has {count})"
        return held, (Explanation(held, text) if explain else None)
    if isinstance(cond, SeriesInStudyCondition):
        count = ctx.series_in_study
        held = cond.series_in_study.holds(count)
        text = f"series in study {cond.series_in_study.describe()} (has {count})"
        return held, (Explanation(held, text) if explain else None)
    if isinstance(cond, TimeCondition):
        held = cond.time.holds(ctx.received_at)
        window = []
        if cond.time.between:
            window.append(f"between {cond.time.between[0]} and {cond.time.between[1]}")
        if cond.time.days:
            window.append("on " + ", ".join(cond.time.days))
        text = f"received {' '.join(window)} (at {ctx.received_at:%a %H:%M})"
        return held, (Explanation(held, text) if explain else None)
    if isinstance(cond, StudyHasSeriesCondition):
        series = ctx.series_of_study()
        for view in series:
            ok, _ = evaluate(cond.study_has_series, ctx.for_series(view))
            if ok:
                text = f"study has a series matching: {view.describe()}"
                return True, (Explanation(True, text) if explain else None)
        if not explain:
            return False, None
        why = [evaluate(cond.study_has_series, ctx.for_series(v), True)[1] for v in series[:5]]
        return False, Explanation(
            False, f"study has no matching series ({len(series)} checked)", [w for w in why if w]
        )
    raise TypeError(f"Unknown condition {type(cond).__name__}.")


def rule_holds(rule: Rule, ctx: EvalContext, explain: bool = False) -> Result:
    if rule.when is None:
        return True, (Explanation(True, "no conditions (always)") if explain else None)
    return evaluate(rule.when, ctx, explain)
