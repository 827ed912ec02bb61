"""CLI commands: ``dicomnode rules check`` and ``dicomnode rules test`` (dry runs with explanations)."""

from __future__ import annotations

import sqlite3
import sys
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from dicomnode.cli.common import ConfigOption, cli_errors, load_config_or_exit

if TYPE_CHECKING:
    from dicomnode.config import Config
    from dicomnode.route.evaluate import EvalContext
    from dicomnode.route.ruleset import Evaluation, RuleSet

RulesOption = Annotated[
    Path | None, typer.Option("--rules", "-r", help="Rules folder (default: rules.path from the config).")
]


def _load(config: Config, folder: Path | None) -> RuleSet:
    """The rule set with every reference checked; prints each problem and exits 1 if invalid."""
    from dicomnode.route.ruleset import RuleSetError, load_ruleset_checked

    folder = folder or config.rules.path
    try:
        return load_ruleset_checked(folder, config)
    except RuleSetError as exc:
        for issue in exc.issues:
            print(f"dicomnode: error: {issue}", file=sys.stderr)
        count = len(exc.issues)
        print(f"dicomnode: error: the rules in '{folder}' are invalid ({count} problem"
              f"{'s' if count != 1 else ''}); nothing was applied.", file=sys.stderr)
        raise typer.Exit(1) from None


def check(config_path: ConfigOption = None, rules: RulesOption = None) -> None:
    """Validate every rule file and every reference (pipelines, destinations); exit 1 on any problem."""
    config = load_config_or_exit(config_path)
    with cli_errors():
        ruleset = _load(config, rules)
    typer.echo(
        f"Rules OK: {len(ruleset.rules)} rules in {len(ruleset.files)} files of {ruleset.folder} "
        f"(version {ruleset.version}, sha256 {ruleset.sha256})."
    )
    for level in ("series", "study"):
        for loaded in ruleset.ordered(level):
            rule = loaded.rule
            flags = ("fallback " if rule.fallback else "") + ("" if rule.enabled else "disabled ") + (
                "own-outputs " if rule.own_outputs == "forward" else "")
            typer.echo(
                f"  {level:<6} {rule.priority:>4}  {rule.name:<24} {flags}{rule.then.describe()}"
                f"  ({Path(loaded.file).name}:{loaded.line})"
            )


def _print_evaluation(title: str, evaluation: Evaluation) -> None:
    typer.echo(title)
    for result in evaluation.results:
        rule = result.loaded.rule
        mark = "MATCH" if result.matched else ("skip " if result.skipped else "no   ")
        extra = " (fallback)" if rule.fallback else ""
        typer.echo(f"  {mark} {rule.name}{extra} [priority {rule.priority}] → {rule.then.describe()}")
        if result.skipped:
            typer.echo(f"        {result.skipped}")
        elif result.explanation is not None:
            for line in result.explanation.lines(4):
                typer.echo(line)
    fired = evaluation.fired
    if fired:
        names = ", ".join(f"{r.name} ({r.rule.then.describe()})" for r in fired)
        typer.echo(f"  => {names}")
    elif any(r.skipped.startswith("own output") for r in evaluation.results):
        typer.echo("  => ignored: the node's own output is never routed to a pipeline "
                   "(only rules with own_outputs: forward apply)")
    else:
        typer.echo("  => unrouted: no rule matched and no fallback applies")


def _evaluate_groups(ruleset: RuleSet, groups: list[tuple[str, list[Any], dict[str, Any]]]) -> None:
    """``groups``: (study_uid, [SeriesView], context fields) per study."""
    from dicomnode.route.evaluate import EvalContext
    from dicomnode.route.headers import SeriesView
    from dicomnode.route.ownership import series_own_output, study_own_outputs

    for study_uid, views, fields in groups:
        for view in views:
            extra = fields.get(view.series_uid, {})
            ctx: EvalContext = EvalContext(
                view, series_in_study=len(views), study_series=lambda v=views: v,
                own_output=series_own_output(view), **extra
            )
            evaluation = ruleset.evaluate("series", ctx, True)
            _print_evaluation(f"{view.describe()} of study {study_uid}", evaluation)
        if ruleset.has_level("study"):
            others, own = study_own_outputs(views)  # study rules never see the node's own outputs
            subject = SeriesView.combine(others, study_uid)
            first = fields.get(views[0].series_uid, {}) if views else {}
            ctx = EvalContext(subject, series_in_study=len(others), study_series=lambda v=others: v,
                              own_output=own[0][1] if own and not others else None, **first)
            evaluation = ruleset.evaluate("study", ctx, True)
            _print_evaluation(f"study {study_uid} ({len(views)} series)", evaluation)


def _stored_study(config: Config, study_uid: str) -> list[tuple[str, list[Path], str | None, float | None]]:
    """(series UID, files, calling AE, last receive time) of a study the node stored."""
    from dicomnode.route.headers import dicom_files

    spool = config.storage.spool_dir
    db = config.storage.database_path
    found: list[tuple[str, list[Path], str | None, float | None]] = []
    if db.exists():
        from dicomnode.database import Database
        from dicomnode.spool.index import SpoolIndex

        database = Database(db)
        try:
            rows = SpoolIndex(database, spool).study_instances(study_uid)
        except sqlite3.Error:
            rows = []
        finally:
            database.close()
        series: dict[str, tuple[list[Path], str | None, float | None]] = {}
        for r in rows:
            files, aet, last = series.get(r["series_uid"], ([], None, None))
            files.append(spool / r["path"])
            series[r["series_uid"]] = (files, aet or r["calling_aet"], max(last or 0.0, r["received_at"]))
        found = [(uid, files, aet, last) for uid, (files, aet, last) in series.items()]
    if not found:  # no index (or an older node): walk the spool folder
        study_dir = spool / study_uid
        if study_dir.is_dir():
            found = [
                (d.name, dicom_files(d), None, None)
                for d in sorted(study_dir.iterdir()) if d.is_dir() and dicom_files(d)
            ]
    if not found:
        from dicomnode.errors import RuleError

        raise RuleError(f"Study '{study_uid}' is not stored in {config.storage.path}.")
    return found


def test(
    paths: Annotated[
        list[Path] | None, typer.Argument(help="DICOM files or folders (searched recursively).")
    ] = None,
    study: Annotated[str | None, typer.Option("--study", help="A study the node already stored.")] = None,
    calling_ae: Annotated[str | None, typer.Option("--calling-ae", help="Pretend this sender.")] = None,
    called_ae: Annotated[str | None, typer.Option("--called-ae", help="Pretend we were called so.")] = None,
    at: Annotated[str | None, typer.Option("--at", help="Pretend receive time, 'YYYY-MM-DD HH:MM'.")] = None,
    config_path: ConfigOption = None,
    rules: RulesOption = None,
) -> None:
    """Dry-run the rules on DICOM files/folders or a stored study; explain per rule what held or failed."""
    from dicomnode.route.headers import HeaderCache, SeriesView, group_paths

    config = load_config_or_exit(config_path)
    if not paths and not study:
        raise typer.BadParameter("give DICOM files/folders or --study UID")
    with cli_errors():
        ruleset = _load(config, rules)
        received = datetime.strptime(at, "%Y-%m-%d %H:%M") if at else None
        typer.echo(f"Rule set {ruleset.folder} version {ruleset.version} ({len(ruleset.rules)} rules)")
        cache = HeaderCache()
        default_called = called_ae or (config.node.ae_title if config.node.require_called_aet else None)
        groups: list[tuple[str, list[Any], dict[str, Any]]] = []
        if study:
            views, fields = [], {}
            for series_uid, files, aet, last in _stored_study(config, study):
                views.append(SeriesView.from_files(files, cache, study_uid=study, series_uid=series_uid))
                when = received or (datetime.fromtimestamp(last) if last else datetime.now())
                fields[series_uid] = {"calling_ae": calling_ae or aet, "called_ae": default_called,
                                      "received_at": when}
            groups.append((study, views, fields))
        if paths:
            by_study: dict[str, list[Any]] = {}
            for (study_uid, _), files in group_paths(paths, cache).items():
                by_study.setdefault(study_uid, []).append(SeriesView.from_files(files, cache))
            for study_uid, views in by_study.items():
                common = {"calling_ae": calling_ae, "called_ae": called_ae,
                          "received_at": received or datetime.now()}
                groups.append((study_uid, views, {v.series_uid: common for v in views}))
        if not any(views for _, views, _ in groups):
            raise typer.BadParameter("no DICOM files found in the given paths")
        _evaluate_groups(ruleset, groups)


def register(app: typer.Typer) -> None:
    """Add this module's commands to the dicomnode app."""
    rules_app = typer.Typer(help="Routing rules: validate and dry-run.", no_args_is_help=True)
    rules_app.command("check")(check)
    rules_app.command("test")(test)
    app.add_typer(rules_app, name="rules")
