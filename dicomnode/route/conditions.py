"""The condition language of routing rules: pydantic models (``extra="forbid"``, so a typo is named).

A condition is a mapping with exactly one of these keys (see README "Routing rules" for the semantics)::

    tag               an attribute test: {tag: PATH, <operator>: VALUE, scope: first|any|all, ignore_case}
    all / any / not   combinators
    calling_ae        the calling AE title of the association that delivered the series (a value test)
    called_ae         the AE title the sender called us by (a value test)
    instances         number of instances of the series (study rules: of the study): {min, max, equals}
    series_in_study   number of series of the study: {min, max, equals}
    time              when the series was received: {between: ["18:00", "07:00"], days: [sat, sun]}
    study_has_series  some series of the same study satisfies the nested condition
"""

from __future__ import annotations

import re
from datetime import time
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    PrivateAttr,
    StrictFloat,
    StrictInt,
    StrictStr,
    Tag,
    field_validator,
    model_validator,
)

from dicomnode.route.paths import AttributePath, parse_path

Scalar = StrictStr | StrictInt | StrictFloat
Number = StrictInt | StrictFloat
OPERATORS = (
    "equals", "in", "regex", "range", "contains", "exists", "missing", "empty", "gt", "ge", "lt", "le",
)
KINDS = (
    "tag", "all", "any", "not", "calling_ae", "called_ae", "instances", "series_in_study", "time",
    "study_has_series",
)
WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
_HHMM = re.compile(r"^([01]?\d|2[0-3]):([0-5]\d)$")


class _Strict(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True)


class ValueTest(_Strict):
    """Exactly one operator applied to a value (an attribute's values, or an AE title)."""

    equals: Scalar | list[Scalar] | None = None
    in_: list[Scalar] | None = Field(None, alias="in", min_length=1)
    regex: StrictStr | None = None
    range: tuple[Number | None, Number | None] | None = None
    contains: Scalar | list[Scalar] | None = None
    exists: bool | None = None
    missing: bool | None = None
    empty: bool | None = None
    gt: Number | None = None
    ge: Number | None = None
    lt: Number | None = None
    le: Number | None = None
    ignore_case: bool = False
    _pattern: re.Pattern[str] | None = PrivateAttr(None)
    _op: str = PrivateAttr("")
    _operand: Any = PrivateAttr(None)
    _matcher: Any = PrivateAttr(None)

    @model_validator(mode="after")
    def _one_operator(self) -> ValueTest:
        given = [name for name in OPERATORS if getattr(self, "in_" if name == "in" else name) is not None]
        if len(given) != 1:
            what = "none" if not given else ", ".join(given)
            raise ValueError(
                f"a value test needs exactly one operator of {', '.join(OPERATORS)} (got {what})"
            )
        self._op = given[0]
        self._operand = getattr(self, "in_" if self._op == "in" else self._op)
        if self.regex is not None:
            try:
                self._pattern = re.compile(self.regex, re.IGNORECASE if self.ignore_case else 0)
            except re.error as exc:
                raise ValueError(f"regex '{self.regex}' is not a valid regular expression: {exc}") from None
        if self.range is not None:
            low, high = self.range
            if low is None and high is None:
                raise ValueError("range needs at least one bound: [low, high], [low, null] or [null, high]")
            if low is not None and high is not None and low > high:
                raise ValueError(f"range [{low}, {high}] is empty: the low bound is above the high bound")
        from dicomnode.route.operators import Matcher

        self._matcher = Matcher(self._op, self._operand, self.ignore_case, self._pattern)
        return self

    @property
    def matcher(self) -> Any:
        """The compiled test: ``matcher(value) -> bool`` (see :mod:`dicomnode.route.operators`)."""
        return self._matcher

    @property
    def operator(self) -> str:
        return self._op

    @property
    def operand(self) -> Any:
        return self._operand

    @property
    def pattern(self) -> re.Pattern[str] | None:
        return self._pattern


class TagCondition(ValueTest):
    tag: StrictStr
    scope: Literal["first", "any", "all"] = "first"
    _path: AttributePath | None = PrivateAttr(None)

    @field_validator("tag")
    @classmethod
    def _valid_path(cls, value: str) -> str:
        parse_path(value)
        return value

    def model_post_init(self, context: Any) -> None:
        self._path = parse_path(self.tag)

    @property
    def path(self) -> AttributePath:
        assert self._path is not None
        return self._path


class CountRange(_Strict):
    min: StrictInt | None = Field(None, ge=0)
    max: StrictInt | None = Field(None, ge=0)
    equals: StrictInt | None = Field(None, ge=0)

    @model_validator(mode="after")
    def _bounds(self) -> CountRange:
        if self.min is None and self.max is None and self.equals is None:
            raise ValueError("a count needs min, max or equals")
        if self.equals is not None and (self.min is not None or self.max is not None):
            raise ValueError("a count takes either equals or min/max, not both")
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"min {self.min} is above max {self.max}")
        return self

    def holds(self, count: int) -> bool:
        if self.equals is not None:
            return count == self.equals
        return (self.min is None or count >= self.min) and (self.max is None or count <= self.max)

    def describe(self) -> str:
        if self.equals is not None:
            return f"= {self.equals}"
        parts = ([f">= {self.min}"] if self.min is not None else []) + (
            [f"<= {self.max}"] if self.max is not None else []
        )
        return " and ".join(parts)


def _clock(text: str) -> time:
    match = _HHMM.match(text.strip()) if isinstance(text, str) else None
    if not match:
        raise ValueError(f"'{text}' is not a time of day HH:MM (quote it in YAML: \"07:00\")")
    return time(int(match[1]), int(match[2]))


class TimeWindow(_Strict):
    between: tuple[StrictStr, StrictStr] | None = None
    days: list[Literal["mon", "tue", "wed", "thu", "fri", "sat", "sun"]] | None = Field(None, min_length=1)

    @model_validator(mode="after")
    def _check(self) -> TimeWindow:
        if self.between is None and self.days is None:
            raise ValueError("a time condition needs between: [HH:MM, HH:MM] and/or days: [mon, ...]")
        if self.between is not None:
            _clock(self.between[0])
            _clock(self.between[1])
        return self

    def holds(self, at: Any) -> bool:
        if self.days is not None and WEEKDAYS[at.weekday()] not in self.days:
            return False
        if self.between is None:
            return True
        start, end, now = _clock(self.between[0]), _clock(self.between[1]), at.time()
        if start <= end:
            return start <= now < end
        return now >= start or now < end  # the window spans midnight


class CallingAECondition(_Strict):
    calling_ae: ValueTest | StrictStr


class CalledAECondition(_Strict):
    called_ae: ValueTest | StrictStr


class InstancesCondition(_Strict):
    instances: CountRange


class SeriesInStudyCondition(_Strict):
    series_in_study: CountRange


class TimeCondition(_Strict):
    time: TimeWindow


class StudyHasSeriesCondition(_Strict):
    study_has_series: Condition


class AllCondition(_Strict):
    all: list[Condition] = Field(min_length=1)


class AnyCondition(_Strict):
    any: list[Condition] = Field(min_length=1)


class NotCondition(_Strict):
    not_: Condition = Field(alias="not")


_MODEL_KIND: dict[type, str] = {}


def _kind(value: Any) -> str | None:
    if isinstance(value, dict):
        found = [key for key in KINDS if key in value]
        return found[0] if len(found) == 1 else None
    return _MODEL_KIND.get(type(value))


Condition = Annotated[
    Annotated[TagCondition, Tag("tag")]
    | Annotated[AllCondition, Tag("all")]
    | Annotated[AnyCondition, Tag("any")]
    | Annotated[NotCondition, Tag("not")]
    | Annotated[CallingAECondition, Tag("calling_ae")]
    | Annotated[CalledAECondition, Tag("called_ae")]
    | Annotated[InstancesCondition, Tag("instances")]
    | Annotated[SeriesInStudyCondition, Tag("series_in_study")]
    | Annotated[TimeCondition, Tag("time")]
    | Annotated[StudyHasSeriesCondition, Tag("study_has_series")],
    Discriminator(
        _kind,
        custom_error_type="condition_kind",
        custom_error_message="a condition must be a mapping with exactly one of the keys " + ", ".join(KINDS),
    ),
]

_MODEL_KIND.update({
    TagCondition: "tag", AllCondition: "all", AnyCondition: "any", NotCondition: "not",
    CallingAECondition: "calling_ae", CalledAECondition: "called_ae", InstancesCondition: "instances",
    SeriesInStudyCondition: "series_in_study", TimeCondition: "time",
    StudyHasSeriesCondition: "study_has_series",
})

for _model in (StudyHasSeriesCondition, AllCondition, AnyCondition, NotCondition):
    _model.model_rebuild()
