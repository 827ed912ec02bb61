"""Secondary capture for viewers that show neither SEG nor SR: the key slices as coloured pictures.

One Multi-frame True Colour Secondary Capture image (SOP class 1.2.840.10008.5.1.4.1.1.7.4): one RGB frame
per key slice (the slices the SR outlines and the KOS flags), the source image under the organ window (the
pipeline's first window, else the source's) as grey, each segment's in-plane outline in its display colour
(the SEG's colour), and "NOT FOR DIAGNOSIS" with a one-line summary per segment burned in at the top left
(BurnedInAnnotation YES). Its pixel values are colours for looking at, not measurements: nothing in it keeps
Hounsfield units, so no ROI tool can read a wrong number off it.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw, ImageFont
from pydicom import Dataset
from pydicom.dataset import FileMetaDataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import ExplicitVRLittleEndian
from scipy import ndimage

from dicomnode.errors import OutputError
from dicomnode.imaging.qc import QCFlag
from dicomnode.outputs.api import ProcessedSeries, Segment, Window
from dicomnode.outputs.derived import _source_reference
from dicomnode.outputs.ko import key_slices
from dicomnode.outputs.provenance import MANUFACTURER, apply_provenance

NOT_FOR_DIAGNOSIS = "NOT FOR DIAGNOSIS"
#: Multi-frame True Color Secondary Capture Image Storage.
SC_TRUE_COLOR_MULTIFRAME = "1.2.840.10008.5.1.4.1.1.7.4"
OUTLINE_PX = 2  # outline thickness in pixels, inside the segment's boundary
TEXT_COLOUR = (255, 255, 255)

#: Patient, study and patient-study attributes copied from the source (Type 2 ones are always written).
COPIED = (
    "SpecificCharacterSet", "PatientName", "PatientID", "IssuerOfPatientID", "PatientBirthDate",
    "PatientSex", "PatientAge", "PatientSize", "PatientWeight", "StudyInstanceUID", "StudyDate", "StudyTime",
    "ReferringPhysicianName", "StudyID", "AccessionNumber", "StudyDescription",
)
TYPE2 = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyDate", "StudyTime",
         "ReferringPhysicianName", "StudyID", "AccessionNumber")


@dataclass(frozen=True)
class CaptureSpec:
    series_number: int = 904
    description: str = "key images"


def summary_lines(segments: Sequence[Segment], measurements: Mapping[str, Mapping[str, float]],
                  unit: str) -> list[str]:
    """One short line per segment: volume and mean intensity where known; a truncated segment's volume is a
    lower bound (``>=``: the burned-in font has no ``≥`` glyph), as in the SR and the CLI."""
    lines = []
    for segment in segments:
        values = measurements.get(segment.label, {})
        parts = [segment.label]
        if "volume_ml" in values:
            truncated = segment.qc is not None and QCFlag.TRUNCATED in segment.qc.flags
            parts.append(f"{'>= ' if truncated else ''}{values['volume_ml']:,.1f} ml")
        if "original_firstorder_Mean" in values:
            parts.append(f"mean {values['original_firstorder_Mean']:.0f} {unit}".rstrip())
        lines.append(" ".join(parts))
    return lines


def outline(mask: np.ndarray, thickness: int = OUTLINE_PX) -> np.ndarray:
    """The boundary band (``thickness`` pixels, inside) of a 2-D mask."""
    if not mask.any():
        return mask
    inner = ndimage.binary_erosion(mask, structure=ndimage.generate_binary_structure(2, 1),
                                   iterations=thickness, border_value=0)
    return mask & ~inner


def grey(values: np.ndarray, window: tuple[float, float]) -> np.ndarray:
    """uint8 grey levels of ``values`` (real units) under the (centre, width) window (DICOM linear)."""
    centre, width = window
    low = centre - width / 2.0
    return np.clip((values - low) / max(width, 1.0) * 255.0, 0, 255).round().astype(np.uint8)


def display_window(processed: ProcessedSeries) -> tuple[float, float]:
    """The pipeline's default (organ) window, else the source's first window, else the image's 1–99 %."""
    if processed.windows:
        first: Window = processed.windows[0]
        return float(first.center), float(first.width)
    if processed.window is not None:
        return float(processed.window[0]), float(processed.window[1])
    source = processed.sources[0]
    if "WindowCenter" in source and "WindowWidth" in source:
        centre, width = source["WindowCenter"].value, source["WindowWidth"].value
        centre = centre[0] if isinstance(centre, list | tuple) or getattr(centre, "VM", 1) > 1 else centre
        width = width[0] if isinstance(width, list | tuple) or getattr(width, "VM", 1) > 1 else width
        return float(centre), float(width)
    low, high = np.percentile(np.asarray(processed.image), [1, 99])
    return float((low + high) / 2), float(max(high - low, 1.0))


def render_frame(image: np.ndarray, masks: Sequence[tuple[np.ndarray, tuple[int, int, int]]],
                 lines: Sequence[str], window: tuple[float, float]) -> np.ndarray:
    """One RGB frame (rows, columns, 3) uint8: windowed grey, coloured outlines (later segments on top),
    the text block at the top left in white on a dark shadow."""
    g = grey(np.asarray(image, dtype=np.float64), window)
    rgb = np.repeat(g[:, :, None], 3, axis=2)
    for mask, colour in masks:
        rgb[outline(np.asarray(mask, dtype=bool))] = colour
    rows, columns = g.shape
    size = max(10, min(rows, columns) // 32)
    font = ImageFont.load_default(size=size)
    picture = Image.fromarray(rgb, mode="RGB")
    draw = ImageDraw.Draw(picture)
    x = y = max(2, size // 2)
    for line in lines:
        draw.text((x + 1, y + 1), line, fill=(0, 0, 0), font=font)
        draw.text((x, y), line, fill=TEXT_COLOUR, font=font)
        y += int(size * 1.3)
    return np.asarray(picture, dtype=np.uint8)


def patient_orientation(source: Dataset) -> list[str]:
    """PatientOrientation (row direction, column direction) from ImageOrientationPatient: L/R, P/A, H/F."""
    try:
        cosines = [float(v) for v in source.ImageOrientationPatient]
    except (AttributeError, TypeError, ValueError):
        return []

    def letters(vector: Sequence[float]) -> str:
        names = (("L", "R"), ("P", "A"), ("H", "F"))
        order = sorted(range(3), key=lambda i: -abs(vector[i]))
        return "".join(names[i][0 if vector[i] > 0 else 1] for i in order if abs(vector[i]) > 0.25)[:3]

    return [letters(cosines[:3]), letters(cosines[3:])]


def build_capture(
    processed: ProcessedSeries,
    measurements: Mapping[str, Mapping[str, float]],
    uids,  # noqa: ANN001 - outputs.uids.UIDFactory
    spec: CaptureSpec = CaptureSpec(),
    now: dt.datetime | None = None,
) -> Dataset:
    """The Multi-frame True Colour SC of ``processed``'s key slices (a pydicom dataset, ready to write)."""
    if processed.image is None:
        raise OutputError("A secondary capture needs the source image in the processed series.")
    image = np.asarray(processed.image)
    sources = processed.sources
    if image.shape[0] != len(sources):
        raise OutputError(
            f"The source image has {image.shape[0]} slices but the series has {len(sources)} sources."
        )
    slices = key_slices(processed.segments)
    if not slices:
        raise OutputError("Every segment is empty: there is no key image to capture.")
    window = display_window(processed)
    modality = str(sources[0].get("Modality", ""))
    unit = "HU" if modality == "CT" else ""
    summary = summary_lines(processed.segments, measurements, unit)
    frames = []
    labels = []
    for index, found in slices.items():
        masks = [(s.mask[index], s.color) for s in processed.segments]
        number = sources[index].get("InstanceNumber", index + 1)
        header = [f"{NOT_FOR_DIAGNOSIS} - image {number}: {', '.join(found)}"]
        frames.append(render_frame(image[index], masks, header + summary, window))
        labels.append(f"IMAGE {number}"[:16])
    pixels = np.stack(frames)
    first = sources[0]
    now = now or dt.datetime.now()
    prov = processed.provenance
    ds = Dataset()
    for keyword in COPIED:
        if keyword in first:
            ds[keyword] = first[keyword]
    for keyword in TYPE2:
        if keyword not in ds:
            setattr(ds, keyword, "")
    if not ds.get("SpecificCharacterSet"):
        ds.SpecificCharacterSet = "ISO_IR 100"
    ds.SOPClassUID = SC_TRUE_COLOR_MULTIFRAME
    ds.SOPInstanceUID = uids("capture", 0)
    ds.SeriesInstanceUID = uids("capture-series")
    ds.Modality = "OT"
    ds.Laterality = first.get("Laterality", "")  # Type 2C in General Series: empty = unknown to us
    ds.SeriesNumber = spec.series_number
    ds.InstanceNumber = 1
    ds.SeriesDescription = f"{NOT_FOR_DIAGNOSIS} {prov.pipeline} {spec.description}"[:64]
    ds.SeriesDate = ds.ContentDate = ds.DateOfSecondaryCapture = now.strftime("%Y%m%d")
    ds.SeriesTime = ds.ContentTime = ds.TimeOfSecondaryCapture = now.strftime("%H%M%S")
    ds.Manufacturer = MANUFACTURER
    ds.ManufacturerModelName = prov.pipeline[:64]
    ds.SoftwareVersions = prov.node_version[:64]
    ds.ConversionType = "WSD"  # workstation
    ds.ImageType = ["DERIVED", "SECONDARY"]
    ds.PatientOrientation = patient_orientation(first)
    ds.BurnedInAnnotation = "YES"
    ds.RecognizableVisualFeatures = "NO"
    ds.ImageComments = (f"{NOT_FOR_DIAGNOSIS}: key slices with segmentation outlines (segment colours) and "
                        f"measurements burned in; window {window[0]:g}/{window[1]:g}. "
                        "Pixel values are colours, not measurements.")
    ds.DerivationDescription = f"{prov.pipeline} {prov.pipeline_version}: outlines and measurements burned " \
                               f"into the key slices ({NOT_FOR_DIAGNOSIS})"
    ds.SourceImageSequence = DicomSequence([_source_reference(sources[i]) for i in slices])
    ds.SamplesPerPixel = 3
    ds.PhotometricInterpretation = "RGB"
    ds.PlanarConfiguration = 0
    ds.BitsAllocated = ds.BitsStored = 8
    ds.HighBit = 7
    ds.PixelRepresentation = 0
    ds.NumberOfFrames = len(frames)
    ds.Rows, ds.Columns = int(pixels.shape[1]), int(pixels.shape[2])
    ds.FrameIncrementPointer = 0x00182002  # Frame Label Vector
    ds.FrameLabelVector = labels
    ds.PixelData = pixels.tobytes()
    ds["PixelData"].VR = "OB"
    apply_provenance(ds, prov)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta = meta
    return ds
