"""Independent validation of the result package with other tools' readers and validators.

- dicom3tools' ``dciodvfy`` must report no error for SEG, SR, derived and capture images. Warnings are
  accepted only if the source CT itself triggers them (inherited header content: SECTRA/99CT_VIA coding
  schemes, PARTIALBODY, retired Estimated Dose Saving, requesting-physician PN form, extra request
  attributes) or if they are one of ours, listed in OUR_ACCEPTED_WARNINGS.
- dcmqi's ``segimage2itkimage`` reads the SEG back; resampled onto the source grid it equals the mask.
- highdicom ``segread``/``srread`` read them back; the structure is compared with reference objects.
"""

from __future__ import annotations

import dataclasses
import json
import re
import subprocess
import sys
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
import SimpleITK as sitk

from dicomnode.config import ViewerProfile
from dicomnode.imaging.qc import QCFlag, QCStatus, SegmentQC
from dicomnode.imaging.volume import read_volume, resample_onto
from dicomnode.outputs.codes import DEFAULT_SR_FEATURES
from dicomnode.outputs.package import write_result_package
from tests.support import require_tool, shared_data

pytestmark = pytest.mark.integration

OUR_ACCEPTED_WARNINGS = (
    # our provenance private block (creator "DICOMNODE 1.0", group 0x0077): private tags are unknown to it
    re.compile(r"^\(0x0077,0x10[0-9a-f]{2}\)\s+\?\s+- Warning - Unrecognized tag"),
    # derived series and capture of a source without Laterality: sent empty (= unknown) instead of missing
    re.compile(r"^Warning - is only permitted to be empty when actually unknown.*attribute <Laterality>$"),
    # the QC verdicts' own coding scheme (dicomnode.outputs.codes.QC_SCHEME: DICOM's 99-prefixed private
    # scheme convention) is not among the designators it knows
    re.compile(r"^Warning - Unrecognized defined term <99DICOMNODE> for value 1 of attribute "
               r"<Coding Scheme Designator>$"),
)


def dciodvfy(path: Path) -> tuple[list[str], list[str]]:
    tool = require_tool("/usr/bin/dciodvfy")
    run = subprocess.run([tool, str(path)], capture_output=True, text=True, timeout=120)
    lines = [line.strip() for line in (run.stdout + run.stderr).splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("Error") or " - Error - " in line]
    warnings = [line for line in lines if "Warning" in line]
    return errors, warnings


@pytest.fixture(scope="module")
def processed(real_ct_processed):  # noqa: ANN001
    return real_ct_processed


@pytest.fixture(scope="module")
def package(processed, tmp_path_factory):
    """A package with given measurements (no pyradiomics run: volumes still come from the masks) and a QC
    verdict on the spleen whose flags' codes are longer than a CodeValue holds (Long Code Value)."""
    values = {s.label: {f: 1.0 for f in DEFAULT_SR_FEATURES if f != "volume_ml"} for s in processed.segments}
    qc = SegmentQC(QCStatus.WARN, (QCFlag.SEARCH_LIMITED, QCFlag.IMPLAUSIBLE_VOLUME), ("limited", "large"))
    segments = tuple(dataclasses.replace(s, qc=qc) if s.label == "Spleen" else s for s in processed.segments)
    out = tmp_path_factory.mktemp("validation")
    write_result_package(dataclasses.replace(processed, segments=segments, measurements=values), out,
                         ViewerProfile(secondary_capture=True))
    return out


@pytest.mark.parametrize("name", ["seg.dcm", "sr.dcm", "ko.dcm", "derived/IM00001.dcm", "derived/IM00020.dcm",
                                  "capture.dcm"])
def test_dciodvfy_reports_no_errors(package, processed, name):
    source = next(iter(sorted(shared_data("ct-abdomen-20", "dicom").glob("*.dcm"))))
    _, inherited = dciodvfy(source)
    errors, warnings = dciodvfy(package / name)
    assert errors == []
    ours = [w for w in warnings if w not in inherited]
    unexpected = [w for w in ours if not any(p.search(w) for p in OUR_ACCEPTED_WARNINGS)]
    assert unexpected == []


def test_dcmqi_reads_the_seg_back_onto_the_source_grid(package, processed, tmp_path):
    tool = Path(sys.executable).parent / "segimage2itkimage"
    tool = Path(require_tool(str(tool) if tool.exists() else "segimage2itkimage"))
    run = subprocess.run(
        [str(tool), "--inputDICOM", str(package / "seg.dcm"), "--outputDirectory", str(tmp_path),
         "-t", "nrrd", "-p", "seg"],
        capture_output=True, text=True, timeout=120,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    meta = json.loads((tmp_path / "seg-meta.json").read_text())
    labels = [item["SegmentLabel"] for group in meta["segmentAttributes"] for item in group]
    assert labels == ["Liver", "Spleen"]
    volume = read_volume(shared_data("ct-abdomen-20", "dicom"))
    for number, segment in enumerate(processed.segments, start=1):
        image = sitk.ReadImage(str(tmp_path / f"seg-{number}.nrrd"))
        back = resample_onto(image, volume) > 0
        assert np.array_equal(back, segment.mask), segment.label


def test_dciodvfy_parser_sees_errors_in_the_source_ct():
    """The source CT lacks General Series Laterality (Type 2C): proves the error parsing is not blind."""
    source = next(iter(sorted(shared_data("ct-abdomen-20", "dicom").glob("*.dcm"))))
    errors, _ = dciodvfy(source)
    assert any("Laterality" in e for e in errors)


def _kw(ds) -> set[str]:
    return {e.keyword for e in ds if e.keyword}


def test_seg_structure_matches_highdicom_reference(package):
    ours = pydicom.dcmread(package / "seg.dcm")
    ref = pydicom.dcmread(shared_data("reference-objects", "seg_image_ct_binary.dcm"))
    deidentification = {"DeidentificationMethod", "PatientIdentityRemoved", "RequestingService"}
    assert _kw(ref) - deidentification <= _kw(ours)
    assert _kw(ref.SegmentSequence[0]) <= _kw(ours.SegmentSequence[0])
    assert _kw(ref.SharedFunctionalGroupsSequence[0]) <= _kw(ours.SharedFunctionalGroupsSequence[0])
    assert _kw(ref.PerFrameFunctionalGroupsSequence[0]) <= _kw(ours.PerFrameFunctionalGroupsSequence[0])
    assert hd.seg.segread(package / "seg.dcm").number_of_segments == 2


def _concepts(item) -> set[tuple[str, str]]:
    return {(c.ConceptNameCodeSequence[0].CodingSchemeDesignator, c.ConceptNameCodeSequence[0].CodeValue)
            for c in item.ContentSequence}


def test_sr_structure_matches_dcmqi_reference(package):
    ours = pydicom.dcmread(package / "sr.dcm")
    ref = pydicom.dcmread(shared_data("reference-objects", "dcmqi-sr-example", "sr.dcm"))
    assert ours.SOPClassUID == pydicom.uid.Comprehensive3DSRStorage  # the reference is Comprehensive SR
    assert ours.ContentTemplateSequence[0].TemplateIdentifier == "1500"
    assert ours.ConceptNameCodeSequence[0].CodeValue == ref.ConceptNameCodeSequence[0].CodeValue == "126000"
    ref_group = ref.ContentSequence[-1].ContentSequence[0]
    # each finding: its planar group first (OHIF), then the volumetric group that references the SEG
    our_group = ours.ContentSequence[-1].ContentSequence[1]
    # tracking identifier/UID, finding, referenced segment, source series for segmentation
    required = {("DCM", "112039"), ("DCM", "112040"), ("DCM", "121071"), ("DCM", "121191"), ("DCM", "121232")}
    assert required <= _concepts(ref_group)
    assert required <= _concepts(our_group)
    root = _concepts(ours)
    assert ("DCM", "111028") in root  # Image Library, as in the reference
    assert ("DCM", "111028") in _concepts(ref)
    report = hd.sr.srread(package / "sr.dcm")
    assert len(report.content.get_volumetric_roi_measurement_groups()) == 2


def test_dcmqi_reads_the_sr_with_quantity_and_derivation(package, tmp_path):
    """dcmqi's tid1500reader: one tracking UID per finding (planar + volumetric), intensity statistics as
    Attenuation Coefficient with a Derivation, as in dcmqi's own examples."""
    import shutil

    reader = shutil.which("tid1500reader")
    if reader is None:
        pytest.skip("dcmqi's tid1500reader is not installed")
    out = tmp_path / "sr.json"
    subprocess.run([reader, "--inputDICOM", str(package / "sr.dcm"), "--outputMetadata", str(out)],
                   check=True, capture_output=True, timeout=120)
    groups = json.loads(out.read_text())["Measurements"]
    by_uid: dict[str, list] = {}
    for group in groups:
        by_uid.setdefault(group["TrackingUniqueIdentifier"], []).append(group["TrackingIdentifier"])
    assert sorted(by_uid.values()) == [["Liver", "Liver"], ["Spleen", "Spleen"]]
    items = [m for g in groups for m in g["measurementItems"]]
    derived = {(m["quantity"]["CodeValue"], m["derivationModifier"]["CodeMeaning"]) for m in items
               if "derivationModifier" in m}
    assert ("112031", "Mean") in derived and ("112031", "Standard Deviation") in derived
    assert not [m for m in items if m["quantity"]["CodeValue"] == "373098007"]  # Mean is no quantity
