"""A site's model pipeline as an administrator sets it up: ``abdomen.yaml`` and ``abdomen.onnx`` dropped
into ``pipelines/``, run by ``dicomnode process --config``; its masks come back in the SEG and the SR."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
import yaml
from scipy import ndimage

from dicomnode.imaging.labelmaps import read_segmentation
from dicomnode.imaging.volume import load_series
from tests import onnx_models
from tests.phantoms import make_ct_phantom, write_dicom_series
from tests.support import REPO_ROOT

pytestmark = pytest.mark.integration
pytest.importorskip("onnxruntime")

PIPELINE = """\
name: abdomen
version: "1.0"
description: A site's abdominal model (here a tiny HU-band model built by the test)
modalities: [CT]
window: {center: 40, width: 400}
steps:
  - id: organs
    use: model.segment
    params:
      model: models/abdomen.onnx
      axes: xyz
      orientation: RAS
      spacing_mm: null
      intensity: {clip: [-1000, 1000], scale: [-1, 1]}
      patch: [48, 48, 16]
      overlap: 0.25
      labels: {1: Liver, 2: Bone}
      postprocess: {largest_component: [Liver]}
segments:
  - {from: organs, value: 1, label: Liver, structure: liver}
  - {from: organs, value: 2, label: Bone, structure: bone}
"""


def test_a_dropped_in_model_pipeline_writes_seg_and_sr(tmp_path: Path) -> None:
    ct = make_ct_phantom(shape=(20, 80, 80), spacing=(5.0, 3.6, 3.6), phase="portal", seed=5)
    series = tmp_path / "series"
    write_dicom_series(ct, series)
    pipelines = tmp_path / "pipelines"
    # scores on the scaled intensity s = HU / 1000: class 1 above 40.5 HU, class 2 above 400.5 HU (between
    # integer HU values, so float rounding cannot tip a voxel)
    onnx_models.linear_classes(pipelines / "models" / "abdomen.onnx", [(0, 0), (1, -0.0405), (2, -0.441)])
    (pipelines / "abdomen.yaml").write_text(PIPELINE)
    (tmp_path / "rules").mkdir()
    config = tmp_path / "dicomnode.yaml"
    config.write_text(yaml.safe_dump({"storage": {"path": str(tmp_path / "data")},
                                      "rules": {"path": str(tmp_path / "rules")}}))
    out = tmp_path / "out"
    run = subprocess.run(
        [sys.executable, "-m", "dicomnode", "process", "--config", str(config), "--pipeline", "abdomen",
         str(series), "--output", str(out)],
        capture_output=True, text=True, cwd=REPO_ROOT, timeout=300,
    )
    assert run.returncode == 0, run.stderr
    # what the model must have found, from the series' own HU
    volume = load_series(sorted(series.glob("*.dcm")))
    hu = volume.array.astype(np.float64)
    liver, count = ndimage.label((hu > 40) & (hu <= 400), structure=np.ones((3, 3, 3)))
    sizes = np.bincount(liver.ravel())[1:]
    liver = liver == 1 + int(np.argmax(sizes))
    bone = hu > 400
    assert count > 1 and liver.sum() > 1000 and bone.sum() > 100
    grid = sitk.Image(volume.to_sitk())
    seg = read_segmentation(out / "seg.dcm", grid)
    by_name = {name: mask for name, mask in seg.segments.values()}
    assert set(by_name) == {"Liver", "Bone"}
    assert np.array_equal(by_name["Liver"], liver)  # voxel for voxel, on the source grid
    assert np.array_equal(by_name["Bone"], bone)
    result = json.loads((out / "result.json").read_text())
    voxel_ml = float(np.prod(volume.spacing)) / 1000.0
    assert result["ok"] and result["summary"]["segments"]["Liver"]["voxels"] == int(liver.sum())
    estimates = result["summary"]["estimates"]  # what the model step reports about its run
    assert estimates["organs.provider"] == "CPUExecutionProvider"
    assert estimates["organs.windows"] == "8"  # x, y 80 in windows of 48: 0, 32; z 20 in 16: 0, 4
    report = hd.sr.srread(out / "sr.dcm")
    groups = report.content.get_volumetric_roi_measurement_groups()
    volumes = {}
    for group in groups:
        name = group.finding_sites[0].value.meaning if group.finding_sites else group.finding_type.meaning
        for measurement in group.get_measurements():
            if measurement.name.meaning == "Volume":
                volumes[name] = measurement.value
    assert volumes and set(volumes) <= {"Liver", "Bone"}
    assert volumes.get("Liver") == pytest.approx(liver.sum() * voxel_ml, rel=1e-3)
    provenance = pydicom.dcmread(out / "seg.dcm")
    assert provenance.SegmentSequence[0].SegmentLabel == "Liver"
