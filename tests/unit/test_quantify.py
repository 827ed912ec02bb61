"""Quantification against pyradiomics' own baseline (../shared/data/radiomics/baseline).

For each basic column (brain1, breast1, lung1) the column's own settings (its
``diagnostics_Configuration_Settings`` row) are used and every feature in the baseline must be within 1 %
relative of the reference; a reference that is ~0 (|ref| < 1e-6) is compared with an absolute tolerance of
1e-6 instead. No feature is excluded. lung1 is also computed from its DICOM series + DICOM SEG through the
CLI, which proves the series geometry and the SEG-to-grid mapping.
"""

from __future__ import annotations

import ast
import csv
import json

import numpy as np
import pytest
from typer.testing import CliRunner

from dicomnode.cli import build_app
from dicomnode.errors import QuantifyError
from dicomnode.imaging.quantify import feature_classes_for, quantify_arrays, quantify_files
from tests.support import shared_data

CASES = ("brain1", "breast1", "lung1")
REL_TOL = 0.01
ZERO = 1e-6


def baseline() -> tuple[dict[str, dict[str, float]], dict[str, dict]]:
    """(case → feature → reference value, case → settings) for the basic columns."""
    refs: dict[str, dict[str, float]] = {c: {} for c in CASES}
    settings: dict[str, dict] = {}
    for path in sorted(shared_data("radiomics", "baseline").glob("baseline_*.csv")):
        with path.open(newline="") as handle:
            rows = list(csv.reader(handle))
        header = rows[0]
        for row in rows[1:]:
            for column, value in zip(header[1:], row[1:], strict=True):
                if column not in CASES:
                    continue
                if row[0] == "diagnostics_Configuration_Settings":
                    settings[column] = ast.literal_eval(value)
                elif row[0].startswith("original_"):
                    refs[column][row[0]] = float(value)
    return refs, settings


def assert_matches(got: dict[str, float], reference: dict[str, float]) -> None:
    assert len(reference) > 100  # all seven classes are in the baseline
    bad = []
    for name, ref in reference.items():
        assert name in got, f"feature {name} was not computed"
        value = got[name]
        ok = abs(value - ref) <= ZERO if abs(ref) < ZERO else abs(value - ref) <= REL_TOL * abs(ref)
        if not ok:
            bad.append(f"{name}: got {value}, reference {ref}")
    assert not bad, "\n".join(bad)


@pytest.fixture(scope="module")
def reference():
    return baseline()


@pytest.mark.parametrize("case", CASES)
def test_nrrd_features_match_baseline(case, reference):
    refs, settings = reference
    image = shared_data("radiomics", f"{case}_image.nrrd")
    mask = shared_data("radiomics", f"{case}_label.nrrd")
    got = quantify_files(str(image), str(mask), settings=settings[case])
    assert_matches(got, refs[case])
    assert got["volume_ml"] == pytest.approx(got["original_shape_VoxelVolume"] / 1000.0)


def _cli_settings(settings: dict) -> list[str]:
    args = []
    for key, value in settings.items():
        args += ["--setting", f"{key}={json.dumps(value) if value is not None else 'None'}"]
    return args


def test_lung1_dicom_series_and_seg_through_cli_match_baseline(reference):
    refs, settings = reference
    series = shared_data("radiomics", "lung1-dicom")
    seg = shared_data("radiomics", "lung1-tumor-seg.dcm")
    args = ["quantify", str(series), str(seg), "--label", "1", "--json", *_cli_settings(settings["lung1"])]
    result = CliRunner().invoke(build_app(), args)
    assert result.exit_code == 0, result.output
    got = json.loads(result.stdout)
    assert_matches(got, refs["lung1"])
    assert got["voxel_count"] == 837  # the tumour label's voxels in lung1_label.nrrd


def test_cli_prints_name_value_lines_and_bin_width_changes_texture():
    image = str(shared_data("radiomics", "breast1_image.nrrd"))
    mask = str(shared_data("radiomics", "breast1_label.nrrd"))
    app = build_app()
    default = CliRunner().invoke(app, ["quantify", image, mask])
    coarse = CliRunner().invoke(app, ["quantify", image, mask, "--bin-width", "100"])
    assert default.exit_code == 0 and coarse.exit_code == 0, default.output + coarse.output
    lines = dict(line.split() for line in default.stdout.splitlines())
    expected = {
        "original_firstorder_Mean", "original_shape_Sphericity", "original_glcm_Contrast",
        "original_glrlm_RunPercentage", "original_glszm_ZonePercentage", "original_gldm_DependenceEntropy",
        "original_ngtdm_Coarseness", "voxel_count", "volume_ml",
    }
    assert expected <= set(lines)
    coarse_lines = dict(line.split() for line in coarse.stdout.splitlines())
    assert coarse_lines["original_firstorder_Mean"] == lines["original_firstorder_Mean"]
    assert coarse_lines["original_glcm_Contrast"] != lines["original_glcm_Contrast"]


@pytest.mark.parametrize(
    "args, message",
    [
        (["--label", "7"], "no voxel with label 7"),
        (["--setting", "binWidht=5"], "Unknown pyradiomics setting(s) 'binWidht'"),
        (["--setting", "binWidth"], "not of the form key=value"),
        (["--bin-width", "0"], "--bin-width must be positive"),
    ],
)
def test_cli_errors_are_one_clear_line(args, message):
    image = str(shared_data("radiomics", "breast1_image.nrrd"))
    mask = str(shared_data("radiomics", "breast1_label.nrrd"))
    result = CliRunner().invoke(build_app(), ["quantify", image, mask, *args])
    assert result.exit_code == 2
    assert "dicomnode: error: " in result.output and message in result.output


def test_cli_rejects_missing_input_and_seg_segment(tmp_path):
    series = str(shared_data("radiomics", "lung1-dicom"))
    seg = str(shared_data("radiomics", "lung1-tumor-seg.dcm"))
    app = build_app()
    missing = CliRunner().invoke(app, ["quantify", str(tmp_path / "nope.nrrd"), seg])
    assert missing.exit_code == 2 and "does not exist" in missing.output
    wrong = CliRunner().invoke(app, ["quantify", series, seg, "--label", "2"])
    assert wrong.exit_code == 2 and "has no segment 2 (segments: 1='Tumor')" in wrong.output


def test_arrays_give_exact_volume_and_requested_classes_only():
    rng = np.random.default_rng(0)
    image = rng.normal(40, 10, size=(8, 32, 32)).astype(np.float32)
    mask = np.zeros(image.shape, dtype=bool)
    mask[2:6, 8:20, 10:22] = True
    got = quantify_arrays(image, mask, (2.5, 0.8, 0.8), feature_classes=feature_classes_for(
        ["original_firstorder_Mean"]))
    assert got["voxel_count"] == 4 * 12 * 12
    assert got["volume_ml"] == pytest.approx(4 * 12 * 12 * 2.5 * 0.8 * 0.8 / 1000)
    assert got["original_firstorder_Mean"] == pytest.approx(float(image[mask].mean()), rel=1e-5)
    assert got["original_firstorder_StandardDeviation"] == pytest.approx(float(image[mask].std()), rel=1e-4)
    assert not any("_glcm_" in k or "_shape_" in k for k in got)
    counts = quantify_arrays(image, mask, (1, 1, 1), feature_classes=feature_classes_for(["volume_ml"]))
    assert counts == {"voxel_count": 576.0, "volume_ml": 0.576}
    with pytest.raises(QuantifyError, match="has no voxel with label 1"):
        quantify_arrays(image, np.zeros_like(mask), (1, 1, 1))
