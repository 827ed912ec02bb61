"""CLI commands: ``dicomnode process`` (run a pipeline offline) and ``dicomnode evaluate`` (metrics)."""

from __future__ import annotations

import json
import logging
import math
import uuid
from pathlib import Path
from typing import Annotated

import typer

from dicomnode.cli.common import ConfigOption, cli_errors, fail, load_config_or_exit

log = logging.getLogger(__name__)


def _parse_params(items: list[str]) -> dict[str, object]:
    import yaml

    params: dict[str, object] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise fail(f"--param '{item}' is not of the form step.name=value (e.g. liver.closing_mm=6).")
        try:
            params[key.strip()] = yaml.safe_load(value) if value.strip() else ""
        except yaml.YAMLError:
            params[key.strip()] = value
    return params


def _input_files(input_dir: Path) -> tuple[str, ...]:
    if not input_dir.exists():
        raise fail(f"Input '{input_dir}' does not exist.")
    if input_dir.is_file():
        return (str(input_dir),)
    from pydicom.misc import is_dicom

    files = tuple(str(f) for f in sorted(input_dir.rglob("*")) if f.is_file() and is_dicom(f))
    if not files:
        raise fail(f"No DICOM files in '{input_dir}'.")
    return files


def process(
    input_dir: Annotated[Path, typer.Argument(help="Folder (or file) holding one DICOM series.")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Folder for the result .dcm files.")],
    pipeline: Annotated[str, typer.Option("--pipeline", "-p", help="Pipeline name (see --list).")],
    param: Annotated[
        list[str] | None, typer.Option("--param", help="Override a step parameter: step.name=value.")
    ] = None,
    config_path: ConfigOption = None,
) -> None:
    """Run a pipeline (shipped or from the config's pipelines folder) offline on a series; write the
    SEG / enhanced series / SR and result.json."""
    from dicomnode.jobs import JobSpec
    from dicomnode.pipelines.registry import check_steps, get_pipeline
    from dicomnode.pipelines.runner import run_job

    params = _parse_params(param or [])
    folder = load_config_or_exit(config_path).pipelines_folder
    with cli_errors():  # unknown pipeline/parameter, a model that does not fit: fail early
        check_steps(get_pipeline(pipeline, folder).with_params(params), models=True)
    files = _input_files(input_dir)
    spec = JobSpec(
        job_id=f"cli-{uuid.uuid4().hex[:12]}", pipeline=pipeline, params=params, input_files=files,
        output_dir=str(output), pipelines_path=str(folder),
    )
    result = run_job(spec)
    if not result.ok:
        found = Path(output).rglob("*.dcm") if Path(output).is_dir() else ()
        stale = [str(p.relative_to(output)) for p in sorted(found, key=lambda p: (len(p.parts), str(p)))]
        if stale:  # a refused or failed run writes no SEG/SR: what the folder holds is an earlier run's
            typer.echo(f"Note: '{output}' still holds {len(stale)} .dcm file(s) of an earlier run "
                       f"({', '.join(stale[:3])}{', ...' if len(stale) > 3 else ''}); they are not this "
                       "run's results.", err=True)
        raise fail(result.error)
    for path in result.output_files:
        typer.echo(path)
    segments = result.summary.get("segments", {})
    typer.echo(
        f"{pipeline}: {len(result.output_files)} files, "
        + ", ".join(f"{name} {'≥ ' if info.get('volume_is_lower_bound') else ''}{info['volume_ml']:.1f} ml"
                    for name, info in segments.items())
        + f" in {result.summary.get('seconds', 0.0):.1f} s; result.json in {output}",
        err=True,
    )
    qc = result.summary.get("qc") or {}
    for verdict in (qc.get("segments") or {}).values():
        for reason in verdict.get("reasons") or []:
            typer.echo(f"QC {verdict.get('status')}: {reason}", err=True)
    for label, verdict in (qc.get("withheld") or {}).items():
        typer.echo(f"QC fail, {label} withheld (not in the SEG/SR): "
                   + " ".join(verdict.get("reasons") or verdict.get("flags") or []), err=True)
    for reason in (qc.get("not_found") or {}).values():
        typer.echo(f"Not found: {reason}", err=True)


def evaluate(
    seg: Annotated[Path, typer.Option("--seg", help="Segmentation to evaluate (DICOM SEG, NRRD, NIfTI).")],
    reference: Annotated[Path, typer.Option("--reference", help="Reference (DICOM SEG, NRRD, NIfTI).")],
    match: Annotated[
        list[str] | None,
        typer.Option("--match", help="Pair segments NAME=REFERENCE by name or number (e.g. Liver=5)."),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
) -> None:
    """Dice, Jaccard, 95 % Hausdorff (mm) and volume difference per segment."""
    from dicomnode.imaging.labelmaps import evaluate as run_evaluation

    pairs: dict[str, str] = {}
    for item in match or []:
        a, sep, b = item.partition("=")
        if not sep or not a or not b:
            raise fail(f"--match '{item}' is not of the form NAME=REFERENCE.")
        pairs[a] = b
    with cli_errors():
        results = run_evaluation(seg, reference, pairs or None)
    if as_json:
        def clean(v: float) -> float | str:
            return v if math.isfinite(v) else str(v)

        typer.echo(json.dumps({k: {m: clean(v) for m, v in r.as_dict().items()} for k, r in results.items()},
                              indent=2))
        return
    typer.echo(f"{'segment':<16}{'dice':>8}{'jaccard':>9}{'hd95_mm':>9}{'vol_ml':>10}{'ref_ml':>10}{'dvol_%':>9}")
    for name, r in results.items():
        typer.echo(
            f"{name[:15]:<16}{r.dice:>8.4f}{r.jaccard:>9.4f}{r.hd95_mm:>9.2f}{r.volume_ml:>10.1f}"
            f"{r.reference_volume_ml:>10.1f}{r.volume_difference_percent:>9.1f}"
        )


def register(app: typer.Typer) -> None:
    """Add this module's commands to the dicomnode app."""
    app.command("process")(process)
    app.command("evaluate")(evaluate)
