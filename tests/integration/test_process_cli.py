"""``dicomnode process`` and ``dicomnode evaluate`` as a user runs them (subprocess, files on disk)."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk

from tests.phantoms import make_ct_phantom, write_dicom_series
from tests.support import REPO_ROOT, shared_data

pytestmark = pytest.mark.integration


def dicomnode(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "dicomnode", *args], capture_output=True, text=True, cwd=REPO_ROOT, timeout=300
    )


def test_process_then_evaluate_a_phantom_series(tmp_path) -> None:
    ct = make_ct_phantom(shape=(32, 112, 112), spacing=(5.0, 3.0, 3.0), phase="native", seed=21)
    series = tmp_path / "series"
    write_dicom_series(ct, series, shuffle_instance_numbers=True)
    out = tmp_path / "out"
    run = dicomnode("process", "--pipeline", "liver-ct", "--param", "lesions.min_diameter_mm=9", str(series),
                    "--output", str(out))
    assert run.returncode == 0, run.stderr
    seg = pydicom.dcmread(out / "seg.dcm")
    assert seg.Modality == "SEG"
    labels = [s.SegmentLabel for s in seg.SegmentSequence]
    assert labels[0] == "Liver" and "Lesion 1" in labels
    result = json.loads((out / "result.json").read_text())
    assert result["ok"] and str(out / "seg.dcm") in result["output_files"]
    # the reference as a label map (NRRD) on the phantom grid: liver = 1
    reference = tmp_path / "reference.nrrd"
    sitk.WriteImage(ct.to_sitk(ct.masks["liver"].astype(np.uint8)), str(reference))
    evaluated = dicomnode("evaluate", "--seg", str(out / "seg.dcm"), "--reference", str(reference),
                          "--match", "Liver=1", "--json")
    assert evaluated.returncode == 0, evaluated.stderr
    metrics = json.loads(evaluated.stdout)["Liver"]
    assert metrics["dice"] >= 0.95 and metrics["hd95_mm"] < 10.0
    table = dicomnode(
        "evaluate", "--seg", str(out / "seg.dcm"), "--reference", str(reference), "--match", "Liver=1"
    )
    assert table.stdout.splitlines()[0].split()[:4] == ["segment", "dice", "jaccard", "hd95_mm"]


def test_evaluate_seg_against_the_reference_seg_by_name() -> None:
    reference = shared_data("ct-abdomen-20", "reference-seg-liver-spleen-aorta.dcm")
    run = dicomnode("evaluate", "--seg", str(reference), "--reference", str(reference), "--json")
    assert run.returncode == 0, run.stderr
    dices = {k: v["dice"] for k, v in json.loads(run.stdout).items()}
    assert dices == {"Liver": 1.0, "Spleen": 1.0, "Aorta": 1.0}
    labels = shared_data("ct-abdomen-20", "reference-labels.nrrd")
    against_nrrd = dicomnode("evaluate", "--seg", str(reference), "--reference", str(labels),
                             "--match", "Liver=5", "--match", "Spleen=1", "--json")
    assert against_nrrd.returncode == 0, against_nrrd.stderr
    assert json.loads(against_nrrd.stdout)["Liver"]["dice"] == pytest.approx(1.0)


def test_clear_errors(tmp_path) -> None:
    unknown = dicomnode("process", "--pipeline", "kidney-ct", str(tmp_path), "--output", str(tmp_path / "o"))
    assert unknown.returncode == 2
    expected = "dicomnode: error: Unknown pipeline 'kidney-ct'; available: brain-mr, forward, liver-ct"
    assert expected in unknown.stderr
    bad = dicomnode("process", "--pipeline", "liver-ct", "--param", "liver_work.radius=3", str(tmp_path),
                    "--output", str(tmp_path / "o"))
    assert bad.returncode == 2 and "Unknown parameter(s) liver_work.radius" in bad.stderr
    malformed = dicomnode("process", "--pipeline", "liver-ct", "--param", "oops", str(tmp_path),
                          "--output", str(tmp_path / "o"))
    assert malformed.returncode == 2 and "not of the form step.name=value" in malformed.stderr
    empty = dicomnode("process", "--pipeline", "liver-ct", str(tmp_path), "--output", str(tmp_path / "o"))
    assert empty.returncode == 2 and "No DICOM files" in empty.stderr
    dupes = dicomnode("process", "--pipeline", "liver-ct", str(shared_data("dupe-positions")),
                      "--output", str(tmp_path / "o"))
    assert dupes.returncode == 2 and "duplicate slice position" in dupes.stderr
    missing = dicomnode(
        "evaluate", "--seg", str(tmp_path / "none.dcm"), "--reference", str(tmp_path / "r.nrrd")
    )
    assert missing.returncode == 2 and "does not exist" in missing.stderr


def test_mr_pixels_in_a_ct_header_are_refused_and_no_seg_is_written(tmp_path) -> None:
    """Real MR (pyradiomics breast1) written with Modality CT: refused before segmentation, exit non-zero."""
    from tests.phantoms import Phantom

    image = sitk.ReadImage(str(shared_data("radiomics", "breast1_image.nrrd")))
    array = sitk.GetArrayFromImage(image).astype(np.float32)
    mr = Phantom(image=array, clean=array, masks={}, spacing=tuple(image.GetSpacing()[::-1]),
                 origin=image.GetOrigin(), modality="CT")
    series = tmp_path / "series"
    write_dicom_series(mr, series, modality="CT")
    out = tmp_path / "out"
    run = dicomnode("process", "--pipeline", "liver-ct", str(series), "--output", str(out))
    assert run.returncode == 2
    assert "Pipeline 'liver-ct' accepts CT only: the pixels do not look like CT" in run.stderr
    assert not list(out.glob("*.dcm"))
    result = json.loads((out / "result.json").read_text())
    assert not result["ok"] and result["summary"]["refused"] and "do not look like CT" in result["error"]


def test_a_chest_ct_is_refused_by_liver_ct_and_an_earlier_runs_files_are_named(tmp_path) -> None:
    """lung1 is a chest CT whose lowest slice holds the liver's dome: liver-ct needs the abdomen below the
    lung bases and refuses it by name; files left in the output folder by an earlier run are said to be
    not this run's."""
    out = tmp_path / "out"
    out.mkdir()
    (out / "seg.dcm").write_bytes(b"an earlier run's SEG")
    run = dicomnode("process", "--pipeline", "liver-ct", str(shared_data("radiomics", "lung1-dicom")),
                    "--output", str(out))
    assert run.returncode == 2
    assert re.search(r"Pipeline 'liver-ct' needs the abdomen in the images, but their content shows "
                     r"neck \d+ mm, chest \d+ mm", run.stderr)
    assert "still holds 1 .dcm file(s) of an earlier run (seg.dcm)" in run.stderr
    result = json.loads((out / "result.json").read_text())
    assert result["summary"]["refused"] and "needs the abdomen" in result["error"]
