"""The Rules page: the active rule files highlighted, a validator with line numbers, a dry-run tester and
atomic editing.

* Validation of an edited file loads the whole rule set with that file replaced, in a scratch copy of the
  rules folder, with every reference checked (:func:`dicomnode.route.ruleset.load_ruleset`) — exactly what
  the node would do on reload. Problems come back with the file name and line.
* Saving validates first and refuses an invalid set (the file is not touched). A valid file is written to
  a hidden temporary file in the rules folder, fsynced and renamed over the old one (``os.replace``), the
  folder is fsynced, and the rule book reloads, so the node routes with the new set at once.
* The tester evaluates the set in force against a stored study or uploaded DICOM files with explanations
  per rule; it never changes the set in force.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from markupsafe import Markup

from dicomnode.console.node import ConsoleNode
from dicomnode.errors import ConsoleError, RuleError
from dicomnode.route.evaluate import EvalContext
from dicomnode.route.headers import HeaderCache, SeriesView, group_paths
from dicomnode.route.ownership import series_own_output, study_own_outputs
from dicomnode.route.ruleset import (
    RULE_SUFFIXES,
    Evaluation,
    RuleIssue,
    RuleSet,
    RuleSetError,
    load_ruleset,
    references_for,
    rule_files,
)

log = logging.getLogger(__name__)

_FILE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,100}$")


def check_file_name(name: str) -> str:
    if not _FILE_NAME.match(name) or not name.endswith(RULE_SUFFIXES):
        raise ConsoleError(
            f"Rule file name '{name}' is not allowed: use letters, digits, '_', '.', '-' and end in "
            ".yaml or .yml."
        )
    return name


def rules_folder(node: ConsoleNode) -> Path:
    return Path(node.config.rules.path)


def list_files(node: ConsoleNode) -> list[str]:
    try:
        return [p.name for p in rule_files(rules_folder(node))]
    except RuleSetError:
        return []


def read_file(node: ConsoleNode, name: str) -> str:
    path = rules_folder(node) / check_file_name(name)
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return ""
    except (OSError, UnicodeDecodeError) as exc:
        raise ConsoleError(f"Cannot read rule file '{path}': {exc}.") from exc


def _load(node: ConsoleNode, folder: Path) -> RuleSet:
    refs = references_for(node.config)
    return load_ruleset(folder, pipelines=refs["pipelines"](), destinations=refs["destinations"](),
                        pipelines_folder=node.config.pipelines_folder)


def list_pipelines(node: ConsoleNode) -> list:
    """The pipelines rules may use (shipped and the site's valid ones), by name."""
    from dicomnode.pipelines.registry import load_pipelines

    return sorted(load_pipelines(node.config.pipelines_folder, strict=False).values(), key=lambda s: s.name)


def active_ruleset(node: ConsoleNode) -> tuple[RuleSet | None, list[RuleIssue]]:
    """The set in force (the node's rule book when running, else the folder as loaded now)."""
    if node.book is not None and node.book.current is not None:
        problems: list[RuleIssue] = []
        if node.book.last_error:  # the folder changed into something invalid; the old set still routes
            try:
                _load(node, rules_folder(node))
            except RuleSetError as exc:
                problems = exc.issues
        return node.book.current, problems
    try:
        return _load(node, rules_folder(node)), []
    except RuleSetError as exc:
        return None, exc.issues


def validate(node: ConsoleNode, name: str, text: str) -> list[RuleIssue]:
    """Problems of the rule set with ``name`` replaced by ``text`` (file names without the scratch path)."""
    check_file_name(name)
    folder = rules_folder(node)
    with tempfile.TemporaryDirectory(prefix="dicomnode-rules-") as scratch:
        copy = Path(scratch)
        if folder.is_dir():
            for path in rule_files(folder):
                shutil.copyfile(path, copy / path.name)
        (copy / name).write_text(text, encoding="utf-8")
        try:
            _load(node, copy)
        except RuleSetError as exc:
            return [RuleIssue(Path(i.file).name, i.line, i.rule, i.reason) for i in exc.issues]
    return []


def save(node: ConsoleNode, name: str, text: str) -> RuleSet | None:
    """Validate, write atomically and reload; raises :class:`RuleSetError` (file untouched) if invalid."""
    issues = validate(node, name, text)
    if issues:
        raise RuleSetError(issues)
    folder = rules_folder(node)
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / name
    fd, tmp_name = tempfile.mkstemp(prefix=f".{name}.", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp_name, target)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
    dir_fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
    if node.book is not None:
        node.book.reload()
        if node.book.last_error:
            raise ConsoleError(f"The file was written but the node refused to reload: {node.book.last_error}")
        return node.book.current
    return _load(node, folder)


def highlight(text: str, error_lines: Sequence[int] = ()) -> Markup:
    """YAML with pygments token classes, line numbers and the error lines marked."""
    from pygments import highlight as pyg_highlight
    from pygments.formatters import HtmlFormatter
    from pygments.lexers import YamlLexer

    formatter = HtmlFormatter(linenos="table", cssclass="hl", hl_lines=list(error_lines), lineanchors="L")
    return Markup(pyg_highlight(text, YamlLexer(), formatter))


@dataclass
class RuleOutcome:
    name: str
    matched: bool
    skipped: str
    fallback: bool
    priority: int
    action: str
    why: list[str]


@dataclass
class DryRun:
    title: str
    level: str
    outcomes: list[RuleOutcome] = field(default_factory=list)
    fired: list[str] = field(default_factory=list)
    ignored: str = ""  # why the subject is the node's own output (only rules with own_outputs: forward apply)


def _case(title: str, evaluation: Evaluation) -> DryRun:
    case = DryRun(title, evaluation.level)
    for result in evaluation.results:
        rule = result.loaded.rule
        why = result.explanation.lines() if result.explanation is not None else []
        case.outcomes.append(RuleOutcome(rule.name, result.matched, result.skipped, rule.fallback,
                                         rule.priority, rule.then.describe(), why))
    case.fired = [f"{r.name} ({r.rule.then.describe()})" for r in evaluation.fired]
    case.ignored = next((r.skipped for r in evaluation.results if r.skipped.startswith("own output")), "")
    return case


def _evaluate(
    ruleset: RuleSet, study_uid: str, views: list[SeriesView], fields: dict[str, Any]
) -> list[DryRun]:
    cases = []
    for view in views:
        ctx = EvalContext(view, series_in_study=len(views), study_series=lambda v=views: v,
                          own_output=series_own_output(view), **fields)
        cases.append(_case(view.describe(), ruleset.evaluate("series", ctx, True)))
    others, own = study_own_outputs(views)  # study rules never see the node's own outputs
    if ruleset.has_level("study") and views:
        subject = SeriesView.combine(others, study_uid)
        ctx = EvalContext(subject, series_in_study=len(others), study_series=lambda v=others: v,
                          own_output=own[0][1] if own and not others else None, **fields)
        cases.append(_case(f"study {study_uid} ({len(views)} series)", ruleset.evaluate("study", ctx, True)))
    return cases


def dry_run_study(node: ConsoleNode, ruleset: RuleSet, study_uid: str) -> list[DryRun]:
    """Dry-run the rules on a study in the spool, as the router would see it (sender AE, receive time)."""
    cache = HeaderCache()
    views, aet, last = [], None, None
    for series in node.index.series_of(study_uid):
        rows = node.index.instances(study_uid, series.series_uid)
        files = [node.index.root / r["path"] for r in rows]
        views.append(SeriesView.from_files(files, cache, study_uid=study_uid, series_uid=series.series_uid))
        aet = aet or (rows[0]["calling_aet"] if rows else None)
        last = max(last or 0.0, series.last_received_at)
    if not views:
        raise RuleError(f"Study '{study_uid}' is not stored in {node.config.storage.path}.")
    called = node.config.node.ae_title if node.config.node.require_called_aet else None
    fields = {"calling_ae": aet, "called_ae": called,
              "received_at": datetime.fromtimestamp(last) if last else datetime.now()}
    return _evaluate(ruleset, study_uid, views, fields)


def dry_run_files(ruleset: RuleSet, paths: Sequence[Path], calling_ae: str | None = None) -> list[DryRun]:
    """Dry-run the rules on DICOM files (e.g. uploaded ones), grouped by study and series."""
    cache = HeaderCache()
    by_study: dict[str, list[SeriesView]] = {}
    for (study_uid, _), files in group_paths(paths, cache).items():
        by_study.setdefault(study_uid, []).append(SeriesView.from_files(files, cache))
    if not by_study:
        raise RuleError("None of the uploaded files is a readable DICOM file.")
    cases = []
    for study_uid, views in by_study.items():
        fields = {"calling_ae": calling_ae or None, "called_ae": None, "received_at": datetime.now()}
        cases.extend(_evaluate(ruleset, study_uid, views, fields))
    return cases
