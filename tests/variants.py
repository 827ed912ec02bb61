"""Realistic variants of a real CT volume with its reference labels, for accuracy tests and benchmarks.

Each variant returns ``(image, labels)``: a SimpleITK float32 HU image and the reference label map
(uint8/int, same grid) transformed consistently, so a segmentation of the variant is scored against
the variant's own reference::

    image, labels = prone(image, labels)          # patient turned over: rows and columns reversed
    image, labels = feet_first(image, labels)     # FFS: slices and columns reversed
    image, labels = thick_slices(image, labels, 5.0)
    image, labels = fatty_liver(image, labels, liver_value=5, target_hu=10.0, seed=0)
    image, labels = native_phase(image, labels, enhancing_values=(...), seed=0)
    image, labels = crop(image, labels, keep_fraction=0.7, side="right")
    image, labels = slab(image, labels, keep_mm=20.0, end="superior")   # a shorter craniocaudal extent
    image, labels = reslice(image, labels, "coronal")   # the same voxels as a coronal (or sagittal) stack
    array, nodule = juxtapleural(array, spacing, slice_index=20, radius_mm=9.0)  # a nodule on the pleura
    array, ball, centre = subcapsular(array, spacing, liver, angle_deg=150.0, diameter_mm=20.0)  # bulging

Geometry is always rewritten with the pixels (origin and direction cosines follow the reversal), so
every voxel keeps its patient position: what a scanner would write for the same patient, not a
mislabelled image.
"""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

BLOOD = (63, 64)  # the reference's vessels that fill the liver's branches: IVC, portal/splenic vein


def _reverse(image: sitk.Image, axes: tuple[bool, bool, bool]) -> sitk.Image:
    """Reverse the (x, y, z) axes flagged; origin and direction updated so positions are unchanged."""
    arr = sitk.GetArrayFromImage(image)
    slicer = tuple(slice(None, None, -1) if flip else slice(None) for flip in axes[::-1])
    out = sitk.GetImageFromArray(np.ascontiguousarray(arr[slicer]))
    size = image.GetSize()
    corner = [size[i] - 1 if axes[i] else 0 for i in range(3)]
    out.SetOrigin(image.TransformIndexToPhysicalPoint(corner))
    d = np.array(image.GetDirection()).reshape(3, 3)
    d = d @ np.diag([-1.0 if f else 1.0 for f in axes])
    out.SetDirection(tuple(d.ravel()))
    out.SetSpacing(image.GetSpacing())
    return out


def prone(image: sitk.Image, labels: sitk.Image) -> tuple[sitk.Image, sitk.Image]:
    """The patient lies prone: rows and columns run the other way (ImageOrientationPatient −1,0,0/0,−1,0)."""
    return _reverse(image, (True, True, False)), _reverse(labels, (True, True, False))


def feet_first(image: sitk.Image, labels: sitk.Image) -> tuple[sitk.Image, sitk.Image]:
    """Feet first supine: the slice order and the columns are reversed."""
    return _reverse(image, (True, False, True)), _reverse(labels, (True, False, True))


def thick_slices(image: sitk.Image, labels: sitk.Image, spacing_mm: float) -> tuple[sitk.Image, sitk.Image]:
    """Slices of ``spacing_mm`` (averaged like a thick reconstruction); labels by majority."""
    old = image.GetSpacing()
    factor = spacing_mm / old[2]
    size = [image.GetSize()[0], image.GetSize()[1], max(1, int(image.GetSize()[2] / factor))]
    spacing = (old[0], old[1], spacing_mm)
    d = np.array(image.GetDirection()).reshape(3, 3)
    origin = np.array(image.GetOrigin()) + d @ np.array([0.0, 0.0, (spacing_mm - old[2]) / 2])
    smooth = sitk.SmoothingRecursiveGaussian(image, [1e-3, 1e-3, spacing_mm / 2.355])
    ref = sitk.Image(size, sitk.sitkFloat32)
    ref.SetSpacing(spacing)
    ref.SetOrigin(tuple(origin))
    ref.SetDirection(image.GetDirection())
    out = sitk.Resample(smooth, ref, sitk.Transform(), sitk.sitkLinear, -1000.0, sitk.sitkFloat32)
    lab = sitk.Resample(labels, ref, sitk.Transform(), sitk.sitkNearestNeighbor, 0, labels.GetPixelID())
    return out, lab


def _shift_under(
    image: sitk.Image, mask: np.ndarray, target_hu: float, noise_sd: float, seed: int,
    blood: tuple[float, float] | None = None,
) -> sitk.Image:
    """The structure under ``mask`` shifted to ``target_hu``. With ``blood`` = (its level in the image, its
    level in the variant), the vessels inside the structure follow the blood, not the parenchyma: a voxel is
    read as a mixture of parenchyma and blood (its lightly smoothed value between the two levels) and each
    part moves to its own new level (a contrast-filled branch inside the liver label stays as bright as its
    trunk in a fatty liver and falls to the blood's native level with the trunk in a native variant)."""
    arr = sitk.GetArrayFromImage(image).astype(np.float32)
    inner = ndimage.binary_erosion(mask, iterations=1)
    current = float(np.median(arr[inner]))
    rng = np.random.default_rng(seed)
    # soft edge (one voxel) so no artificial step appears at the organ's border
    weight = ndimage.gaussian_filter(mask.astype(np.float32), 0.8)
    noise = ndimage.gaussian_filter(rng.normal(0.0, noise_sd, arr.shape).astype(np.float32), 0.7) * 1.6
    shift = np.float32(target_hu - current)
    if blood is not None and blood[0] > current + 20.0:  # contrast-filled vessels brighter than the organ
        level, new_level = blood
        smooth = ndimage.gaussian_filter(arr, 1.0)
        # the parenchyma's local level (its slow gradients) and noise: what lies within 2 sigma of it is
        # parenchyma (its noise is not made stronger), what is brighter than 3 sigma a mixture of
        # parenchyma and blood by its value between the two levels
        support = ndimage.gaussian_filter(inner.astype(np.float32), 5.0)
        local = ndimage.gaussian_filter(np.where(inner, smooth, 0.0), 5.0) / np.maximum(support, 1e-3)
        residual = (smooth - local)[inner]
        spread = 1.4826 * float(np.median(np.abs(residual - np.median(residual))))
        mixed = np.clip((smooth - local) / np.maximum(level - local, 5.0), 0.0, 1.0)  # the blood's fraction
        parenchyma = 1.0 - mixed * np.clip((smooth - local - 2.0 * spread) / max(spread, 1.0), 0.0, 1.0)
        shift = parenchyma * shift + (1.0 - parenchyma) * np.float32(new_level - level)
    arr += weight * shift + weight * noise * 0.5
    out = sitk.GetImageFromArray(arr)
    out.CopyInformation(image)
    return out


def _blood_level(image: sitk.Image, labels: np.ndarray, values: tuple[int, ...]) -> float | None:
    """The attenuation of the brightest of the vessels labelled ``values`` (the median of each, eroded by
    one voxel: no partial volume; the portal vein's in the portal phase, while the IVC still mixes
    unenhanced blood); ``None`` when the labels hold none."""
    view = sitk.GetArrayViewFromImage(image)
    levels = []
    for value in values:
        mask = ndimage.binary_erosion(labels == value, iterations=1)
        if mask.sum() >= 50:
            levels.append(float(np.median(view[mask])))
    return max(levels) if levels else None


def fatty_liver(
    image: sitk.Image, labels: sitk.Image, *, liver_value: int, target_hu: float = 10.0, seed: int = 0,
    blood_values: tuple[int, ...] = BLOOD,
) -> tuple[sitk.Image, sitk.Image]:
    """Steatosis: the liver's parenchyma under the reference mask shifted to ``target_hu`` (dark lesions and
    fissures keep their contrast to it), with extra texture noise; the vessels inside it keep their own
    attenuation (contrast-filled blood does not change with the liver's fat: the level of the vessels
    labelled ``blood_values``, TotalSegmentator's IVC and portal vein)."""
    lab = sitk.GetArrayFromImage(labels)
    blood = _blood_level(image, lab, blood_values)
    return _shift_under(image, lab == liver_value, target_hu, 8.0, seed,
                        None if blood is None else (blood, blood)), labels


def native_phase(
    image: sitk.Image, labels: sitk.Image, *, tissue_hu: dict[int, float], seed: int = 0,
    blood_values: tuple[int, ...] = BLOOD,
) -> tuple[sitk.Image, sitk.Image]:
    """No contrast: each labelled structure (label value → native attenuation) shifted to its native
    level, e.g. liver 55, spleen 45, kidneys 30, aorta/IVC/portal vein 40 HU. The vessels inside an organ's
    label (the liver's portal and hepatic branches) fall with the blood (the labels ``blood_values``) to
    its native level, not with the parenchyma: in a native scan they are slightly darker than the liver."""
    lab = sitk.GetArrayFromImage(labels)
    blood_now = _blood_level(image, lab, blood_values)
    targets = [tissue_hu[v] for v in blood_values if v in tissue_hu]
    blood = None if blood_now is None or not targets else (blood_now, float(np.median(targets)))
    out = image
    for value, hu in tissue_hu.items():
        mask = lab == value
        if mask.any():
            out = _shift_under(out, mask, hu, 4.0, seed + value, None if value in blood_values else blood)
    return out, labels


def crop(image: sitk.Image, labels: sitk.Image, *, keep_fraction: float, side: str = "right"):  # noqa: ANN201
    """A narrower field of view: only ``keep_fraction`` of the columns towards the patient's ``side``
    from the other edge are kept (``side='right'`` cuts into the patient's right, the liver)."""
    nx = image.GetSize()[0]
    keep = int(round(nx * keep_fraction))
    # column index grows towards +x (patient left) when the direction's x component is positive
    left_positive = image.GetDirection()[0] > 0
    cut_low = (side == "right") == left_positive
    start = nx - keep if cut_low else 0
    return image[start : start + keep, :, :], labels[start : start + keep, :, :]


def reslice(image: sitk.Image, labels: sitk.Image, plane: str) -> tuple[sitk.Image, sitk.Image]:
    """The same voxels of an axial stack as a ``coronal`` or ``sagittal`` one, laid out as a scanner writes
    them: coronal — ImageOrientationPatient 1/0/0/0/0/−1 (columns to the patient's left, rows to the
    feet), slices front to back; sagittal — 0/1/0/0/0/−1 (columns to the back, rows to the feet), slices
    from the patient's left to right. No interpolation: axes are permuted and reversed, and the geometry
    follows, so every voxel keeps its patient position."""
    if plane not in ("coronal", "sagittal"):
        raise ValueError(f"plane must be 'coronal' or 'sagittal', not {plane!r}.")
    coronal = plane == "coronal"
    order, flips = ([0, 2, 1], [False, True, False]) if coronal else ([1, 2, 0], [False, True, True])

    def move(img: sitk.Image) -> sitk.Image:
        return sitk.Flip(sitk.PermuteAxes(img, order), flips)

    return move(image), move(labels)


def slab(image: sitk.Image, labels: sitk.Image, *, keep_mm: float, end: str = "superior"):  # noqa: ANN201
    """A shorter craniocaudal field of view: only the slices within ``keep_mm`` of the volume's
    ``end`` (``superior`` or ``inferior``, judged in patient coordinates, whatever the slice order)."""
    if end not in ("superior", "inferior"):
        raise ValueError(f"end must be 'superior' or 'inferior', not {end!r}.")
    nz = image.GetSize()[2]
    keep = max(1, min(nz, int(round(keep_mm / image.GetSpacing()[2]))))
    # the slice index grows towards the head when the slice normal's z component is positive
    superior_last = image.GetDirection()[8] > 0
    start = nz - keep if (end == "superior") == superior_last else 0
    return image[:, :, start : start + keep], labels[:, :, start : start + keep]


def juxtapleural(array: np.ndarray, spacing: tuple[float, float, float], *, slice_index: int,
                 radius_mm: float, seed: int = 0, side: str = "left", wall: str = "lateral",
                 ) -> tuple[np.ndarray, np.ndarray]:
    """A chest CT (``array`` in HU, axes slices/rows/columns, ``spacing`` in the same order; supine, patient
    left on the image's right) with a solid nodule (40 HU, noise 15 HU, partial volume over 2.5 mm) centred
    2 mm inside the pleura of the ``side`` lung on ``slice_index``, on its ``wall``: ``lateral`` (its most
    lateral column), ``posterior`` (its most posterior row) or ``anterior`` (the most anterior point of its
    middle column): it indents the lung broadly, the case a lung mask closed only by hole filling leaves
    outside. Returns the new array and the truth (the sphere's part that replaced lung)."""
    if side not in ("left", "right") or wall not in ("lateral", "posterior", "anterior"):
        raise ValueError(f"side must be left/right and wall lateral/posterior/anterior, not {side!r}/"
                         f"{wall!r}.")
    sp = np.asarray(spacing, dtype=float)
    labels, _ = ndimage.label(array[slice_index] > -400)
    body = ndimage.binary_fill_holes(labels == np.argmax(np.bincount(labels.ravel())[1:]) + 1)
    air = (array[slice_index] < -400) & body
    half = array.shape[2] // 2  # patient left is +x: the right half of the image
    if side == "left" and wall == "lateral":  # the left lung's most lateral column
        edge = int(np.flatnonzero(air[:, half:].any(axis=0)).max()) + half
        row = int(np.flatnonzero(air[:, edge - 3:edge + 1].any(axis=1)).mean())
        centre = np.array([slice_index * sp[0], row * sp[1], edge * sp[2] - 2.0])
    else:
        lungs = air.copy()
        if side == "right":
            lungs[:, half:] = False
        else:
            lungs[:, :half] = False
        parts, _ = ndimage.label(lungs)
        lung = parts == np.argmax(np.bincount(parts.ravel())[1:]) + 1
        rows, cols = np.nonzero(lung)
        if wall == "lateral":
            col = int(cols.max() if side == "left" else cols.min())
            point, inward = (float(rows[cols == col].mean()), col), (0.0, -1.0 if side == "left" else 1.0)
        elif wall == "posterior":
            row = int(rows.max())
            point, inward = (row, float(np.median(cols[rows >= row - 2]))), (-1.0, 0.0)
        else:
            col = int(np.median(cols))
            point, inward = (int(rows[np.abs(cols - col) < 3].min()), col), (1.0, 0.0)
        centre = np.array([slice_index * sp[0], *(np.asarray(point) * sp[1:] + 2.0 * np.asarray(inward))])
    zz, yy, xx = np.ogrid[0:array.shape[0], 0:array.shape[1], 0:array.shape[2]]
    distance = np.sqrt((zz * sp[0] - centre[0]) ** 2 + (yy * sp[1] - centre[1]) ** 2
                       + (xx * sp[2] - centre[2]) ** 2) - radius_mm
    lung = array < -300
    weight = np.where(lung, np.clip(0.5 - distance / 2.5, 0.0, 1.0), 0.0).astype(np.float32)
    noise = np.random.default_rng(seed).normal(40.0, 15.0, array.shape).astype(np.float32)
    out = (array * (1 - weight) + noise * weight).astype(np.float32)
    return out, (distance <= 0) & lung


def subcapsular(array: np.ndarray, spacing: tuple[float, float, float], liver: np.ndarray, *,
                angle_deg: float, diameter_mm: float, contrast_hu: float = -45.0,
                ) -> tuple[np.ndarray, np.ndarray, tuple[float, float, float]]:
    """A hypodense liver lesion half outside the liver's surface (subcapsular, bulging it): a ball of
    ``diameter_mm`` centred on the liver's surface on the middle slice of ``liver`` (bool, same grid as
    ``array``; axes slices/rows/columns, ``spacing`` in that order), where a ray from the liver's centre at
    ``angle_deg`` (in the slice plane; 0 = +columns, 90 = +rows) leaves it. Inside the liver
    ``contrast_hu`` is added to the parenchyma; outside, the ball replaces what was there (the wall's fat and
    muscle, a crus, bowel) by the lesion's level (the liver's median + ``contrast_hu``) with the image's own
    noise; a one-voxel partial-volume edge. Returns the new array (float32), the ball's mask and its centre
    as a continuous (slice, row, column) index."""
    k = array.shape[0] // 2
    rows, cols = ndimage.center_of_mass(liver[k])
    direction = np.array([np.sin(np.deg2rad(angle_deg)), np.cos(np.deg2rad(angle_deg))])
    steps = [np.round(np.array([rows, cols]) + t * direction).astype(int) for t in np.arange(0.0, 400.0, 0.5)]
    inside = [p for p in steps if (p >= 0).all() and (p < liver.shape[1:]).all() and liver[k][tuple(p)]]
    if not inside:
        raise ValueError(f"The liver mask holds nothing on its middle slice {k}.")
    sp = np.asarray(spacing, dtype=float)
    centre = np.array([k, *inside[-1]], dtype=float)
    z, y, x = np.meshgrid(*[(np.arange(n) - c) * s for n, c, s in zip(array.shape, centre, sp, strict=True)],
                          indexing="ij", sparse=True)
    distance = np.sqrt(z**2 + y**2 + x**2)
    weight = np.clip(diameter_mm / 2 - distance + 0.5, 0.0, 1.0)
    values = array.astype(np.float32)
    noise = np.clip(values - ndimage.gaussian_filter(values, 1.5), -40.0, 40.0)
    lesion = np.where(liver, values + contrast_hu, float(np.median(values[liver])) + contrast_hu + noise)
    out = (values * (1.0 - weight) + lesion * weight).astype(np.float32)
    return out, distance <= diameter_mm / 2, (float(centre[0]), float(centre[1]), float(centre[2]))


def real_case() -> tuple[sitk.Image, sitk.Image]:
    """The shared abdominal CT (ct-abdomen-20) and its reference labels resampled onto it, as images on the
    same grid: the starting point of every variant of the real case."""
    from dicomnode.imaging.volume import read_volume, resample_onto
    from tests.support import shared_data

    volume = read_volume(shared_data("ct-abdomen-20", "dicom"))
    reference = sitk.ReadImage(str(shared_data("ct-abdomen-20", "reference-labels.nrrd")))
    labels = sitk.GetImageFromArray(resample_onto(reference, volume).astype(np.uint8))
    image = volume.to_sitk()
    labels.CopyInformation(image)
    return image, labels
