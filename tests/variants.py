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
    image, labels = low_dose(image, labels, factor=2.5)   # noise x2.5, correlated as a CT kernel leaves it
    image, labels = kernel(image, labels, "sharp")         # or "smooth": another reconstruction kernel
    image, labels = matrix(image, labels, pixel_mm=1.95)  # a 256 matrix; pixel_mm=0.7: a zoomed one
    image, labels = arterial_phase(image, labels)         # or delayed_phase(image, labels)
    image, labels = spinal_metal(image, labels)           # titanium pedicle screws: streaks by FBP
    image, labels = child(image, labels, scale=0.6)       # the anatomy shrunk, a child's grid
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
    blood_values: tuple[int, ...] = BLOOD, lumens: tuple[int, ...] = (),
) -> tuple[sitk.Image, sitk.Image]:
    """No contrast: each labelled structure (label value → native attenuation) shifted to its native
    level, e.g. liver 55, spleen 45, kidneys 30, aorta/IVC/portal vein 40 HU. The vessels inside an organ's
    label (the liver's portal and hepatic branches) fall with the blood (the labels ``blood_values``) to
    its native level, not with the parenchyma: in a native scan they are slightly darker than the liver.
    The vessels ``lumens`` are moved by their blood's fraction instead (:func:`_shift_lumen`)."""
    lab = sitk.GetArrayFromImage(labels)
    blood_now = _blood_level(image, lab, blood_values)
    targets = [tissue_hu[v] for v in blood_values if v in tissue_hu]
    blood = None if blood_now is None or not targets else (blood_now, float(np.median(targets)))
    out = image
    for value, hu in tissue_hu.items():
        mask = lab == value
        if mask.any() and value in lumens:
            out = _shift_lumen(out, lab, value, hu)
        elif mask.any():
            out = _shift_under(out, mask, hu, 4.0, seed + value, None if value in blood_values else blood)
    return out, labels


def _shift_lumen(image: sitk.Image, lab: np.ndarray, value: int, target_hu: float,
                 floor_hu: float = 40.0) -> sitk.Image:
    """A vessel's blood moved to ``target_hu`` by its fraction in each voxel: within 2 mm of the label
    ``value`` (the reference's coarse contour misses part of the lumen; voxels of other labelled
    structures excluded), a voxel's blood fraction is its lightly smoothed value between ``floor_hu``
    (unenhanced tissue) and the vessel's level, and it moves by that fraction of the change: the lumen
    keeps its partial-volume rim and no step appears where the reference's contour cuts the lumen."""
    arr = sitk.GetArrayFromImage(image).astype(np.float32)
    spacing = image.GetSpacing()[::-1]
    mask = lab == value
    level = float(np.median(arr[ndimage.binary_erosion(mask)] if ndimage.binary_erosion(mask).any()
                            else arr[mask]))
    if level <= floor_hu + 20.0:  # unenhanced: no blood fraction to read; the label is moved as a whole
        return _shift_under(image, mask, target_hu, 4.0, value)
    near = ndimage.distance_transform_edt(~mask, sampling=spacing) <= 2.0
    region = near & ((lab == 0) | mask)
    smooth = ndimage.gaussian_filter(arr, 0.7)
    fraction = np.clip((smooth - floor_hu) / (level - floor_hu), 0.0, 1.0)
    arr += np.where(region, fraction * np.float32(target_hu - level), 0.0).astype(np.float32)
    return _like(arr, image)


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


def noise_sd(image: sitk.Image) -> float:
    """The image's noise in HU, estimated from the image: the lower quartile of the local standard
    deviation (5 × 5 pixels in-plane) over the soft tissue and fat (local mean −150..150 HU) — the
    homogeneous part, where texture and edges add little."""
    arr = sitk.GetArrayFromImage(image).astype(np.float32)
    size = (1, 5, 5)
    mean = ndimage.uniform_filter(arr, size)
    local = np.sqrt(np.maximum(ndimage.uniform_filter(arr * arr, size) - mean * mean, 0.0))
    soft = (mean > -150.0) & (mean < 150.0)
    return float(np.percentile(local[soft], 25)) if soft.any() else 10.0


def _in_reconstruction(image: sitk.Image) -> np.ndarray:
    """The pixels inside the reconstruction circle (a scanner writes its padding value outside it): the
    disc of the matrix's half width about its centre, on every slice."""
    ny, nx = image.GetSize()[1], image.GetSize()[0]
    yy, xx = np.ogrid[0:ny, 0:nx]
    return ((yy - (ny - 1) / 2) ** 2 + (xx - (nx - 1) / 2) ** 2) <= (min(nx, ny) / 2) ** 2


def ct_noise(shape: tuple[int, int, int], pixel_mm: float, sd: float, seed: int = 0) -> np.ndarray:
    """Noise as filtered back-projection leaves it: no power at low frequencies (the ramp filter), none
    above the kernel's cut-off, so a fine grain of about 1–2 mm in-plane and none shared between slices;
    a difference of Gaussians on white noise (0.6 and 2.0 mm), scaled to ``sd`` HU."""
    rng = np.random.default_rng(seed)
    white = rng.standard_normal(shape).astype(np.float32)
    fine, coarse = 0.6 / pixel_mm, 2.0 / pixel_mm
    band = (ndimage.gaussian_filter(white, (0, fine, fine))
            - ndimage.gaussian_filter(white, (0, coarse, coarse)))
    return (band * np.float32(sd / max(float(band.std()), 1e-6))).astype(np.float32)


def _like(array: np.ndarray, image: sitk.Image) -> sitk.Image:
    out = sitk.GetImageFromArray(np.ascontiguousarray(array, dtype=np.float32))
    out.CopyInformation(image)
    return out


def low_dose(image: sitk.Image, labels: sitk.Image, *, factor: float = 2.5, seed: int = 0,
             ) -> tuple[sitk.Image, sitk.Image]:
    """A low-dose scan: the noise ``factor`` times the image's own (dose / factor², e.g. ×2.5 at 16 % of
    the dose): correlated noise of the missing variance (:func:`ct_noise`) added inside the reconstruction
    circle; values below −1024 HU clipped as the scanner stores them."""
    arr = sitk.GetArrayFromImage(image).astype(np.float32)
    extra = noise_sd(image) * float(np.sqrt(max(factor * factor - 1.0, 0.0)))
    noise = ct_noise(arr.shape, image.GetSpacing()[0], extra, seed)
    inside = _in_reconstruction(image)[None]
    out = np.where(inside, np.maximum(arr + noise, -1024.0), arr)
    return _like(out, image), labels


def kernel(image: sitk.Image, labels: sitk.Image, kind: str) -> tuple[sitk.Image, sitk.Image]:
    """Another reconstruction kernel, in-plane: ``smooth`` (a soft-tissue kernel: Gaussian of 0.8 mm,
    noise about halved, edges blurred) or ``sharp`` (a bone/lung kernel: unsharp masking of 1.2 × the
    detail under 1 mm, edges with overshoot and the noise about doubled)."""
    if kind not in ("smooth", "sharp"):
        raise ValueError(f"kind must be 'smooth' or 'sharp', not {kind!r}.")
    arr = sitk.GetArrayFromImage(image).astype(np.float32)
    px = image.GetSpacing()[0]
    if kind == "smooth":
        out = ndimage.gaussian_filter(arr, (0, 0.8 / px, 0.8 / px))
    else:
        out = arr + 1.2 * (arr - ndimage.gaussian_filter(arr, (0, 1.0 / px, 1.0 / px)))
    return _like(np.maximum(out, -1024.0), image), labels


def _body_centre(image: sitk.Image) -> np.ndarray:
    """The patient position (mm) of the body's centre: the centroid of the voxels above −500 HU in the
    largest connected part, on the middle slice."""
    arr = sitk.GetArrayFromImage(image)
    k = arr.shape[0] // 2
    parts, _ = ndimage.label(arr[k] > -500)
    body = parts == np.argmax(np.bincount(parts.ravel())[1:]) + 1
    row, col = ndimage.center_of_mass(body)
    return np.asarray(image.TransformContinuousIndexToPhysicalPoint((float(col), float(row), float(k))))


def _resample(image: sitk.Image, labels: sitk.Image, ref: sitk.Image, transform: sitk.Transform,
              ) -> tuple[sitk.Image, sitk.Image]:
    out = sitk.Resample(image, ref, transform, sitk.sitkLinear, -1024.0, sitk.sitkFloat32)
    lab = sitk.Resample(labels, ref, transform, sitk.sitkNearestNeighbor, 0, labels.GetPixelID())
    return out, lab


def _grid(image: sitk.Image, centre: np.ndarray, size: tuple[int, int, int],
          spacing: tuple[float, float, float]) -> sitk.Image:
    """An empty grid with ``image``'s direction, ``size`` and ``spacing``, centred on ``centre`` (mm)."""
    d = np.array(image.GetDirection()).reshape(3, 3)
    half = (np.asarray(size) - 1) / 2.0 * np.asarray(spacing)
    ref = sitk.Image([int(n) for n in size], sitk.sitkFloat32)
    ref.SetSpacing(tuple(float(s) for s in spacing))
    ref.SetDirection(image.GetDirection())
    ref.SetOrigin(tuple(float(v) for v in centre - d @ half))
    return ref


def matrix(image: sitk.Image, labels: sitk.Image, *, pixel_mm: float) -> tuple[sitk.Image, sitk.Image]:
    """The slices reconstructed on another in-plane grid. Coarser pixels (e.g. 1.95 mm: a 256 matrix over
    the same field of view) are blurred first to their own resolution; finer ones (e.g. 0.7 mm: a zoomed
    512 reconstruction, 358 mm centred on the body, which may cut its sides) are interpolated (the grain
    of the noise stays that of the original pixels). Labels by nearest neighbour."""
    old = image.GetSpacing()
    size = image.GetSize()
    if pixel_mm > old[0]:
        sigma = float(np.sqrt(pixel_mm ** 2 - old[0] ** 2) / 2.355)
        image = sitk.SmoothingRecursiveGaussian(image, [sigma, sigma, 1e-3])
        n = int(round(size[0] * old[0] / pixel_mm))
        centre = np.asarray(image.TransformContinuousIndexToPhysicalPoint(
            tuple((np.asarray(size) - 1) / 2.0)))
    else:
        n = size[0]
        centre = _body_centre(image)
        middle = np.asarray(image.TransformContinuousIndexToPhysicalPoint(
            tuple((np.asarray(size) - 1) / 2.0)))
        d = np.array(image.GetDirection()).reshape(3, 3)
        # along the slice normal the grid stays where it was
        centre = centre + d[:, 2] * float(d[:, 2] @ (middle - centre))
    ref = _grid(image, centre, (n, n, size[2]), (pixel_mm, pixel_mm, old[2]))
    return _resample(image, labels, ref, sitk.Transform())


def child(image: sitk.Image, labels: sitk.Image, *, scale: float = 0.6, pixel_mm: float = 0.7,
          slice_mm: float = 1.25) -> tuple[sitk.Image, sitk.Image]:
    """A child: the same patient ``scale`` times smaller in every direction about the body's centre (organs,
    vessels, wall and fat all shrink together; attenuation unchanged), on a paediatric protocol's grid
    (``pixel_mm`` pixels over the original matrix size, ``slice_mm`` slices over the shrunk extent)."""
    size, old = image.GetSize(), image.GetSpacing()
    centre = _body_centre(image)
    middle = np.asarray(image.TransformContinuousIndexToPhysicalPoint(tuple((np.asarray(size) - 1) / 2.0)))
    d = np.array(image.GetDirection()).reshape(3, 3)
    centre = centre + d[:, 2] * float(d[:, 2] @ (middle - centre))
    nz = max(1, int(round(size[2] * old[2] * scale / slice_mm)))
    ref = _grid(image, centre, (size[0], size[1], nz), (pixel_mm, pixel_mm, slice_mm))
    shrink = sitk.ScaleTransform(3, (1.0 / scale,) * 3)  # output point -> input point
    shrink.SetCenter(tuple(float(v) for v in centre))
    return _resample(image, labels, ref, shrink)


# attenuation of the reference's structures in other phases (HU): label value -> level. Arterial (late
# arterial, ~35 s): aorta bright, portal and splenic vein filling, the IVC above the renal veins mixing the
# renal return, liver barely enhanced, spleen enhanced unevenly (see arterial_phase), pancreas bright.
# Delayed (~3 min): blood and parenchyma near equilibrium, liver and spleen within a few HU.
ARTERIAL_HU = {5: 70.0, 1: 115.0, 2: 170.0, 3: 170.0, 7: 110.0, 52: 300.0, 63: 90.0, 64: 150.0}
DELAYED_HU = {5: 85.0, 1: 88.0, 2: 150.0, 3: 150.0, 7: 80.0, 52: 115.0, 63: 110.0, 64: 112.0}
SPLEEN, KIDNEYS = 1, (2, 3)
LUMENS = (52, 63, 64)  # aorta, IVC, portal and splenic vein: moved by their blood's fraction


def arterial_phase(image: sitk.Image, labels: sitk.Image, *, seed: int = 0,
                   tissue_hu: dict[int, float] | None = None) -> tuple[sitk.Image, sitk.Image]:
    """The late arterial phase (:data:`ARTERIAL_HU`): each structure moved to its level as
    :func:`native_phase` does (the liver's vessels with the blood), the spleen mottled (the red pulp
    enhancing unevenly: ±30 HU over patches of ~5 mm) and the kidneys' medulla (deeper than 4 mm)
    60 HU below the cortex. Arteries without a reference label (coeliac, splenic, renal) keep the portal
    phase's level."""
    out, _ = native_phase(image, labels, tissue_hu=tissue_hu or ARTERIAL_HU, seed=seed, lumens=LUMENS)
    arr = sitk.GetArrayFromImage(out).astype(np.float32)
    lab = sitk.GetArrayFromImage(labels)
    spacing = image.GetSpacing()[::-1]
    spleen = lab == SPLEEN
    if spleen.any():
        rng = np.random.default_rng(seed + 1)
        field = ndimage.gaussian_filter(rng.standard_normal(arr.shape).astype(np.float32),
                                        [2.5 / s for s in spacing])
        field *= np.float32(30.0 / max(float(field[spleen].std()), 1e-6))
        arr += ndimage.gaussian_filter(spleen.astype(np.float32), 0.8) * field
    for value in KIDNEYS:
        kidney = lab == value
        if kidney.any():
            depth = ndimage.distance_transform_edt(kidney, sampling=spacing)
            arr -= np.float32(60.0) * np.clip((depth - 3.0) / 2.0, 0.0, 1.0).astype(np.float32)
    return _like(arr, image), labels


def delayed_phase(image: sitk.Image, labels: sitk.Image, *, seed: int = 0) -> tuple[sitk.Image, sitk.Image]:
    """The delayed phase (:data:`DELAYED_HU`): blood and organs near equilibrium, liver and spleen
    within a few HU of each other and of the blood: only position and shape tell them apart."""
    return native_phase(image, labels, tissue_hu=DELAYED_HU, seed=seed, lumens=LUMENS)


def _project(mu: np.ndarray, pixel_mm: float, theta: np.ndarray, bins: np.ndarray) -> np.ndarray:
    """Parallel-beam line integrals of a slice (μ per mm) at the angles ``theta`` onto detector
    positions ``bins`` (mm from the centre): each pixel splatted linearly onto the two nearest bins, then
    blurred by one bin (the detector's aperture; it also evens out the splatting's aliasing)."""
    ny, nx = mu.shape
    yy, xx = np.nonzero(mu)
    weights = mu[yy, xx] * pixel_mm * pixel_mm
    x = (xx - (nx - 1) / 2) * pixel_mm
    y = (yy - (ny - 1) / 2) * pixel_mm
    ds = bins[1] - bins[0]
    out = np.zeros((theta.size, bins.size))
    for i, t in enumerate(theta):
        pos = (x * np.cos(t) + y * np.sin(t) - bins[0]) / ds
        low = np.floor(pos).astype(int)
        frac = pos - low
        out[i] += np.bincount(low, weights * (1 - frac), minlength=bins.size)[: bins.size]
        out[i] += np.bincount(low + 1, weights * frac, minlength=bins.size + 1)[: bins.size]
    return ndimage.gaussian_filter1d(out, 1.0, axis=1) / ds


def _back_project(sinogram: np.ndarray, shape: tuple[int, int], pixel_mm: float, theta: np.ndarray,
                  bins: np.ndarray) -> np.ndarray:
    """Filtered back-projection (ramp × Hann apodisation, as a standard kernel) of a sinogram of line
    integrals: μ per mm on the slice grid."""
    ds = bins[1] - bins[0]
    n = 2 ** int(np.ceil(np.log2(2 * bins.size)))
    freq = np.fft.fftfreq(n, d=ds)
    window = np.abs(freq) * 0.5 * (1 + np.cos(np.pi * freq / np.abs(freq).max()))
    filtered = np.real(np.fft.ifft(np.fft.fft(sinogram, n=n, axis=1) * window, axis=1))[:, : bins.size]
    ny, nx = shape
    y = ((np.arange(ny) - (ny - 1) / 2) * pixel_mm)[:, None]
    x = ((np.arange(nx) - (nx - 1) / 2) * pixel_mm)[None, :]
    out = np.zeros(shape)
    for i, t in enumerate(theta):
        out += np.interp(x * np.cos(t) + y * np.sin(t), bins, filtered[i], left=0.0, right=0.0)
    return out * np.pi / theta.size


MU_WATER = 0.019  # 1/mm at an effective 70 keV


def spinal_metal(image: sitk.Image, labels: sitk.Image, *,
                 vertebra_values: tuple[int, ...] = tuple(range(25, 51)), diameter_mm: float = 6.0,
                 length_mm: float = 40.0, seed: int = 0) -> tuple[sitk.Image, sitk.Image]:
    """Titanium pedicle screws (``diameter_mm`` × ``length_mm``, 7000 HU stored clipped at 3071) in the
    largest vertebra of the reference (TotalSegmentator's vertebrae ``vertebra_values``), converging
    15° from the back through the pedicles into the body, and their artefacts as the scanner makes them:
    the slice's line integrals with the metal's beam hardening (a loss growing with the square of its
    path) and photon starvation (noise of the photons left after body and metal, 2·10⁵ per ray), the
    difference reconstructed by filtered back-projection and added: dark bands between the screws and
    streaks fanning out along their axes. Labels unchanged, except that metal is no organ."""
    lab = sitk.GetArrayFromImage(labels)
    arr = sitk.GetArrayFromImage(image).astype(np.float32)
    counts = {v: int((lab == v).sum()) for v in vertebra_values}
    value = max(counts, key=counts.get)
    if counts[value] == 0:
        raise ValueError(f"The reference labels hold none of the vertebrae {vertebra_values}.")
    spacing = np.asarray(image.GetSpacing())
    idx = np.argwhere(lab == value)  # (z, y, x)
    # the vertebral body: the anterior half of the vertebra's voxels (smaller y in the image, whose
    # rows run to the patient's back in the supine axial layout this variant assumes)
    kz = int(np.median(idx[:, 0]))
    rows = idx[:, 1]
    body = idx[rows <= np.median(rows)]
    centre = np.array([body[:, 2].mean(), body[:, 1].mean(), kz], dtype=float)  # (x, y, z) index
    zz, yy, xx = np.meshgrid(np.arange(arr.shape[0]), np.arange(arr.shape[1]), np.arange(arr.shape[2]),
                             indexing="ij")
    metal = np.zeros(arr.shape, dtype=np.float32)
    angle = np.deg2rad(15.0)
    for side in (-1.0, 1.0):
        tip = centre * spacing + np.array([side * 6.0, -8.0, 0.0])  # mm, the anterior third of the body
        axis = np.array([side * np.sin(angle), np.cos(angle), 0.0])  # towards the back and laterally
        rel = np.stack([xx * spacing[0], yy * spacing[1], zz * spacing[2]], axis=-1) - tip
        along = np.clip(rel @ axis, 0.0, length_mm)
        dist = np.linalg.norm(rel - along[..., None] * axis, axis=-1)
        metal = np.maximum(metal, np.clip(diameter_mm / 2 - dist + 0.5, 0.0, 1.0).astype(np.float32))
    rng = np.random.default_rng(seed)
    px = float(spacing[0])
    ny, nx = arr.shape[1:]
    theta = np.linspace(0.0, np.pi, 2 * max(ny, nx), endpoint=False)
    bins = np.arange(-np.hypot(ny, nx) / 2 - 2, np.hypot(ny, nx) / 2 + 2) * px
    mu_metal = 0.153  # titanium at 70 keV, 1/mm
    out = arr.copy()
    for k in np.flatnonzero(metal.any(axis=(1, 2))):
        tissue = MU_WATER * np.clip(arr[k] + 1000.0, 0.0, None) / 1000.0
        p_body = _project(tissue, px, theta, bins)
        p_metal = _project(metal[k] * mu_metal, px, theta, bins)
        hardening = 0.04 * p_metal ** 2
        photons = 2e5
        starvation = rng.standard_normal(p_body.shape) * np.sqrt(
            np.maximum(np.exp(p_body + p_metal) - np.exp(p_body), 0.0) / photons)
        error = _back_project(-hardening + starvation, (ny, nx), px, theta, bins)
        out[k] = arr[k] + (error / MU_WATER * 1000.0).astype(np.float32)
        out[k] = out[k] * (1 - metal[k]) + 3071.0 * metal[k]
    out = np.clip(out, -1024.0, 3071.0)
    new = lab.copy()
    new[(metal > 0.5) & np.isin(lab, (5, 1, 2, 3, 52, 63))] = 0
    lab_img = sitk.GetImageFromArray(new)
    lab_img.CopyInformation(labels)
    return _like(out, image), lab_img


def write_series(image: sitk.Image, folder, **header) -> list:  # noqa: ANN001
    """``image`` (HU, axial, identity direction) written as a CT DICOM series through the phantom writer:
    ``header`` chooses the storage (``unsigned``, ``slope``, ``intercept``)."""
    from tests.phantoms import Phantom, write_dicom_series

    if not np.allclose(image.GetDirection(), np.eye(3).ravel()):
        raise ValueError(f"write_series writes axial stacks only; the direction is {image.GetDirection()}.")
    arr = sitk.GetArrayFromImage(image).astype(np.float32)
    phantom = Phantom(image=arr, clean=arr, masks={}, spacing=tuple(image.GetSpacing()[::-1]),
                      origin=tuple(image.GetOrigin()), modality="CT", phase="portal")
    return write_dicom_series(phantom, folder, **header)


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
