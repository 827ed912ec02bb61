"""One pipeline file: strict pydantic models of its YAML, read through the node's YAML loader.

A pipeline file (the format is described in :mod:`dicomnode.pipelines.registry`) is read with
:func:`dicomnode.yamlsource.load_yaml` and validated by :class:`PipelineDoc` (``extra="forbid"`` at every
level: an unknown or misspelt key is refused), then its references are checked (a step's inputs must be
produced by an earlier step, a segment's ``from`` and ``enhanced`` must name a step). Every problem is a
:class:`PipelineIssue` naming ``file:line``, the key and the reason, as for rule files; all problems of a
file are reported together in a :class:`PipelineFileError`.

:func:`load_pipeline_file` reads one file from disk; :func:`parse_pipeline` validates YAML text.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictBool,
    StrictStr,
    StringConstraints,
    ValidationError,
    field_validator,
    model_validator,
)

from dicomnode.errors import PipelineError
from dicomnode.imaging.guards import Accepts
from dicomnode.yamlsource import LineDict, LineList, field_problems, load_yaml, yaml_problem

UNKNOWN_KEY_HINT = " (check the spelling; see README 'Pipelines')"


# ------------------------------------------------------------------------------------ what a file holds


@dataclass(frozen=True)
class StepSpec:
    id: str
    use: str
    inputs: tuple[str, ...] = ()
    keyword_inputs: tuple[tuple[str, str], ...] = ()
    params: Mapping[str, Any] = field(default_factory=dict)
    line: int = field(default=0, compare=False)  # where the step is declared in its file


@dataclass(frozen=True)
class SegmentSpec:
    source: str  # context name of a mask or label map on the source grid
    label: str  # "Liver", "Lesion {n}"
    structure: str
    color: tuple[int, int, int] = (255, 0, 0)
    category: str = "organ"
    value: int | None = None  # one label of a label map
    each: bool = False  # one segment per label value (lesions)
    required: bool = True  # an empty required segment fails the job
    on_qc_fail: str = "hold"  # "withhold": a failed verdict drops this segment instead of holding the result


@dataclass(frozen=True)
class WindowSpec:
    """One VOI window of the enhanced series (WindowCenter/Width + WindowCenterWidthExplanation)."""

    explanation: str
    center: float | None = None  # None: the median of ``organ`` in the enhanced image
    width: float | None = None  # None: 1.2x the 1-99 % range of ``organ``
    organ: str | None = None  # context name of a mask on the source grid


@dataclass(frozen=True)
class PipelineSpec:
    name: str
    version: str
    description: str
    steps: tuple[StepSpec, ...] = ()
    segments: tuple[SegmentSpec, ...] = ()
    modalities: tuple[str, ...] = ()
    window: tuple[float, float] | None = None  # (center, width)
    enhanced: str | None = None
    sr_features: tuple[str, ...] | None = None  # None = the result writer's default
    windows: tuple[WindowSpec, ...] = ()  # the enhanced series' windows, the default (organ) first
    enhanced_values: str = "quantitative"  # or "display" (outputs.api.ENHANCED_VALUES)
    accepts: Accepts = field(default_factory=Accepts)  # input guards, checked before any step runs
    source: str = field(default="", compare=False)  # the file it was read from
    site: bool = field(default=False, compare=False)  # from the site's pipelines folder (not shipped)

    def parameters(self) -> dict[str, Any]:
        """Every overridable parameter with its default, as ``<step id>.<param>``."""
        return {f"{s.id}.{k}": v for s in self.steps for k, v in s.params.items()}

    def with_params(self, overrides: Mapping[str, Any]) -> PipelineSpec:
        """A copy with ``<step id>.<param>`` overrides applied (PipelineError for unknown keys)."""
        if not overrides:
            return self
        by_id = {s.id: s for s in self.steps}
        params = {s.id: dict(s.params) for s in self.steps}
        for key, value in overrides.items():
            step_id, _, name = str(key).rpartition(".")
            if step_id not in by_id:
                valid = ", ".join(sorted(self.parameters())) or "none"
                raise PipelineError(
                    f"Unknown parameter '{key}' for pipeline '{self.name}'; expected <step>.<param>, one of: "
                    f"{valid}."
                )
            params[step_id][name] = value
        return replace(self, steps=tuple(replace(s, params=params[s.id]) for s in self.steps))


# --------------------------------------------------------------------------------- the YAML, validated


def _number_as_text(value: Any) -> Any:  # noqa: ANN401 - YAML scalar
    """``version: 1`` or ``1.0`` written without quotes is the text '1' / '1.0'."""
    return str(value) if isinstance(value, int | float) and not isinstance(value, bool) else value


def _none_as_empty(value: Any) -> Any:  # noqa: ANN401 - YAML value
    """``steps:`` with nothing after it is an empty list (as before the models were strict)."""
    return [] if value is None else value


Name = Annotated[StrictStr, StringConstraints(strip_whitespace=True, min_length=1)]
Text = Annotated[StrictStr, StringConstraints(strip_whitespace=True, min_length=1)]
Version = Annotated[Text, BeforeValidator(_number_as_text)]
Channel = Annotated[int, Field(ge=0, le=255, strict=True)]


class _Strict(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True)


class WindowDoc(_Strict):
    """The display window of the enhanced series."""

    center: float
    width: float = Field(gt=0)


class WindowsDoc(_Strict):
    """One of several windows: a fixed ``center``/``width``, or centred on an ``organ`` mask's median
    (``width`` omitted: 1.2x the organ's 1-99 % range); ``explanation`` names it (LIVER, ABDOMEN)."""

    explanation: Annotated[Text, StringConstraints(max_length=64)]
    center: float | None = None
    width: float | None = Field(None, ge=1)
    organ: Name | None = None

    @model_validator(mode="after")
    def _placed(self) -> WindowsDoc:
        if self.organ is None and (self.center is None or self.width is None):
            raise ValueError("a window needs 'center' and 'width', or an 'organ'")
        return self


class StepDoc(_Strict):
    """``{id, use, in, params}``: ``in`` is a context name, a list of them (positional inputs) or a
    mapping ``{parameter: name}`` (keyword inputs); default ``[image]``."""

    id: Name
    use: Name
    in_: Name | list[Name] | dict[Name, Name] = Field(default_factory=lambda: ["image"], alias="in")
    params: Annotated[dict[Name, Any], BeforeValidator(lambda v: {} if v is None else v)] = Field(
        default_factory=dict
    )


class SegmentDoc(_Strict):
    """One segment of the SEG/SR: built from the step output named in ``from``."""

    from_: Name = Field(alias="from")
    label: Text | None = None  # default: the step id
    structure: Name | None = None  # default: the step id
    color: tuple[Channel, Channel, Channel] = (255, 0, 0)
    category: Name = "organ"
    value: int | None = Field(None, ge=1)
    each: StrictBool = False
    required: StrictBool | None = None  # default: true unless each
    on_qc_fail: Literal["hold", "withhold"] = "hold"  # withhold: a failing secondary segment is left out

    @model_validator(mode="after")
    def _withhold_only_secondary(self) -> SegmentDoc:
        required = self.required if self.required is not None else not self.each
        if self.on_qc_fail == "withhold" and (self.each or required):
            what = "one segment per label (lesions)" if self.each else "required"
            raise ValueError(
                f"Segment '{self.label or self.from_}' is {what}, so it cannot be withheld when its QC fails "
                "(on_qc_fail: withhold is for optional secondary organs; give required: false)."
            )
        return self


class PipelineDoc(_Strict):
    """A pipeline file (see :mod:`dicomnode.pipelines.registry` for the format)."""

    name: Name
    version: Version
    description: Text
    modalities: Annotated[list[Name], BeforeValidator(_none_as_empty)] = Field(default_factory=list)
    accepts: dict[Name, Any] | None = None
    window: WindowDoc | None = None
    windows: Annotated[list[WindowsDoc], BeforeValidator(_none_as_empty)] = Field(default_factory=list)
    enhanced: Name | None = None
    enhanced_values: Literal["quantitative", "display"] = "quantitative"
    sr_features: list[Name] | None = Field(None, min_length=1)
    steps: Annotated[list[StepDoc], BeforeValidator(_none_as_empty)] = Field(default_factory=list)
    segments: Annotated[list[SegmentDoc], BeforeValidator(_none_as_empty)] = Field(default_factory=list)

    @field_validator("accepts")
    @classmethod
    def _guards(cls, value: dict[str, Any] | None, info: Any) -> dict[str, Any] | None:  # noqa: ANN401
        Accepts.parse(value, tuple(info.data.get("modalities") or ()))  # ValueError names the bad key
        return value

    @field_validator("sr_features")
    @classmethod
    def _coded(cls, value: list[str] | None) -> list[str] | None:
        from dicomnode.errors import OutputError
        from dicomnode.outputs.codes import feature_code

        for name in value or ():
            try:
                feature_code(name)
            except OutputError as exc:
                raise ValueError(str(exc)) from None
        return value


# ------------------------------------------------------------------------------------------- problems


@dataclass(frozen=True)
class PipelineIssue:
    file: str
    line: int | None
    reason: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.reason}" if self.line else f"{self.file}: {self.reason}"


class PipelineFileError(PipelineError):
    """A pipeline file is invalid; ``issues`` lists every problem found in it."""

    def __init__(self, issues: Sequence[PipelineIssue]) -> None:
        self.issues = list(issues)
        count = len(self.issues)
        files = sorted({i.file for i in self.issues})
        plural = "s" if count != 1 else ""
        head = f"Pipeline file {', '.join(repr(f) for f in files)} is invalid ({count} problem{plural}):"
        super().__init__("\n  ".join([head, *map(str, self.issues)]))


def _line(node: Any, key: Any) -> int | None:  # noqa: ANN401 - a LineDict or LineList
    if isinstance(node, LineDict):
        return node.key_lines.get(key, node.line)
    if isinstance(node, LineList) and isinstance(key, int) and key < len(node.item_lines):
        return node.item_lines[key]
    return getattr(node, "line", None)


def _references(doc: PipelineDoc, data: Any, source: str) -> list[PipelineIssue]:  # noqa: ANN401
    """Inputs, segments and ``enhanced`` must name the source image or an earlier step's output."""
    issues = []
    produced = {"image"}
    raw_steps = data.get("steps") or []
    for i, step in enumerate(doc.steps):
        names = [step.in_] if isinstance(step.in_, str) else (
            list(step.in_.values()) if isinstance(step.in_, dict) else step.in_
        )
        line = _line(raw_steps, i)
        for name in names:
            if name not in produced:
                issues.append(PipelineIssue(
                    source, line, f"steps[{i}].in: step '{step.id}' uses '{name}' before any step produces it"
                ))
        if step.id in produced:
            issues.append(PipelineIssue(source, line, f"steps[{i}].id: '{step.id}' is produced twice"))
        produced.add(step.id)
    raw_segments = data.get("segments") or []
    for i, segment in enumerate(doc.segments):
        if segment.from_ not in produced:
            issues.append(PipelineIssue(
                source, _line(raw_segments, i), f"segments[{i}].from: no step produces '{segment.from_}'"
            ))
    for i, window in enumerate(doc.windows):
        if window.organ is not None and window.organ not in produced:
            issues.append(PipelineIssue(
                source, _line(data.get("windows") or [], i),
                f"windows[{i}].organ: no step produces '{window.organ}'",
            ))
    if doc.enhanced is not None and doc.enhanced not in produced:
        issues.append(PipelineIssue(
            source, _line(data, "enhanced"), f"enhanced: '{doc.enhanced}' is not produced by any step"
        ))
    return issues


def _spec(doc: PipelineDoc, data: Any, source: str) -> PipelineSpec:  # noqa: ANN401
    raw_steps = data.get("steps") or []
    steps = []
    for i, step in enumerate(doc.steps):
        positional: tuple[str, ...] = ()
        keyword: tuple[tuple[str, str], ...] = ()
        if isinstance(step.in_, str):
            positional = (step.in_,)
        elif isinstance(step.in_, list):
            positional = tuple(step.in_)
        else:
            keyword = tuple(step.in_.items())
        line = _line(raw_steps, i) or 0
        steps.append(StepSpec(step.id, step.use, positional, keyword, dict(step.params), line))
    segments = tuple(
        SegmentSpec(
            source=s.from_,
            label=s.label if s.label is not None else s.from_,
            structure=s.structure if s.structure is not None else s.from_,
            color=s.color,
            category=s.category,
            value=s.value,
            each=s.each,
            required=s.required if s.required is not None else not s.each,
            on_qc_fail=s.on_qc_fail,
        )
        for s in doc.segments
    )
    accepted = Accepts.parse(doc.accepts, tuple(doc.modalities))
    return PipelineSpec(
        name=doc.name,
        version=doc.version,
        description=doc.description,
        steps=tuple(steps),
        segments=segments,
        modalities=accepted.modalities,
        window=(doc.window.center, doc.window.width) if doc.window else None,
        enhanced=doc.enhanced,
        sr_features=tuple(doc.sr_features) if doc.sr_features else None,
        windows=tuple(WindowSpec(w.explanation, w.center, w.width, w.organ) for w in doc.windows),
        enhanced_values=doc.enhanced_values,
        accepts=accepted,
        source=source,
    )


def parse_pipeline(text: str, source: str = "<string>") -> PipelineSpec:
    """Validate one pipeline YAML document; :class:`PipelineFileError` lists every problem
    (``source`` names the file in them)."""
    try:
        data = load_yaml(text)
    except yaml.YAMLError as exc:
        line, problem = yaml_problem(exc)
        raise PipelineFileError([PipelineIssue(source, line, problem)]) from None
    if not isinstance(data, dict):
        found = "nothing" if data is None else "a list" if isinstance(data, list) else f"{data!r}"
        raise PipelineFileError([PipelineIssue(source, getattr(data, "line", None) or 1,
                                               f"a pipeline file must hold a mapping, not {found}")])
    try:
        doc = PipelineDoc.model_validate(data)
    except ValidationError as exc:
        problems = field_problems(exc, data, UNKNOWN_KEY_HINT)
        issues = sorted((PipelineIssue(source, p.line, str(p)) for p in problems), key=lambda i: i.line or 0)
        raise PipelineFileError(issues) from None
    issues = _references(doc, data, source)
    if issues:
        raise PipelineFileError(issues)
    return _spec(doc, data, source)


def load_pipeline_file(path: Path | str, display: str | None = None) -> PipelineSpec:
    """Read and validate one pipeline file (``display``: how issues name it; default its path)."""
    path = Path(path)
    source = display or str(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise PipelineFileError([PipelineIssue(source, None, f"cannot be read: {exc}")]) from None
    return parse_pipeline(text, source)
