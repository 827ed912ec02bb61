"""Input guards: what a pipeline accepts, judged from the pixels as well as the header.

A pipeline declares in its YAML what it accepts (the ``accepts`` key)::

    accepts:
      modalities: [CT]          # the header's Modality
      pixels: ct                # the pixels must look like CT: air near -1000 HU, soft tissue 0-100 HU
      regions: [abdomen]        # body regions the content must show: head | chest | abdomen
      min_extent_mm: 10         # ... over at least this length along the patient's long axis
                                # (default 0: at least one slice)

:func:`check_input` refuses a volume that fails any of them with :class:`InputRefused`, whose message
names the reason in one sentence (quoted by ``dicomnode process``, the job's error and the console).
Nothing is segmented before the guard has passed.

Regions are told apart slice by slice on the axial planes of the patient (the volume is reoriented
first, so coronal and sagittal stacks are judged the same way) from what a radiologist sees at a glance:

* **head** — a closed ring of bone (the skull, > 300 HU) enclosing at least 40 % of the body's
  cross-section, or bone covering a quarter of it (the vertex and the skull base);
* **chest** — air inside the body (lungs, < -400 HU) filling at least 8 % of the cross-section;
* **abdomen** — any other trunk-sized cross-section (> 50 cm²) without lung air or skull: abdomen and
  pelvis — but only below the chest;
* **neck** — such a cross-section *above* the chest (the longest run of chest slices, at least 30 mm, with
  gaps of up to 10 mm bridged) or, when no chest is shown, below the head: the neck and the shoulders are
  not an abdomen, whatever their cross-section.

Regions are judged on CT only (they need Hounsfield units); an MR pipeline checks modality and pixels.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from dicomnode.errors import PipelineError

if TYPE_CHECKING:
    import SimpleITK as sitk

log = logging.getLogger(__name__)

# the median of the voxels in -1100..-900 HU, the padding outside the reconstruction circle left out, on a
# calibrated CT read right: about -1000 (the real CTs here -995 and -999, a 300 mm crop of one -996); a
# rescale intercept of -1000 written for -1024 moves it by 24
AIR_TOLERANCE_HU = 15.0

REGIONS = ("head", "neck", "chest", "abdomen")
#: a run of chest slices this long (mm) is the chest; gaps this long (mm) inside it are bridged
CHEST_MIN_MM = 30.0
CHEST_GAP_MM = 10.0
PIXEL_KINDS = ("ct", "mr", "any")
#: a pipeline with steps needs a volume: ITK's recursive Gaussian filters need 4 samples along every axis
MIN_SAMPLES = 4
#: in-plane sampling of the region analysis (mm): coarse enough to be quick on 512x512x600 volumes
SAMPLE_MM = 3.0


class InputRefused(PipelineError):
    """The series is not what the pipeline accepts (modality, pixels or body region)."""


@dataclass(frozen=True)
class Accepts:
    """What a pipeline accepts (the ``accepts`` key of its YAML)."""

    modalities: tuple[str, ...] = ()
    pixels: str = "any"  # ct | mr | any
    regions: tuple[str, ...] = ()
    min_extent_mm: float = 0.0

    @classmethod
    def parse(cls, data: Mapping[str, Any] | None, modalities: tuple[str, ...] = ()) -> Accepts:
        """From the YAML mapping; ``modalities`` (the older top-level key) is the default modality list.
        Raises ValueError with a sentence for a bad key or value."""
        data = dict(data or {})
        unknown = sorted(set(data) - {"modalities", "pixels", "regions", "min_extent_mm"})
        if unknown:
            raise ValueError(f"unknown key(s) {unknown} in 'accepts'; expected modalities, pixels, regions, "
                             "min_extent_mm")
        pixels = str(data.get("pixels", "any"))
        if pixels not in PIXEL_KINDS:
            raise ValueError(f"'accepts.pixels' must be one of {', '.join(PIXEL_KINDS)}, got {pixels!r}")
        regions = tuple(str(r) for r in data.get("regions") or ())
        bad = [r for r in regions if r not in REGIONS]
        if bad:
            raise ValueError(f"'accepts.regions' names unknown region(s) {bad}; known: {', '.join(REGIONS)}")
        extent = float(data.get("min_extent_mm", 0.0))
        if extent < 0:
            raise ValueError(f"'accepts.min_extent_mm' must not be negative, got {extent!r}")
        mods = tuple(str(m) for m in data.get("modalities") or modalities)
        return cls(modalities=mods, pixels=pixels, regions=regions, min_extent_mm=extent)

    def to_json(self) -> dict[str, Any]:
        return {"modalities": list(self.modalities), "pixels": self.pixels, "regions": list(self.regions),
                "min_extent_mm": self.min_extent_mm}


@dataclass(frozen=True)
class PixelEvidence:
    """What the intensities look like: fractions of the voxels and the soft-tissue mode."""

    air_fraction: float  # voxels in -1100..-900 (air at about -1000 HU)
    air_level: float  # their median: -1000 on a calibrated CT whose rescale is read right
    soft_mode: float  # main histogram mode of the voxels in -200..300
    soft_fraction: float  # voxels in -200..300
    low: float  # 0.5th percentile
    high: float  # 99.5th percentile

    def air_offset(self, tolerance_hu: float = AIR_TOLERANCE_HU) -> str:
        """A sentence when the air reads more than ``tolerance_hu`` away from -1000 HU (a rescale intercept
        read or written wrong, e.g. -1000 for -1024: every HU value is off by as much), else ""."""
        if np.isnan(self.air_level) or abs(self.air_level + 1000.0) <= tolerance_hu:
            return ""
        offset = self.air_level + 1000.0
        return (f"The air in the images reads {self.air_level:.0f} HU, not -1000 HU as on a calibrated CT: "
                f"the rescale (RescaleIntercept/Slope) may be wrong, and every HU value here is then about "
                f"{offset:+.0f} HU off (intensities, lesion contrast and the HU statistics with it).")

    def looks_like_ct(self) -> tuple[bool, str]:
        """(True, "") or (False, the reason in one sentence)."""
        values = f"(values {self.low:.0f}…{self.high:.0f})"
        if self.air_fraction < 0.002:
            return False, (f"the pixels do not look like CT: only {100 * self.air_fraction:.2f} % of the "
                           f"voxels are air near -1000 HU {values}, which every CT shows outside the body "
                           "and in the lungs or bowel")
        if self.soft_fraction < 0.05 or not -150.0 <= self.soft_mode <= 150.0:
            return False, (f"the pixels do not look like CT: the soft-tissue peak is at {self.soft_mode:.0f} "
                           f"{values}, not between -150 and 150 HU (fat and soft tissue)")
        return True, ""


@dataclass(frozen=True)
class RegionEvidence:
    """Per axial slice of the patient (inferior → superior): the region it shows and its measures."""

    regions: tuple[str, ...]  # head | neck | chest | abdomen | none, per slice
    slice_mm: float  # spacing along the patient's long axis
    lung_fraction: tuple[float, ...] = ()
    skull_fraction: tuple[float, ...] = ()
    body_cm2: tuple[float, ...] = ()
    extent_mm: dict[str, float] = field(default_factory=dict)

    def describe(self) -> str:
        shown = [f"{name} {mm:.0f} mm" for name, mm in self.extent_mm.items() if mm > 0]
        return ", ".join(shown) or "no body"


def pixel_evidence(array: np.ndarray) -> PixelEvidence:
    from scipy import ndimage

    values = array.ravel()[:: max(1, array.size // 2_000_000)].astype(np.float32)
    air = (values >= -1100) & (values <= -900)
    # the padding outside the reconstruction circle is one stored value, the image's minimum (-1024 on most
    # scanners, written as air by some): not the air's level, which a small field of view may hardly show
    lowest = float(values.min()) if values.size else 0.0
    if np.mean(values == lowest) > 0.01:
        air &= values != lowest
    soft = values[(values >= -200) & (values <= 300)]
    mode = float("nan")
    if soft.size:
        hist, edges = np.histogram(soft, bins=np.arange(-200, 302, 4))
        hist = ndimage.gaussian_filter1d(hist.astype(float), 2.0)
        mode = float(edges[int(np.argmax(hist))] + 2)
    return PixelEvidence(
        air_fraction=float(np.mean(air)),
        air_level=float(np.median(values[air])) if air.any() else float("nan"),
        soft_mode=mode,
        soft_fraction=float(soft.size / max(values.size, 1)),
        low=float(np.percentile(values, 0.5)),
        high=float(np.percentile(values, 99.5)),
    )


def _axial(image: sitk.Image) -> sitk.Image:
    """The image reoriented so that axis 0 of its array runs inferior → superior (LPS)."""
    import SimpleITK as sitk

    return sitk.DICOMOrient(image, "LPS")


def region_evidence(image: sitk.Image) -> RegionEvidence:
    """Classify every axial slice of a CT ``image`` (HU) as head, chest, abdomen or none."""
    import SimpleITK as sitk
    from scipy import ndimage

    oriented = _axial(image)
    array = sitk.GetArrayViewFromImage(oriented)
    sz, sy, sx = oriented.GetSpacing()[::-1]
    step_y, step_x = max(1, int(SAMPLE_MM // sy)), max(1, int(SAMPLE_MM // sx))
    pixel_cm2 = sy * step_y * sx * step_x / 100.0
    regions, lungs, skulls, areas = [], [], [], []
    for k in range(array.shape[0]):
        plane = np.asarray(array[k, ::step_y, ::step_x], dtype=np.float32)
        body = plane > -500.0
        labels, n = ndimage.label(body)
        if n == 0:
            regions.append("none")
            lungs.append(0.0)
            skulls.append(0.0)
            areas.append(0.0)
            continue
        sizes = np.bincount(labels.ravel())
        sizes[0] = 0
        body = ndimage.binary_fill_holes(labels == int(np.argmax(sizes)))
        area = float(body.sum())
        lung = float(((plane < -400.0) & body).sum()) / area
        bone = (plane > 300.0) & body
        enclosed = ndimage.binary_fill_holes(bone) & ~bone
        skull = float(enclosed.sum()) / area
        if area * pixel_cm2 < 50.0:
            region = "none"
        elif skull >= 0.4 or float(bone.sum()) / area >= 0.25:  # the skull, or the calvarium's cap
            region = "head"
        elif lung >= 0.08:
            region = "chest"
        else:
            region = "abdomen"
        regions.append(region)
        lungs.append(round(lung, 3))
        skulls.append(round(skull, 3))
        areas.append(round(area * pixel_cm2, 1))
    regions = _neck_above_chest(regions, sz)
    extent = {name: regions.count(name) * sz for name in REGIONS}
    return RegionEvidence(tuple(regions), sz, tuple(lungs), tuple(skulls), tuple(areas), extent)


def _chest_run(regions: list[str], slice_mm: float) -> tuple[int, int] | None:
    """The longest run of chest slices (first, last index; gaps up to CHEST_GAP_MM bridged), or None
    when it is shorter than CHEST_MIN_MM (bowel gas in one slice is not a chest)."""
    gap = max(1, int(round(CHEST_GAP_MM / slice_mm)))
    best: tuple[int, int] | None = None
    start = last = -1
    for k, region in enumerate(regions):
        if region != "chest":
            continue
        if start < 0 or k - last - 1 > gap:
            start = k
        last = k
        if best is None or last - start > best[1] - best[0]:
            best = (start, last)
    if best is None or (best[1] - best[0] + 1) * slice_mm < CHEST_MIN_MM:
        return None
    return best


def _neck_above_chest(regions: list[str], slice_mm: float) -> list[str]:
    """Trunk-sized slices above the chest (or, without a chest, below the head) are the neck and the
    shoulders, not the abdomen. Axis 0 runs inferior → superior."""
    chest = _chest_run(regions, slice_mm)
    if chest is not None:
        above = range(chest[1] + 1, len(regions))
    elif "head" in regions:
        above = range(0, regions.index("head"))
    else:
        return regions
    return [("neck" if k in above and r == "abdomen" else r) for k, r in enumerate(regions)]


def check_input(
    accepts: Accepts, image: sitk.Image, modality: str, *, pipeline: str = "", volumetric: bool = True,
) -> dict[str, Any]:
    """Raise :class:`InputRefused` when ``image`` (real units) is not what ``accepts`` allows, or when a
    ``volumetric`` pipeline (one with steps) gets fewer than MIN_SAMPLES slices; return the evidence (for
    ``result.json``) when it is accepted."""
    import SimpleITK as sitk

    who = f"Pipeline '{pipeline}'" if pipeline else "The pipeline"
    if accepts.modalities and modality and modality not in accepts.modalities:
        raise InputRefused(f"{who} works on {', '.join(accepts.modalities)} but the series is '{modality}'.")
    # first: a slab too thin to filter is refused as that, whatever its few slices show
    if volumetric and min(image.GetSize()) < MIN_SAMPLES:
        size = image.GetSize()
        thin = int(np.argmin(size))
        raise InputRefused(
            f"{who} works on volumes of at least {MIN_SAMPLES} slices, but the series has "
            f"{size[thin]} along one axis ({size[thin] * image.GetSpacing()[thin]:.1f} mm; "
            f"{size[0]}x{size[1]}x{size[2]} voxels): too thin to segment or measure."
        )
    evidence: dict[str, Any] = {}
    needs_pixels = accepts.pixels != "any" or accepts.regions
    if needs_pixels:
        pixels = pixel_evidence(sitk.GetArrayViewFromImage(image))
        evidence["pixels"] = {"air_fraction": round(pixels.air_fraction, 4),
                              "air_level": round(pixels.air_level, 1),
                              "soft_tissue_mode": round(pixels.soft_mode, 1)}
        is_ct, why = pixels.looks_like_ct()
        air_offset = pixels.air_offset() if is_ct else ""
        if air_offset:
            evidence["warnings"] = [air_offset]
            log.warning("%s: %s", who, air_offset)
        if accepts.pixels == "ct" and not is_ct:
            raise InputRefused(f"{who} accepts CT only: {why}.")
        if accepts.pixels == "mr" and is_ct:
            raise InputRefused(
                f"{who} accepts MR only, but the pixels look like CT: {100 * pixels.air_fraction:.1f} % of "
                f"the voxels are air near -1000 HU and the soft-tissue peak is at {pixels.soft_mode:.0f} HU."
            )
        if accepts.regions and is_ct:
            regions = region_evidence(image)
            evidence["regions_mm"] = {k: round(v, 1) for k, v in regions.extent_mm.items()}
            found = sum(regions.extent_mm.get(r, 0.0) for r in accepts.regions)
            if found <= 0 or found < accepts.min_extent_mm:
                least = f" (at least {accepts.min_extent_mm:g} mm)" if accepts.min_extent_mm > 0 else ""
                raise InputRefused(
                    f"{who} needs the {' or '.join(accepts.regions)} in the images{least}, but their "
                    f"content shows {regions.describe()} "
                    "(judged from lung air, skull and body cross-section)."
                )
    log.debug("input accepted by %s: %s", pipeline, evidence)
    return evidence
