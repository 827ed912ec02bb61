"""Deterministic CT test data written with pydicom: series, multi-series studies, compressed variants.

    study = ct_study(tmp_path, series=2, slices=10)            # 512×512 int16 by default
    files = ct_series(tmp_path / "s", slices=5, rows=64, cols=64, compressed="rle", seed="x")
    files = jpeg2000_series(tmp_path / "j2k", count=5)          # real JPEG 2000 CT slices, UIDs filled in

UIDs are derived from ``seed`` (same seed → same UIDs). Geometry is consistent: axial slices at
``spacing`` mm along +z with ImagePositionPatient, ImageOrientationPatient, PixelSpacing, SliceThickness,
SpacingBetweenSlices; RescaleSlope 1 / RescaleIntercept -1024.
"""

from __future__ import annotations

import hashlib
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pydicom import dcmread
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, RLELossless, generate_uid

from tests.support import shared_data

JPEG2000_DIR = ("ct-abdomen-20", "dicom-jpeg2000")


def uid(seed: str, *parts: object) -> str:
    return generate_uid(entropy_srcs=[seed, *map(str, parts)])


def _pixels(rows: int, cols: int, z_index: int, slices: int) -> np.ndarray:
    """Stored values of a water ellipse (40 HU) in air with a slice-dependent bright disc."""
    y, x = np.mgrid[0:rows, 0:cols].astype(np.float32)
    cy, cx = (rows - 1) / 2, (cols - 1) / 2
    hu = np.full((rows, cols), -1000.0, dtype=np.float32)
    hu[((x - cx) / (0.42 * cols)) ** 2 + ((y - cy) / (0.34 * rows)) ** 2 <= 1] = 40.0
    radius = 0.05 * cols + 0.05 * cols * (z_index / max(1, slices - 1))
    hu[(x - cx * 1.2) ** 2 + (y - cy) ** 2 <= radius**2] = 300.0
    hu += (x + 3 * y + 7 * z_index) % 11  # deterministic texture
    return (hu + 1024).astype(np.int16)


def ct_dataset(
    *,
    study_uid: str,
    series_uid: str,
    sop_uid: str,
    index: int,
    slices: int,
    rows: int = 512,
    cols: int = 512,
    spacing: float = 2.0,
    pixel_spacing: float = 0.75,
    series_number: int = 1,
    instance_number: int | None = None,
    images_in_acquisition: bool = False,
    patient_id: str = "DN-TEST-001",
) -> Dataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = sop_uid
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    ds.FrameOfReferenceUID = uid(study_uid, "for")
    ds.PatientName = "Factory^CT"
    ds.PatientID = patient_id
    ds.StudyDate = ds.SeriesDate = "20240102"
    ds.StudyTime = "101500"
    ds.AccessionNumber = "ACC" + study_uid[-6:]
    ds.StudyID = "1"
    ds.Modality = "CT"
    ds.Manufacturer = "dicomnode-tests"
    ds.SeriesNumber = series_number
    ds.SeriesDescription = f"Factory CT {series_number}"
    ds.InstanceNumber = index + 1 if instance_number is None else instance_number
    ds.AcquisitionNumber = 1
    if images_in_acquisition:
        ds.ImagesInAcquisition = slices
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.ImagePositionPatient = [-(cols * pixel_spacing) / 2, -(rows * pixel_spacing) / 2, index * spacing]
    ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    ds.PixelSpacing = [pixel_spacing, pixel_spacing]
    ds.SliceThickness = spacing
    ds.SpacingBetweenSlices = spacing
    ds.SliceLocation = index * spacing
    ds.KVP = 120
    ds.RescaleIntercept = -1024
    ds.RescaleSlope = 1
    ds.RescaleType = "HU"
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = rows, cols
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 16, 15
    ds.PixelRepresentation = 1
    ds.WindowCenter, ds.WindowWidth = 40, 400
    ds.PixelData = _pixels(rows, cols, index, slices).tobytes()
    return ds


def ct_series(
    folder: Path,
    *,
    seed: str = "ct",
    study_uid: str | None = None,
    series_uid: str | None = None,
    series_number: int = 1,
    slices: int = 10,
    rows: int = 512,
    cols: int = 512,
    spacing: float = 2.0,
    compressed: str | None = None,
    images_in_acquisition: bool = False,
    indices: list[int] | None = None,
) -> list[Path]:
    """Write one CT series (``compressed``: None or ``"rle"``); ``indices`` writes only those slices."""
    folder.mkdir(parents=True, exist_ok=True)
    study_uid = study_uid or uid(seed, "study")
    series_uid = series_uid or uid(seed, "series", series_number)
    paths = []
    for index in range(slices) if indices is None else indices:
        ds = ct_dataset(
            study_uid=study_uid,
            series_uid=series_uid,
            sop_uid=uid(series_uid, "sop", index),
            index=index,
            slices=slices,
            rows=rows,
            cols=cols,
            spacing=spacing,
            series_number=series_number,
            images_in_acquisition=images_in_acquisition,
        )
        if compressed == "rle":
            ds.compress(RLELossless)
        elif compressed is not None:
            raise ValueError(f"Compression '{compressed}' is not supported by the factory (use 'rle').")
        path = folder / f"CT{series_number:02d}_{index + 1:04d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


@dataclass(frozen=True)
class CtStudy:
    study_uid: str
    series_uids: tuple[str, ...]
    files: tuple[Path, ...]


def ct_study(
    folder: Path, *, seed: str = "study", series: int = 2, slices: int = 10, **kwargs: object
) -> CtStudy:
    study_uid = uid(seed, "study")
    files: list[Path] = []
    series_uids = []
    for number in range(1, series + 1):
        series_uid = uid(seed, "series", number)
        series_uids.append(series_uid)
        files += ct_series(
            folder / f"series{number}",
            study_uid=study_uid,
            series_uid=series_uid,
            series_number=number,
            slices=slices,
            **kwargs,  # type: ignore[arg-type]
        )
    return CtStudy(study_uid, tuple(series_uids), tuple(files))


def jpeg2000_series(folder: Path, *, count: int = 20, seed: str = "j2k") -> list[Path]:
    """Real JPEG 2000 CT slices from shared data with their empty Study/Series/SOP (class) UIDs filled in.

    The encapsulated pixel data is copied unchanged (never decoded or re-encoded).
    """
    source = sorted(shared_data(*JPEG2000_DIR).iterdir())[:count]
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for path in source:
        ds = dcmread(path)
        ds.StudyInstanceUID = uid(seed, "study")
        ds.SeriesInstanceUID = uid(seed, "series")
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID
        ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID
        out = folder / f"{path.name}.dcm"
        ds.save_as(out, enforce_file_format=True)
        paths.append(out)
    return paths


def dataset_offset(raw: bytes) -> int:
    """Byte offset where the dataset starts in a Part 10 file (after the file meta group)."""
    if raw[128:132] != b"DICM":
        raise ValueError("Not a DICOM Part 10 file (no DICM prefix).")
    group_length = struct.unpack("<I", raw[140:144])[0]
    return 144 + group_length


def dataset_hash(path: Path) -> str:
    """SHA-256 of a Part 10 file's dataset bytes (the file meta group excluded)."""
    raw = path.read_bytes()
    return hashlib.sha256(raw[dataset_offset(raw) :]).hexdigest()
