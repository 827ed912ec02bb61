"""A rule set: every ``*.yaml``/``*.yml`` file of the rules folder, validated as a whole.

Each file holds a list of rules (or one rule mapping; an empty file holds none). Errors name the file, the
line, the rule and the reason; one bad rule makes the whole set invalid (a half-applied set is worse than
the previous one). The version of a set is the SHA-256 over its files' names and bytes.

Order of evaluation: higher ``priority`` first; equal priorities in file-name order, then in file order.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from dicomnode.errors import RuleError
from dicomnode.route.evaluate import EvalContext, Explanation, rule_holds
from dicomnode.route.rules import Rule
from dicomnode.yamlsource import LineDict, LineList, field_problems, load_yaml, yaml_problem

RULE_SUFFIXES = (".yaml", ".yml")
UNKNOWN_KEY_HINT = " (check the spelling; see README 'Routing rules')"


@dataclass(frozen=True)
class RuleIssue:
    file: str
    line: int | None
    rule: str | None
    reason: str

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line else self.file
        who = f" rule '{self.rule}':" if self.rule else ""
        return f"{where}:{who} {self.reason}"


class RuleSetError(RuleError):
    """A rule set is invalid; ``issues`` lists every problem found."""

    def __init__(self, issues: Sequence[RuleIssue]) -> None:
        self.issues = list(issues)
        count = len(self.issues)
        head = f"The rule set is invalid ({count} problem{'s' if count != 1 else ''}):"
        super().__init__("\n  ".join([head, *map(str, self.issues)]))


@dataclass(frozen=True)
class LoadedRule:
    rule: Rule
    file: str
    line: int
    order: int  # position within its file
    action_lines: dict[str, int] = field(default_factory=dict, compare=False)  # then.<key> → line

    def line_of(self, key: str) -> int:
        return self.action_lines.get(key, self.line)

    @property
    def name(self) -> str:
        return self.rule.name


@dataclass(frozen=True)
class RuleResult:
    """The outcome of one rule for one subject."""

    loaded: LoadedRule
    matched: bool
    explanation: Explanation | None = None
    skipped: str = ""  # why the rule was not evaluated ("disabled", "after stop", "fallback not needed")


@dataclass(frozen=True)
class Evaluation:
    level: str
    results: tuple[RuleResult, ...]
    fallback_used: bool

    @property
    def fired(self) -> list[LoadedRule]:
        return [r.loaded for r in self.results if r.matched]

    def held_if_not_own(self, ctx: EvalContext) -> list[str]:
        """Names of the rules skipped as the subject is an own output whose conditions hold (what the
        node would have done with the series, had it not been its own output)."""
        return [
            r.loaded.name for r in self.results
            if r.skipped.startswith("own output") and rule_holds(r.loaded.rule, ctx)[0]
        ]


@dataclass(frozen=True)
class RuleSet:
    folder: Path
    rules: tuple[LoadedRule, ...]
    files: tuple[str, ...]
    sha256: str
    _by_level: dict[str, tuple[LoadedRule, ...]] = field(default_factory=dict, repr=False, compare=False)

    def __post_init__(self) -> None:
        for level in ("series", "study"):
            ordered = sorted(
                (r for r in self.rules if r.rule.level == level),
                key=lambda r: (-r.rule.priority, r.file, r.order),
            )
            self._by_level[level] = tuple(ordered)

    @property
    def version(self) -> str:
        return self.sha256[:12]

    def ordered(self, level: str) -> tuple[LoadedRule, ...]:
        return self._by_level[level]

    def has_level(self, level: str) -> bool:
        return bool(self._by_level[level])

    def evaluate(self, level: str, ctx: EvalContext, explain: bool = False) -> Evaluation:
        """Fire every matching ordinary rule (until one with ``stop``); fallbacks only if none fired."""
        rules = self.ordered(level)
        results: list[RuleResult] = []
        stopped = False
        for loaded in (r for r in rules if not r.rule.fallback):
            results.append(_run(loaded, ctx, explain, stopped))
            stopped = stopped or (results[-1].matched and loaded.rule.then.stop)
        ordinary_fired = any(r.matched for r in results)
        fallback_used = False
        stopped = False
        for loaded in (r for r in rules if r.rule.fallback):
            if ordinary_fired:
                results.append(RuleResult(loaded, False, None, "fallback not needed"))
                continue
            result = _run(loaded, ctx, explain, stopped)
            results.append(result)
            fallback_used = fallback_used or result.matched
            stopped = stopped or (result.matched and loaded.rule.then.stop)
        return Evaluation(level, tuple(results), fallback_used)


def _run(loaded: LoadedRule, ctx: EvalContext, explain: bool, stopped: bool) -> RuleResult:
    if not loaded.rule.enabled:
        return RuleResult(loaded, False, None, "disabled")
    if stopped:
        return RuleResult(loaded, False, None, "not evaluated: an earlier rule has stop")
    if ctx.own_output and loaded.rule.own_outputs != "forward":
        return RuleResult(loaded, False, None, f"own output, not routed: {ctx.own_output}")
    held, why = rule_holds(loaded.rule, ctx, explain)
    return RuleResult(loaded, held, why)


def rule_files(folder: Path) -> list[Path]:
    if not folder.is_dir():
        raise RuleSetError([RuleIssue(str(folder), None, None, "the rules folder does not exist")])
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix in RULE_SUFFIXES)


def fingerprint(folder: Path) -> tuple[tuple[str, int, int], ...]:
    """Cheap change detection: (name, mtime_ns, size) of every rule file."""
    out = []
    try:
        for path in rule_files(folder):
            stat = path.stat()
            out.append((path.name, stat.st_mtime_ns, stat.st_size))
    except (RuleSetError, OSError):
        return ()
    return tuple(out)


def _validate_rule(item: Any, file: str, index: int) -> tuple[Rule | None, list[RuleIssue]]:
    name = item.get("name") if isinstance(item, dict) and isinstance(item.get("name"), str) else None
    label = name or f"#{index + 1}"
    line = getattr(item, "line", None)
    if not isinstance(item, dict):
        return None, [RuleIssue(file, line, label, f"a rule must be a mapping, not {type(item).__name__}")]
    try:
        return Rule.model_validate(item), []
    except ValidationError as exc:
        return None, [
            RuleIssue(file, problem.line or line, label, str(problem))
            for problem in field_problems(exc, item, UNKNOWN_KEY_HINT)
        ]


def parse_rule_file(
    path: Path, display: str | None = None
) -> tuple[list[LoadedRule], list[RuleIssue], bytes]:
    """Rules of one file and the problems found in it (the raw bytes are returned for hashing)."""
    file = display or str(path)
    try:
        raw = path.read_bytes()
        text = raw.decode("utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        return [], [RuleIssue(file, None, None, f"cannot be read: {exc}")], b""
    try:
        data = load_yaml(text)
    except yaml.YAMLError as exc:
        line, problem = yaml_problem(exc)
        return [], [RuleIssue(file, line, None, problem)], raw
    if data is None:
        return [], [], raw
    if isinstance(data, LineDict):
        items: Iterable[Any] = [data]
        item_lines = [data.line]
    elif isinstance(data, LineList):
        items, item_lines = data, data.item_lines
    else:
        problem = "a rule file must hold a list of rules (or one rule mapping)"
        return [], [RuleIssue(file, 1, None, problem)], raw
    rules: list[LoadedRule] = []
    issues: list[RuleIssue] = []
    for index, (item, line) in enumerate(zip(items, item_lines, strict=True)):
        rule, problems = _validate_rule(item, file, index)
        issues.extend(problems)
        if rule is not None:
            then = item.get("then")
            action_lines = dict(then.key_lines) if isinstance(then, LineDict) else {}
            rules.append(LoadedRule(rule, file, getattr(item, "line", line), index, action_lines))
    return rules, issues, raw


def load_ruleset(
    folder: Path | str,
    *,
    pipelines: Iterable[str] | None = None,
    destinations: Iterable[str] | None = None,
    pipelines_folder: Path | str | None = None,
) -> RuleSet:
    """Load and validate every rule file in ``folder``; raise :class:`RuleSetError` listing all problems.

    With ``pipelines``/``destinations`` given, every reference is checked against them too (parameters
    against the pipelines of the package and of ``pipelines_folder``).
    """
    folder = Path(folder)
    files = rule_files(folder)
    digest = hashlib.sha256()
    rules: list[LoadedRule] = []
    issues: list[RuleIssue] = []
    for path in files:
        display = str(path)
        found, problems, raw = parse_rule_file(path, display)
        digest.update(path.name.encode() + b"\0" + hashlib.sha256(raw).digest())
        rules.extend(found)
        issues.extend(problems)
    seen: dict[str, LoadedRule] = {}
    for loaded in rules:
        if loaded.name in seen:
            first = seen[loaded.name]
            issues.append(RuleIssue(
                loaded.file, loaded.line, loaded.name,
                f"the name is already used by the rule at {first.file}:{first.line}",
            ))
        seen.setdefault(loaded.name, loaded)
    issues.extend(check_references(rules, pipelines, destinations, pipelines_folder))
    issues.sort(key=lambda i: (i.file, i.line or 0))
    if issues:
        raise RuleSetError(issues)
    return RuleSet(folder, tuple(rules), tuple(p.name for p in files), digest.hexdigest())


def check_references(
    rules: Iterable[LoadedRule], pipelines: Iterable[str] | None, destinations: Iterable[str] | None,
    pipelines_folder: Path | str | None = None,
) -> list[RuleIssue]:
    issues = []
    known_pipelines = set(pipelines) if pipelines is not None else None
    known_destinations = set(destinations) if destinations is not None else None
    for loaded in rules:
        action = loaded.rule.then
        if known_pipelines is not None and action.pipeline and action.pipeline not in known_pipelines:
            known = ", ".join(sorted(known_pipelines)) or "none"
            issues.append(RuleIssue(
                loaded.file, loaded.line_of("pipeline"), loaded.name,
                f"then.pipeline: pipeline '{action.pipeline}' is not registered (registered: {known})",
            ))
        elif known_pipelines is not None and action.pipeline and action.params:
            problem = pipeline_params_problem(action.pipeline, dict(action.params), pipelines_folder)
            if problem:
                issues.append(RuleIssue(
                    loaded.file, loaded.line_of("params"), loaded.name, f"then.params: {problem}"
                ))
        if known_destinations is not None:
            for name in action.send_to:
                if name not in known_destinations:
                    known = ", ".join(sorted(known_destinations)) or "none"
                    issues.append(RuleIssue(
                        loaded.file, loaded.line_of("send_to"), loaded.name,
                        f"then.send_to: destination '{name}' is not configured (configured: {known})",
                    ))
    return issues


def pipeline_params_problem(
    pipeline: str, params: dict[str, Any], pipelines_folder: Path | str | None = None
) -> str | None:
    """Why ``params`` are not valid for ``pipeline`` (unknown step or parameter), or None."""
    from dicomnode.errors import DicomNodeError
    from dicomnode.pipelines.registry import check_steps, get_pipeline

    try:
        check_steps(get_pipeline(pipeline, pipelines_folder).with_params(params))
    except DicomNodeError as exc:
        return str(exc)
    return None


def references_for(config: Any) -> dict[str, Callable[[], Iterable[str]]]:
    """Where the node finds the names rules may refer to (pipelines, destinations)."""
    from dicomnode.pipelines.registry import available_pipelines

    return {
        "pipelines": lambda: available_pipelines(config.pipelines_folder),
        "destinations": lambda: list(config.destinations),
    }


def load_for_config(config: Any) -> RuleSet:
    """The rule set of ``config.rules.path``, with every reference checked against the config and the
    site's pipelines (``config.pipelines_folder``, checked too: an invalid pipeline file or a model
    that does not fit its parameters refuses the set)."""
    return load_ruleset_checked(config.rules.path, config)


def load_ruleset_checked(folder: Path | str, config: Any) -> RuleSet:
    """Like :func:`load_for_config` for the rules in ``folder``."""
    from dicomnode.pipelines.registry import check_pipelines

    pipelines, problems = check_pipelines(config.pipelines_folder)
    try:
        ruleset = load_ruleset(folder, pipelines=list(pipelines), destinations=list(config.destinations),
                               pipelines_folder=config.pipelines_folder)
    except RuleSetError as exc:
        raise RuleSetError([*(RuleIssue(p.file, p.line, None, p.reason) for p in problems), *exc.issues]) \
            from None
    if problems:
        raise RuleSetError([RuleIssue(p.file, p.line, None, p.reason) for p in problems])
    return ruleset
