"""Coded concepts for result objects: structures (SNOMED CT), display colours, measurement codes.

Codes come from pydicom's code dictionary (``pydicom.sr.codedict.codes``) wherever it has them; the few it
lacks (left/right lung and kidney) are written out with their SNOMED CT values.
"""

from __future__ import annotations

from dataclasses import dataclass

from highdicom.sr import CodedConcept
from pydicom.sr.codedict import codes

from dicomnode.errors import OutputError

SCT = codes.SCT


@dataclass(frozen=True)
class StructureCode:
    """How one structure key is coded in a SEG segment and an SR finding."""

    category: CodedConcept
    type: CodedConcept
    color: tuple[int, int, int]  # default display colour, RGB 0-255
    finding_site: CodedConcept | None = None  # anatomic location for SR finding sites (organs)


def _cc(code) -> CodedConcept:  # type: ignore[no-untyped-def]
    return CodedConcept(code.value, code.scheme_designator, code.meaning)


_ANATOMY = _cc(SCT.AnatomicalStructure)  # CID 7150 "Anatomical Structure" (91723000)
_TISSUE = _cc(SCT.Tissue)
_ABNORMAL = _cc(SCT.MorphologicallyAbnormalStructure)  # 49755003


def _organ(code: CodedConcept, color: tuple[int, int, int]) -> StructureCode:
    return StructureCode(_ANATOMY, code, color, code)


# Colours follow 3D Slicer's GenericAnatomyColors where it has the structure.
STRUCTURES: dict[str, StructureCode] = {
    "liver": _organ(_cc(SCT.Liver), (221, 130, 101)),
    "spleen": _organ(_cc(SCT.Spleen), (157, 108, 162)),
    "lung": _organ(_cc(SCT.Lung), (197, 165, 145)),
    "lung-left": _organ(CodedConcept("44029006", "SCT", "Left lung"), (197, 165, 145)),
    "lung-right": _organ(CodedConcept("3341006", "SCT", "Right lung"), (197, 165, 145)),
    # abdominal organs segmented with the liver (seg-abdomen): IVC
    "inferior-vena-cava": _organ(_cc(SCT.InferiorVenaCava), (0, 151, 206)),
    "brain": _organ(_cc(SCT.Brain), (250, 250, 225)),
    "aorta": _organ(_cc(SCT.Aorta), (224, 97, 76)),
    "kidney": _organ(_cc(SCT.Kidney), (185, 102, 83)),
    "kidney-left": _organ(CodedConcept("18639004", "SCT", "Left kidney"), (185, 102, 83)),
    "kidney-right": _organ(CodedConcept("9846003", "SCT", "Right kidney"), (185, 102, 83)),
    "pancreas": _organ(_cc(SCT.Pancreas), (249, 180, 111)),
    "heart": _organ(_cc(SCT.Heart), (206, 110, 84)),
    "stomach": _organ(_cc(SCT.Stomach), (216, 132, 105)),
    "gallbladder": _organ(_cc(SCT.Gallbladder), (139, 150, 98)),
    "bladder": _organ(_cc(SCT.Bladder), (222, 154, 132)),
    "prostate": _organ(_cc(SCT.Prostate), (230, 158, 140)),
    "breast": _organ(_cc(SCT.Breast), (255, 225, 205)),
    "bone": StructureCode(_TISSUE, _cc(SCT.Bone), (241, 214, 145)),
    "neoplasm": StructureCode(_ABNORMAL, _cc(SCT.Neoplasm), (255, 255, 0)),
    "tumor": StructureCode(_ABNORMAL, _cc(SCT.Neoplasm), (255, 255, 0)),
    "lesion": StructureCode(_ABNORMAL, _cc(SCT.Lesion), (255, 255, 0)),
    "mass": StructureCode(_ABNORMAL, _cc(SCT.Mass), (255, 128, 0)),
}


def structure_code(key: str) -> StructureCode:
    """The coded concept of a structure key (``liver``, ``lung-left``, ``neoplasm`` …)."""
    try:
        return STRUCTURES[key.lower()]
    except KeyError:
        known = ", ".join(sorted(STRUCTURES))
        raise OutputError(f"Structure '{key}' has no code (known structures: {known}).") from None


# ---------------------------------------------------------------------------------------------- units
UNIT_ML = CodedConcept("ml", "UCUM", "milliliter")
UNIT_MM = CodedConcept("mm", "UCUM", "millimeter")
UNIT_MM2 = CodedConcept("mm2", "UCUM", "square millimeter")
UNIT_NONE = CodedConcept("1", "UCUM", "no units")
UNIT_HU = CodedConcept("[hnsf'U]", "UCUM", "Hounsfield unit")
UNIT_ARB = CodedConcept("[arb'U]", "UCUM", "arbitrary unit")
UNIT_VOXELS = CodedConcept("{voxels}", "UCUM", "voxels")


@dataclass(frozen=True)
class FeatureCode:
    """How one pyradiomics feature is reported in the SR: concept name and unit kind.

    An intensity statistic (``derivation`` set) is written as TID 1500 does it: the measured quantity as
    the concept name (:func:`intensity_quantity`: CT 112031 "Attenuation Coefficient", MR 110852 "MR signal
    intensity") with a 121401 "Derivation" modifier (Mean, Median, SD …); ``concept`` is used only for
    modalities without a quantity code. ``offset`` is added to pyradiomics' value (its kurtosis is
    IBSI's excess kurtosis + 3)."""

    concept: CodedConcept
    unit: str  # "ml", "mm", "mm2", "1", "intensity" (HU for CT, arbitrary otherwise), "voxels"
    derivation: CodedConcept | None = None
    offset: float = 0.0


def _ibsi(value: str, meaning: str) -> CodedConcept:
    return CodedConcept(value, "IBSI", meaning)


#: pyradiomics feature name → SR concept. Volume uses SNOMED CT 118565006 (``ml``); intensities are in the
#: image's real units (``[hnsf'U]`` for CT); the rest uses IBSI codes (pydicom's CIDs 7468-7477).
FEATURE_CODES: dict[str, FeatureCode] = {
    "volume_ml": FeatureCode(_cc(SCT.Volume), "ml"),
    "original_shape_VoxelVolume": FeatureCode(_cc(codes.cid7472.VolumeFromVoxelSummation), "mm3"),
    "original_shape_MeshVolume": FeatureCode(_cc(codes.cid7472.VolumeOfMesh), "mm3"),
    "original_firstorder_Mean": FeatureCode(_cc(SCT.Mean), "intensity", _cc(codes.cid7464.Mean)),
    "original_firstorder_Median": FeatureCode(_cc(SCT.Median), "intensity", _cc(codes.cid7464.Median)),
    "original_firstorder_StandardDeviation": FeatureCode(
        _cc(SCT.StandardDeviation), "intensity", _cc(codes.cid7464.StandardDeviation)
    ),
    "original_firstorder_Minimum": FeatureCode(_cc(SCT.Minimum), "intensity", _cc(codes.cid7464.Minimum)),
    "original_firstorder_Maximum": FeatureCode(_cc(SCT.Maximum), "intensity", _cc(codes.cid7464.Maximum)),
    # pyradiomics' percentiles are of the raw ROI intensities: IBSI's intensity-based statistics (QG58,
    # 8DWT), not its intensity-histogram percentiles (GPMT, OZ0C), which are of discretised grey levels
    "original_firstorder_10Percentile": FeatureCode(
        _ibsi("QG58", "10th percentile"), "intensity", _ibsi("QG58", "10th percentile")
    ),
    "original_firstorder_90Percentile": FeatureCode(
        _ibsi("8DWT", "90th percentile"), "intensity", _ibsi("8DWT", "90th percentile")
    ),
    "original_firstorder_Skewness": FeatureCode(_ibsi("KE2A", "Skewness"), "1"),
    # IBSI IPH6 is the excess kurtosis; pyradiomics reports kurtosis (excess + 3)
    "original_firstorder_Kurtosis": FeatureCode(_ibsi("IPH6", "Kurtosis"), "1", offset=-3.0),
    "original_firstorder_Entropy": FeatureCode(_ibsi("TLU2", "Intensity Histogram Entropy"), "1"),
    "original_firstorder_Energy": FeatureCode(_ibsi("N8CA", "Intensity Energy"), "1"),
    "original_shape_SurfaceArea": FeatureCode(_ibsi("C0JK", "Surface Area of Mesh"), "mm2"),
    "original_shape_Sphericity": FeatureCode(_ibsi("QCFX", "Sphericity"), "1"),
    "original_shape_Maximum3DDiameter": FeatureCode(_ibsi("L0JK", "Maximum 3D Diameter of a Mesh"), "mm"),
    "original_shape_MajorAxisLength": FeatureCode(_ibsi("TDIC", "Major Axis in 3D Length"), "mm"),
    "original_shape_MinorAxisLength": FeatureCode(_ibsi("P9VJ", "Minor Axis in 3D Length"), "mm"),
    "original_shape_LeastAxisLength": FeatureCode(_ibsi("7J51", "Least Axis in 3D Length"), "mm"),
    "original_shape_Elongation": FeatureCode(_ibsi("Q3CK", "Elongation"), "1"),
    "original_shape_Flatness": FeatureCode(_ibsi("N17B", "Flatness"), "1"),
    "original_glcm_Contrast": FeatureCode(_ibsi("ACUI", "Contrast of GLCM"), "1"),
    "original_glcm_Correlation": FeatureCode(_ibsi("NI2N", "Correlation of GLCM"), "1"),
    "original_glcm_JointEntropy": FeatureCode(_ibsi("TU9B", "Joint Entropy of GLCM"), "1"),
    "original_glrlm_RunPercentage": FeatureCode(_ibsi("9ZK5", "Run Percentage"), "1"),
    "original_glszm_ZonePercentage": FeatureCode(_ibsi("P30P", "Size Zone Percentage"), "1"),
    "original_ngtdm_Coarseness": FeatureCode(_ibsi("QCDE", "Coarseness of NGTDM"), "1"),
}

#: Features that go into the SR when a pipeline does not choose: first-order only, which is cheap for
#: any organ size. Shape features (Maximum3DDiameter, Sphericity …) cost O(surface vertices²) in
#: pyradiomics: pipelines that report lesions add them through ``features``.
DEFAULT_SR_FEATURES: tuple[str, ...] = (
    "volume_ml",
    "original_firstorder_Mean",
    "original_firstorder_StandardDeviation",
    "original_firstorder_Median",
    "original_firstorder_Minimum",
    "original_firstorder_Maximum",
    "original_firstorder_10Percentile",
    "original_firstorder_90Percentile",
)
#: A suggested list for lesion pipelines (adds the shape features).
LESION_SR_FEATURES: tuple[str, ...] = DEFAULT_SR_FEATURES + (
    "original_shape_Maximum3DDiameter",
    "original_shape_MajorAxisLength",
    "original_shape_MinorAxisLength",
    "original_shape_Sphericity",
)

_UNITS = {
    "ml": UNIT_ML,
    "mm": UNIT_MM,
    "mm2": UNIT_MM2,
    "mm3": CodedConcept("mm3", "UCUM", "cubic millimeter"),
    "1": UNIT_NONE,
    "voxels": UNIT_VOXELS,
}


def feature_code(name: str) -> FeatureCode:
    try:
        return FEATURE_CODES[name]
    except KeyError:
        known = ", ".join(sorted(FEATURE_CODES))
        raise OutputError(f"Feature '{name}' has no SR code (features with codes: {known}).") from None


#: The measured quantity of intensity statistics per modality (TID 1500 / dcmqi convention).
INTENSITY_QUANTITY: dict[str, CodedConcept] = {
    "CT": _cc(codes.DCM.AttenuationCoefficient),  # 112031
    "MR": _cc(codes.DCM.MRSignalIntensity),  # 110852
}
DERIVATION = _cc(codes.DCM.Derivation)  # 121401

#: How people read units (console, result.json, captures): UCUM code → display text.
DISPLAY_UNITS = {"[hnsf'U]": "HU", "ml": "ml", "mm": "mm", "mm2": "mm²", "mm3": "mm³", "1": "",
                 "[arb'U]": "", "{voxels}": "voxels"}


def display_unit(ucum: str) -> str:
    return DISPLAY_UNITS.get(ucum, ucum)


def display_value(value: float) -> str:
    """A measurement as people read it: no exponent (18660, 723.8, 0.912)."""
    if value != value:  # NaN
        return "n/a"
    magnitude = abs(value)
    if magnitude >= 100:
        return f"{value:,.0f}" if magnitude >= 10000 else f"{value:.1f}"
    if magnitude >= 1 or value == 0:
        return f"{value:.2f}".rstrip("0").rstrip(".")
    return f"{value:.3g}"


def intensity_quantity(modality: str) -> CodedConcept | None:
    return INTENSITY_QUANTITY.get(modality.upper())


def feature_unit(code: FeatureCode, modality: str) -> CodedConcept:
    """The UCUM unit of a feature for images of ``modality`` (intensities are HU only for CT)."""
    if code.unit == "intensity":
        return UNIT_HU if modality.upper() == "CT" else UNIT_ARB
    return _UNITS[code.unit]


# ------------------------------------------------------------------------------ qualitative evaluations
#: Lesion appearance relative to its organ on CT (CID 6009 density codes under 112118 "Density"); no
#: verified concept name exists here for MR signal, so MR lesions carry none.
DENSITY = CodedConcept("112118", "DCM", "Density")
LESION_KIND_CODES: dict[tuple[str, str], CodedConcept] = {
    ("CT", "hypo"): CodedConcept("129746008", "SCT", "Low density (not containing fat) lesion"),
    ("CT", "hyper"): CodedConcept("129744006", "SCT", "High density lesion"),
    ("CT", "fat"): CodedConcept("129747004", "SCT", "Fat containing (radiolucent) lesion"),
}

#: The node's own coding scheme for QC verdicts (DICOM's 99-prefixed private scheme convention); the
#: values are the QC contract's (dicomnode.imaging.qc): status pass|warn|fail, flags.
QC_SCHEME = "99DICOMNODE"
QC_STATUS = CodedConcept("QC-STATUS", QC_SCHEME, "Segmentation QC verdict")
QC_FLAG = CodedConcept("QC-FLAG", QC_SCHEME, "Segmentation QC flag")


def qc_value(value: str) -> CodedConcept:
    return CodedConcept(f"QC-{value.upper()}", QC_SCHEME, value.replace("_", " "))


def lesion_kind_code(modality: str, kind: str) -> tuple[CodedConcept, CodedConcept] | None:
    """(concept name, value) of a lesion's appearance, or None when there is no code for it."""
    value = LESION_KIND_CODES.get((modality.upper(), kind))
    if value is None:
        return None
    return DENSITY, value
