"""The rules desk: the rule set in force, its files, the validator, the atomic editor and the tester."""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated

from fastapi import APIRouter, Form, Request, UploadFile
from fastapi.responses import HTMLResponse, Response

from dicomnode.console.rulesdesk import (
    active_ruleset,
    dry_run_files,
    dry_run_study,
    highlight,
    list_files,
    list_pipelines,
    read_file,
    save,
    validate,
)
from dicomnode.console.studies import search_studies
from dicomnode.console.web import READ, Console, ConsoleDep, Flash, Writer
from dicomnode.errors import DicomNodeError
from dicomnode.route.ruleset import RuleIssue, RuleSetError

log = logging.getLogger(__name__)
router = APIRouter(tags=["Rules"])


def _page(request: Request, console: Console, status: int = 200, *, file: str = "", text: str | None = None,
          issues: Sequence[RuleIssue] | None = None, tests: list | None = None, tested: str = "") -> Response:
    node = console.node
    ruleset, problems = active_ruleset(node)
    files = list_files(node)
    file = file or (files[0] if files else "rules.yaml")
    source = read_file(node, file) if text is None else text
    shown = issues if issues is not None else problems
    lines = [i.line for i in shown if i.line and i.file.endswith(file)]
    return console.render(
        request, "rules.html", status, title="Rules", active="Rules", ruleset=ruleset, files=files,
        file=file, source=source, highlighted=highlight(source, lines), issues=shown,
        validated=issues is not None, tests=tests, tested=tested, studies=search_studies(node, limit=50),
        pipelines=list_pipelines(node),
    )


@router.get("/rules", response_class=HTMLResponse, dependencies=READ)
def rules(request: Request, console: ConsoleDep, file: str = "") -> Response:
    return _page(request, console, file=file)


@router.post("/rules/validate", response_class=HTMLResponse)
def rules_validate(request: Request, console: ConsoleDep, user: Writer, file: Annotated[str, Form()],
                   text: Annotated[str, Form()] = "") -> Response:
    issues = validate(console.node, file, text)
    return _page(request, console, 200 if not issues else 422, file=file, text=text, issues=issues)


@router.post("/rules/save", response_class=HTMLResponse)
def rules_save(request: Request, console: ConsoleDep, user: Writer, file: Annotated[str, Form()],
               text: Annotated[str, Form()] = "") -> Response:
    try:
        ruleset = save(console.node, file, text)
    except RuleSetError as exc:  # shown in the editor, line by line
        log.warning("Console user %s: rule file %s refused (%d problems).", user, file, len(exc.issues))
        return _page(request, console, 422, file=file, text=text, issues=exc.issues)
    version = ruleset.version if ruleset else "?"
    log.info("Console user %s saved rule file %s; rule set version %s in force.", user, file, version)
    return console.redirect(request, f"/rules?file={file}",
                            Flash(f"Saved {file}; rule set version {version} is in force."))


@router.post("/rules/test", response_class=HTMLResponse)
def rules_test(request: Request, console: ConsoleDep, user: Writer, study_uid: Annotated[str, Form()] = "",
               files: Annotated[list[UploadFile] | None, Form()] = None,
               calling_ae: Annotated[str, Form()] = "") -> Response:
    ruleset, _problems = active_ruleset(console.node)
    if ruleset is None:
        return _page(request, console, 409, tests=[], tested="no valid rule set is in force")
    uploads = [f for f in files or [] if f.filename]
    names: dict[str, str] = {}
    try:
        if uploads:
            with tempfile.TemporaryDirectory(prefix="dicomnode-ruletest-") as scratch:
                paths = []
                for i, upload in enumerate(uploads):
                    path = Path(scratch) / f"{i:05d}.dcm"
                    path.write_bytes(upload.file.read())
                    paths.append(path)
                    names[str(path)] = f"upload '{upload.filename}'"
                tests = dry_run_files(ruleset, paths, calling_ae.strip() or None)
            tested = f"{len(uploads)} uploaded file(s)"
        elif study_uid:
            tests, tested = dry_run_study(console.node, ruleset, study_uid), f"stored study {study_uid}"
        else:
            return _page(request, console, 400, tests=[], tested="nothing: pick a study or upload files")
    except DicomNodeError as exc:  # shown as the test's outcome, on the page
        message = str(exc)
        for path, name in names.items():  # name the upload, not the scratch file
            message = message.replace(f"'{path}'", name)
        return _page(request, console, 400, tests=[], tested=message)
    return _page(request, console, tests=tests, tested=tested)
