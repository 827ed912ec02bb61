"""Reading segmentations back for evaluation: a single-segment SEG as highdicom writes it (segment
identification shared by every frame) is read like a multi-segment one."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import SimpleITK as sitk

from dicomnode.config import ViewerProfile
from dicomnode.imaging.labelmaps import evaluate, frame_segment_numbers
from dicomnode.imaging.volume import load_series
from dicomnode.outputs.api import ProcessedSeries, Provenance, Segment
from dicomnode.outputs.package import write_result_package
from dicomnode.outputs.uids import params_hash
from tests.support import shared_data


def test_single_segment_seg_is_evaluated_against_its_own_mask(tmp_path: Path) -> None:
    files = sorted(shared_data("ct-3slice").glob("0*.dcm"))
    volume = load_series([str(f) for f in files])
    mask = np.zeros(volume.shape, dtype=bool)
    mask[:, 200:300, 150:260] = True
    provenance = Provenance("test", "1", {}, params_hash({}), "0")
    processed = ProcessedSeries(volume.datasets, (Segment("Liver", "liver", mask),), provenance,
                                image=volume.array, spacing=volume.spacing)
    # ct-3slice is real GE data with an empty Specific Character Set: the writer must cope
    write_result_package(processed, tmp_path, ViewerProfile(send_enhanced=False, send_sr=False))

    seg = pydicom.dcmread(tmp_path / "seg.dcm")
    assert frame_segment_numbers(seg) == [1, 1, 1]
    reference = volume.to_sitk(mask.astype(np.uint8))
    sitk.WriteImage(reference, str(tmp_path / "reference.nrrd"))
    (result,) = evaluate(tmp_path / "seg.dcm", tmp_path / "reference.nrrd", {"Liver": "1"}).values()
    assert result.dice == 1.0
