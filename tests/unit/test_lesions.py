"""Lesion detection inside the liver: every phantom lesion of 10 mm or more is found, each on its own;
vessels (phantom vessel trees in every phase, the real CT's portal branches and fissures) are not lesions."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
from scipy import ndimage

from dicomnode.errors import ImagingError
from dicomnode.imaging.lesions import describe, detect
from dicomnode.imaging.volume import read_volume, resample_onto
from tests import variants
from tests.phantoms import make_ct_phantom
from tests.support import shared_data

PHASES = [("portal", (5.0, 2.8, 2.8)), ("native", (4.0, 2.5, 2.5)), ("arterial", (4.0, 3.2, 3.2))]


def assert_every_lesion_found(ct, labels: np.ndarray, found) -> None:  # noqa: ANN001
    assert [f.label for f in found] == list(range(1, len(found) + 1))
    hits = []
    for truth in ct.lesions:
        if truth.diameter_mm < 10:
            continue
        overlap = labels[ct.lesion_labels == truth.label]
        values, counts = np.unique(overlap[overlap > 0], return_counts=True)
        assert values.size, f"{truth.kind} lesion of {truth.diameter_mm} mm at {truth.centre_mm} missed"
        label = int(values[np.argmax(counts)])
        assert counts.max() >= 0.5 * overlap.size
        assert found[label - 1].kind == truth.kind
        hits.append(label)
    assert len(set(hits)) == len(hits)  # distinct lesions stay distinct components
    matched = {int(v) for t in ct.lesions for v in np.unique(labels[ct.lesion_labels == t.label]) if v}
    false = sorted(set(range(1, int(labels.max()) + 1)) - matched)
    assert not false, [found[i - 1] for i in false]  # nothing else (vessels) reported


@pytest.mark.parametrize(("phase", "spacing"), PHASES[:2])
def test_every_lesion_of_10_mm_is_detected_as_its_own_component(phase, spacing) -> None:  # noqa: ANN001
    ct = make_ct_phantom(shape=(40, 128, 128), spacing=spacing, phase=phase, seed=7)
    result = detect(ct.to_sitk(), ct.mask_sitk("liver"))
    assert_every_lesion_found(ct, sitk.GetArrayFromImage(result.image), describe(ct.to_sitk(), result))


@pytest.mark.parametrize(("phase", "spacing"), PHASES)
def test_lesions_among_hepatic_vessels_are_found_and_vessels_are_not_lesions(phase, spacing) -> None:  # noqa: ANN001
    ct = make_ct_phantom(shape=(40, 128, 128), spacing=spacing, phase=phase, seed=7, hepatic_vessels=True)
    assert len(ct.lesions) == 5 and ct.masks["hepatic-vessels"].any()
    result = detect(ct.to_sitk(), ct.mask_sitk("liver"))
    assert_every_lesion_found(ct, sitk.GetArrayFromImage(result.image), describe(ct.to_sitk(), result))


@pytest.mark.parametrize(("phase", "spacing"), PHASES)
def test_a_liver_with_vessels_and_no_lesion_gives_none(phase, spacing) -> None:  # noqa: ANN001
    """Nor is the tissue around the liver (body wall, bowel: darker than the liver in every phase but the
    native one) taken for a lesion bulging its surface."""
    ct = make_ct_phantom(shape=(40, 128, 128), spacing=spacing, phase=phase, seed=7, hepatic_vessels=True,
                         lesions=False)
    result = detect(ct.to_sitk(), ct.mask_sitk("liver"), surface_mm=20.0, exclude_below=-30.0)
    assert sitk.GetArrayFromImage(result.image).max() == 0, describe(ct.to_sitk(), result)
    assert result.estimates["rejected"].get("continues as a vessel") or phase == "arterial"


def test_subcapsular_lesion_touching_the_body_wall_is_found() -> None:
    ct = make_ct_phantom(shape=(40, 128, 128), spacing=(5.0, 2.8, 2.8), phase="portal", seed=7, lesions=False)
    k, j = 17, 62  # a slice and row through the right lobe; the lesion bulges 3 mm out of the liver
    first = int(np.flatnonzero(ct.masks["liver"][k, j])[0])
    zz, yy, xx = np.ogrid[: ct.image.shape[0], : ct.image.shape[1], : ct.image.shape[2]]
    centre = np.array([k, j, first]) * ct.spacing + np.array([0.0, 0.0, 16.0 / 2 - 3.0])
    sphere = ((zz * ct.spacing[0] - centre[0]) ** 2 + (yy * ct.spacing[1] - centre[1]) ** 2
              + (xx * ct.spacing[2] - centre[2]) ** 2 <= 8.0**2) & ct.masks["liver"]
    image = ct.image.copy()
    image[sphere] -= 45.0
    labels = sitk.GetArrayFromImage(detect(ct.to_sitk(image), ct.mask_sitk("liver")).image)
    assert labels.max() == 1 and (labels[sphere] > 0).mean() > 0.8


@pytest.fixture(scope="module")
def real_ct():
    volume = read_volume(shared_data("ct-abdomen-20", "dicom"))
    reference = sitk.ReadImage(str(shared_data("ct-abdomen-20", "reference-labels.nrrd")))
    labels = resample_onto(reference, volume)
    liver = sitk.GetImageFromArray((labels == 5).astype(np.uint8))
    liver.CopyInformation(volume.to_sitk())
    return volume, labels, liver


# as in liver-ct.yaml
LIVER_CT = {"min_diameter_mm": 7.0, "vessel_mm": 6.0, "exclude_below": -30.0, "surface_mm": 20.0}


def test_real_ct_liver_has_no_false_lesion(real_ct) -> None:  # noqa: ANN001
    """The reference (TotalSegmentator) has no liver lesion class and this liver shows none; its portal
    branches, the fissure of the ligamentum venosum and beam hardening at the spine are not lesions."""
    volume, labels, liver = real_ct
    assert not np.isin(labels, [23, 24]).any()  # (the only lesion classes of the reference are renal cysts)
    # the reference liver plus the hilum the pipeline's hole filling adds (portal vein, IVC)
    hilum = sitk.GetImageFromArray(np.isin(labels, [5, 63, 64]).astype(np.uint8))
    hilum.CopyInformation(liver)
    for organ in (liver, hilum):
        result = detect(volume.to_sitk(), organ, **LIVER_CT)
        assert sitk.GetArrayFromImage(result.image).max() == 0, describe(volume.to_sitk(), result)


def _sphere_in(volume, liver: sitk.Image, centre, diameter: float) -> np.ndarray:  # noqa: ANN001
    """A ball of ``diameter`` mm at ``centre`` (mm from the first voxel, z y x), asserted inside ``liver``."""
    z, y, x = np.meshgrid(*[np.arange(n) * s for n, s in zip(volume.shape, volume.spacing, strict=True)],
                          indexing="ij", sparse=True)
    sphere = (z - centre[0]) ** 2 + (y - centre[1]) ** 2 + (x - centre[2]) ** 2 <= (diameter / 2) ** 2
    assert sitk.GetArrayViewFromImage(liver)[sphere].all()
    return sphere


@pytest.mark.parametrize(
    ("centre", "diameter", "contrast"), [((20, 330, 150), 12.0, -40.0), ((20, 300, 120), 15.0, 40.0)]
)
def test_lesion_inserted_into_the_real_liver_is_found_alone(real_ct, centre, diameter, contrast) -> None:  # noqa: ANN001
    volume, _, liver = real_ct
    sphere = _sphere_in(volume, liver, centre, diameter)
    image = volume.to_sitk(volume.array + np.where(sphere, contrast, 0.0).astype(np.float32))
    labels = sitk.GetArrayFromImage(detect(image, liver, **LIVER_CT).image)
    assert labels.max() == 1 and (labels[sphere] > 0).mean() > 0.5


@pytest.mark.parametrize(
    ("centre", "diameter", "contrast"),
    [
        ((20, 320, 140), 20.0, -45.0),  # beside a darker region of the parenchyma (it once merged with it)
        ((20, 320, 140), 20.0, 45.0),
        ((20, 300, 120), 20.0, -45.0),
        ((20, 330, 150), 15.0, 45.0),
        ((20, 330, 150), 15.0, -45.0),
        ((18, 320, 140), 10.0, -45.0),
        ((22, 300, 200), 10.0, 45.0),
    ],
)
def test_inserted_lesion_volume_follows_its_own_boundary(real_ct, centre, diameter, contrast) -> None:  # noqa: ANN001
    """The lesion's mask is bounded at half its own contrast: found alone, the volume of the inserted
    sphere within 15 % (20 mm: within 10 %), not merged with the dark or bright structures it touches."""
    volume, _, liver = real_ct
    sphere = _sphere_in(volume, liver, centre, diameter)
    image = volume.to_sitk(volume.array + np.where(sphere, contrast, 0.0).astype(np.float32))
    result = detect(image, liver, **LIVER_CT)
    found = describe(image, result)
    assert len(found) == 1, found
    labels = sitk.GetArrayFromImage(result.image)
    assert (labels[sphere] > 0).mean() > 0.8
    truth_ml = float(sphere.sum()) * float(np.prod(volume.spacing)) / 1000.0
    assert found[0].volume_ml == pytest.approx(truth_ml, rel=0.10 if diameter >= 20 else 0.15)
    assert found[0].kind == ("hypo" if contrast < 0 else "hyper")


def test_no_lesions_in_a_homogeneous_organ() -> None:
    ct = make_ct_phantom(shape=(30, 96, 96), spacing=(5.0, 3.2, 3.2), lesions=False, seed=8)
    liver_only = ct.image.copy()
    liver_only[ct.masks["portal-vein"]] = liver_only[ct.masks["liver"] & ~ct.masks["portal-vein"]].mean()
    labels = sitk.GetArrayFromImage(detect(ct.to_sitk(liver_only), ct.mask_sitk("liver")).image)
    assert labels.max() == 0


def test_invalid_kind_is_refused() -> None:
    ct = make_ct_phantom(shape=(10, 48, 48), spacing=(5.0, 6.0, 6.0), lesions=False)
    with pytest.raises(ImagingError, match="'kind'"):
        detect(ct.to_sitk(), ct.mask_sitk("liver"), kind="round")


def test_lesions_behind_metal_streaks_are_found_after_metal_reduction() -> None:
    """A metal rod beside the liver streaks every lesion slice: liver-ct's MAR step (NMAR on the liver's
    metal slices) and the detector's averaging along arcs about the metal (the streak residue runs
    radially) let lesions through that the streaks hid, and the streaks give no false lesion."""
    from dicomnode.imaging.artifacts import reduce_metal_artifacts

    ct = make_ct_phantom(seed=5, hepatic_vessels=True, fat_planes=True, metal=True)
    liver = ct.mask_sitk("liver")
    image = reduce_metal_artifacts(ct.to_sitk(), mask=liver, method="nmar", working_spacing_mm=1.5)
    labels = sitk.GetArrayFromImage(detect(image, liver, **LIVER_CT).image)
    expected = [t for t in ct.lesions if t.diameter_mm >= 10]
    found = [t for t in expected if labels[ct.lesion_labels == t.label].any()]
    # without MAR: none; MAR alone: 2 (streak residue hid the 10 mm one); a fixed 20 HU threshold on the
    # slices averaged along arcs: 3 (the 12 mm lesion keeps 19 HU there)
    assert len(found) == len(expected) == 4, found
    matched = {int(v) for t in ct.lesions for v in np.unique(labels[ct.lesion_labels == t.label]) if v}
    assert set(range(1, int(labels.max()) + 1)) <= matched  # no false lesion


@pytest.mark.parametrize(
    ("centre", "diameter"),
    [((32, 250, 234), 15.0), ((22, 299, 128), 18.0), ((16, 247, 178), 15.0), ((10, 228, 178), 15.0)],
)
def test_hypodense_lesion_touching_a_dark_structure_is_found(real_ct, centre, diameter) -> None:  # noqa: ANN001
    """Spheres placed 1 mm from the real liver's dark structures (vessels, fissure; 25 HU below the
    parenchyma): at half the threshold they join them, which once read as a vessel's course ("continues
    as a vessel"). A round blob of 12 mm or more (inscribed / equivalent diameter >= 0.78, vessel pieces
    0.5-0.65) stays a lesion; the vessel-tree tests above keep vessels out."""
    volume, _, liver = real_ct
    sphere = _sphere_in(volume, liver, centre, diameter)
    image = volume.to_sitk(volume.array + np.where(sphere, -45.0, 0.0).astype(np.float32))
    labels = sitk.GetArrayFromImage(detect(image, liver, **LIVER_CT).image)
    assert labels.max() == 1 and (labels[sphere] > 0).mean() > 0.7


def _subcapsular_sphere(volume, liver: np.ndarray, angle_deg: float, diameter: float, contrast: float):  # noqa: ANN001, ANN202
    """:func:`tests.variants.subcapsular` on the real CT: the image and the ball's mask."""
    array, sphere, _ = variants.subcapsular(volume.array, volume.spacing, liver, angle_deg=angle_deg,
                                            diameter_mm=diameter, contrast_hu=contrast)
    return volume.to_sitk(array), sphere


@pytest.mark.parametrize(
    ("angle", "diameter", "mask"),
    [
        (150.0, 20.0, "cut"),  # right posterolateral, between the ribs
        (-150.0, 20.0, "cut"),  # right anterolateral
        (-90.0, 40.0, "cut"),  # anterior, under the abdominal wall
        (180.0, 40.0, "reference"),  # right lateral
        # the liver's notch where the lesion sits closes only with a disc wider than the lesion (the ball
        # found inside it is ~0.8 of its radius): missed when the envelope closed at 1.3 ball radii
        (36.0, 20.0, "cut"),  # medial posterior
        (108.0, 40.0, "cut"),  # posterior
        # anterior, under the wall's muscle of its own attenuation (shell 0.5 lesion-like, no notch the
        # envelope closes): found as a ball the liver wraps round against a thinner wall (lesions.WRAP)
        (288.0, 20.0, "cut"),
    ],
)
def test_subcapsular_lesion_in_the_real_liver_is_found(real_ct, angle, diameter, mask) -> None:  # noqa: ANN001
    """A lesion half outside the real liver's surface: found whether the organ mask leaves it out (the
    liver chain stops at the lesion: "cut") or holds its inner half, one lesion, volume within 25 %."""
    volume, labels, _ = real_ct
    liver = labels == 5
    image, sphere = _subcapsular_sphere(volume, liver, angle, diameter, -45.0)
    assert 0.35 < liver[sphere].mean() < 0.65  # about half of it bulges out of the liver
    organ = volume.to_sitk((liver & ~sphere if mask == "cut" else liver).astype(np.uint8))
    result = detect(image, organ, **LIVER_CT)
    found = describe(image, result)
    assert len(found) == 1, found
    assert result.estimates["surface_lesions"] == 1
    labels_found = sitk.GetArrayFromImage(result.image)
    assert (labels_found[sphere] > 0).mean() > 0.7
    truth_ml = float(sphere.sum()) * float(np.prod(volume.spacing)) / 1000.0
    assert found[0].volume_ml == pytest.approx(truth_ml, rel=0.25)
    assert found[0].kind == "hypo"


def test_subcapsular_phantom_lesion_outside_the_liver_mask_is_found() -> None:
    """The accuracy matrix's subcapsular case: a 30 mm lesion on the anterior surface, mostly outside the
    liver as the chain finds it (the lesion is darker than the liver and against the body wall's muscle of
    its own attenuation); found, alone, and nothing else reported."""
    ct = make_ct_phantom(seed=5, hepatic_vessels=True, fat_planes=True, subcapsular=True)
    subcapsular = ct.lesion_labels == 1
    assert ct.lesions[0].diameter_mm == 30.0
    organ = ct.to_sitk((ct.masks["liver"] & ~subcapsular).astype(np.uint8))
    result = detect(ct.to_sitk(), organ, **LIVER_CT)
    labels = sitk.GetArrayFromImage(result.image)
    assert_every_lesion_found(ct, labels, describe(ct.to_sitk(), result))
    assert (labels[subcapsular] > 0).mean() > 0.8
    without = sitk.GetArrayFromImage(detect(ct.to_sitk(), organ, **{**LIVER_CT, "surface_mm": 0.0}).image)
    assert not without[subcapsular].any()  # the enclosed search alone misses it


@pytest.mark.parametrize("liver_hu", [10.0, -40.0])
def test_lesions_in_a_fatty_liver_are_found(liver_hu: float, monkeypatch) -> None:  # noqa: ANN001
    """Steatosis (liver 10 HU, -40 HU: the issue's lower bound): lesions keep their own attenuation (a
    60 HU metastasis, portal phase), so in a fatty liver they are hyperdense, as the portal vein (175 HU)
    is; the 25 mm one touches it and both passed the threshold as one component, whose own boundary was
    the vessel's: the lesion was missed and the vessel reported. A component that joins two levels is
    split (the lesion, below the midpoint to the vessel's peak and well away from it, is its own); the
    fat limit follows the liver (midway between the fat around it and its median), and the fat planes
    around the liver still give no lesion."""
    import dicomnode.imaging.lesions as lesions

    ct = make_ct_phantom(seed=5, hepatic_vessels=True, fat_planes=True, liver_hu=liver_hu)
    assert {t.kind for t in ct.lesions} == {"hyper"}
    touching = [t for t in ct.lesions if t.diameter_mm == 25.0][0]
    near = ndimage.binary_dilation(ct.lesion_labels == touching.label, iterations=2)
    assert (near & ct.masks["portal-vein"]).any()  # the lesion touches the portal vein
    result = detect(ct.to_sitk(), ct.mask_sitk("liver"), **LIVER_CT)
    assert_every_lesion_found(ct, sitk.GetArrayFromImage(result.image), describe(ct.to_sitk(), result))
    if liver_hu < 0:  # without the split the vessel's boundary takes the lesion's place
        monkeypatch.setattr(lesions, "SPLIT_PEAK", float("inf"))
        labels = sitk.GetArrayFromImage(detect(ct.to_sitk(), ct.mask_sitk("liver"), **LIVER_CT).image)
        assert not labels[ct.lesion_labels == touching.label].any()


def test_phantom_lesions_keep_their_own_attenuation_in_a_fatty_liver() -> None:
    """The phantom's lesion model: a lesion's attenuation is its own (what it has in the phase's normal
    liver), not the parenchyma's plus an offset (a -85 HU "metastasis" in a -40 HU liver is fat, no
    lesion); its truth kind is its density relative to the liver it lies in."""
    normal = make_ct_phantom(seed=5)
    fatty = make_ct_phantom(seed=5, liver_hu=-40.0)
    for a, b in zip(normal.lesions, fatty.lesions, strict=True):
        inside = normal.lesion_labels == a.label
        assert float(np.median(fatty.clean[inside])) == float(np.median(normal.clean[inside]))
        assert b.kind == "hyper"
    assert {t.kind for t in normal.lesions} == {"hypo", "hyper"}


@pytest.mark.parametrize(
    ("variant", "expected"),
    [({"body_scale": 0.7}, 2), ({"shape": (100, 128, 128), "spacing": (2.0, 2.8, 2.8)}, 4)],
    ids=["child", "2mm-slices"],
)
def test_veins_lying_in_the_slice_plane_are_not_lesions(variant, expected) -> None:  # noqa: ANN001
    """A child's hepatic veins (5-7 mm) and, on 2 mm slices, the confluence of the hepatic veins lie in the
    slice plane: a long piece on one to five slices, far flatter than a lesion (as deep through the slices
    as it is long in the plane). Every lesion of 10 mm or more is still found, nothing else."""
    ct = make_ct_phantom(seed=5, hepatic_vessels=True, fat_planes=True, **variant)
    assert sum(t.diameter_mm >= 10 for t in ct.lesions) == expected
    result = detect(ct.to_sitk(), ct.mask_sitk("liver"), **LIVER_CT)
    assert_every_lesion_found(ct, sitk.GetArrayFromImage(result.image), describe(ct.to_sitk(), result))
    assert result.estimates["rejected"].get("flat")


def test_liver_ct_finds_the_accuracy_matrix_subcapsular_lesion() -> None:
    """The whole pipeline on the accuracy matrix's subcapsular phantom (``benchmarks/accuracy.py``): the
    liver chain stops at the lesion, the lesion step finds it beyond the liver's surface; every lesion of
    10 mm or more found, nothing else."""
    from dicomnode.imaging.volume import Volume
    from dicomnode.jobs import JobSpec
    from dicomnode.pipelines.registry import get_pipeline
    from dicomnode.pipelines.runner import process_volume

    ct = make_ct_phantom(seed=5, hepatic_vessels=True, fat_planes=True, subcapsular=True)
    volume = Volume.from_sitk(ct.to_sitk(), modality="CT", units="HU")
    job = JobSpec("subcapsular", "liver-ct", {}, (), "/")
    processed, summary = process_volume(get_pipeline("liver-ct"), volume, job)
    lesions = [s.mask for s in processed.segments if s.category == "lesion"]
    liver = next(s.mask for s in processed.segments if s.label == "Liver")
    subcapsular = ct.lesion_labels == 1
    assert liver[subcapsular].mean() < 0.5  # the liver mask holds little of it
    expected = [t for t in ct.lesions if t.diameter_mm >= 10]
    for truth in expected:
        overlaps = [float(m[ct.lesion_labels == truth.label].mean()) for m in lesions]
        assert max(overlaps, default=0.0) > 0.5, (truth, overlaps)
    assert all((m & (ct.lesion_labels > 0)).any() for m in lesions), summary["estimates"]  # nothing else


def _cut_organ_case() -> tuple[sitk.Image, sitk.Image, dict[str, np.ndarray]]:
    """An organ (100 HU, fat around) that goes on beyond the last slice, with three bright
    (+60 HU) structures: an 8 mm vessel running up through the last slice (12 mm of it visible), a 14 mm
    lesion centred 5 mm inside the last slice (it reaches it) and a 24 mm lesion cut through its centre by
    the last slice."""
    shape, spacing = (24, 80, 80), (2.0, 1.5, 1.5)
    zz, yy, xx = np.meshgrid(*[np.arange(n) * s for n, s in zip(shape, spacing, strict=True)], indexing="ij",
                             sparse=True)
    organ = ((yy - 60) ** 2 + (xx - 60) ** 2 <= 50**2) & (zz >= 12.0)  # it goes on beyond the last slice
    top = (shape[0] - 1) * spacing[0]
    parts = {
        "vessel": np.broadcast_to(((yy - 40) ** 2 + (xx - 40) ** 2 <= 4.0**2) & (zz >= top - 12.0), shape),
        "ball": np.broadcast_to((zz - top + 5.0) ** 2 + (yy - 80) ** 2 + (xx - 80) ** 2 <= 7.0**2, shape),
        "cut lesion": np.broadcast_to((zz - top) ** 2 + (yy - 45) ** 2 + (xx - 85) ** 2 <= 12.0**2, shape),
    }
    image = np.where(organ, 100.0, -100.0)
    for part in parts.values():
        image[part] += 60.0
    image = ndimage.gaussian_filter(image, 0.7) + np.random.default_rng(0).normal(0.0, 8.0, shape)

    def as_image(array: np.ndarray) -> sitk.Image:
        out = sitk.GetImageFromArray(array.astype(np.uint8 if array.dtype == bool else np.float32))
        out.SetSpacing(spacing[::-1])
        return out

    return as_image(image), as_image(organ), parts


@pytest.mark.parametrize("layout", ["axial", "feet-first", "coronal"])
def test_a_vessel_cut_by_the_last_slice_is_not_a_lesion(layout: str, monkeypatch) -> None:  # noqa: ANN001
    """The real CT's fatty variants and its lower 20 mm reported one false lesion each on the last slice: a
    vessel (a fat-filled fissure) cut by the field of view is a short round piece whose continuation lies
    beyond the images. A candidate whose heart (its deepest part) reaches the edge is not judged from what
    is visible; a lesion whose centre lies inside (it narrows towards the edge) and one wider than the
    vessels cut by the edge are still found; the edge is the images' whatever their layout (a feet-first
    series, a coronal stack: detection runs laid out axially, the faces follow)."""
    import dicomnode.imaging.lesions as lesions
    from tests import variants

    image, organ, parts = _cut_organ_case()
    if layout != "axial":
        def move(array: np.ndarray) -> np.ndarray:
            out = sitk.GetImageFromArray(array.astype(np.uint8))
            out.CopyInformation(image)
            moved = variants.feet_first(out, out)[0] if layout == "feet-first" else variants.reslice(
                out, out, "coronal")[0]
            return sitk.GetArrayFromImage(moved) > 0

        parts = {name: move(part) for name, part in parts.items()}
        image, organ = variants.feet_first(image, organ) if layout == "feet-first" else variants.reslice(
            image, organ, "coronal")
    result = detect(image, organ, **LIVER_CT)
    labels = sitk.GetArrayFromImage(result.image)
    assert not labels[parts["vessel"]].any()
    assert result.estimates["rejected"].get("cut by the field of view") == 1
    assert labels[parts["ball"]].any() and labels[parts["cut lesion"]].any() and labels.max() == 2
    monkeypatch.setattr(lesions, "FOV_KEEP_MM", 0.0)  # without the rule the vessel's piece is a lesion
    assert sitk.GetArrayFromImage(detect(image, organ, **LIVER_CT).image)[parts["vessel"]].any()


def test_fat_beside_the_liver_on_coarse_pixels_is_not_a_lesion() -> None:
    """On 3.2 mm pixels (a 360 mm field on a 112 matrix) the margin (3 mm) eroded nothing in-plane, so the
    liver's edge in partial volume with the fat plane its mask takes in read as deep tissue: a fat-density
    "lesion" in a lesion-free liver. The core is one pixel off the organ's edge wherever pixels are coarser
    than the margin."""
    ct = make_ct_phantom(seed=5, hepatic_vessels=True, fat_planes=True, lesions=False, shape=(40, 112, 112),
                         spacing=(5.0, 3.2, 3.2))
    organ = ndimage.binary_dilation(ct.masks["liver"], ndimage.generate_binary_structure(2, 1)[None],
                                    iterations=2)
    result = detect(ct.to_sitk(), ct.to_sitk(organ.astype(np.uint8)), **LIVER_CT)
    assert sitk.GetArrayFromImage(result.image).max() == 0, describe(ct.to_sitk(), result)


def test_the_accuracy_table_counts_a_lesion_the_field_of_view_cuts_to_a_small_cap_apart(monkeypatch) -> None:  # noqa: ANN001
    """``benchmarks/accuracy.py``'s lesion rows expect lesions of 10 mm or more: one whose centre lies beyond
    the outer slice, so that the images sample only a section under 10 mm of it (``extent-120-upper``'s
    16 mm lesion, 6.6 mm beyond its first slice's centre: a 9 mm cap), is counted apart; one whose centre
    is in view counts whole, one that reaches no slice not at all."""
    import importlib.util
    import sys
    from pathlib import Path

    path = Path(__file__).resolve().parents[2] / "benchmarks" / "accuracy.py"
    spec = importlib.util.spec_from_file_location("accuracy_benchmark", path)
    accuracy = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, accuracy)  # (its dataclasses look their module up)
    spec.loader.exec_module(accuracy)
    image = sitk.Image(8, 8, 24, sitk.sitkFloat32)
    image.SetSpacing((2.8, 2.8, 5.0))
    image.SetOrigin((0.0, 0.0, -27.5))
    assert accuracy._visible_width(image, (10.0, 10.0, -34.1), 16.0) == pytest.approx(9.0, abs=0.1)
    assert accuracy._visible_width(image, (10.0, 10.0, -14.6), 25.0) == 25.0
    assert accuracy._visible_width(image, (10.0, 10.0, -40.0), 16.0) == 0.0


def test_a_round_lesion_beside_a_brighter_vessel_on_thick_slices_is_found_or_named(monkeypatch) -> None:  # noqa: ANN001
    """The whole pipeline on the accuracy matrix's ``arterial-steatosis-40`` phantom (arterial phase, liver
    at -40 HU): its 25 mm lesion (30 HU, +70 against the liver) lies 4 mm from the portal vein (90 HU) and
    joins it at half the threshold. On 5 mm slices its inscribed / equivalent diameter is only 0.64 (the
    slice grid cuts a sphere's inscribed ball), below the 0.7 of a round lesion, so it was dropped as a
    piece of the vessel with nothing said (3 of 4 found, liver QC silent). Its three axes are within 1.2
    of each other (vessel pieces: 1.6 or more) and the vessel is brighter than it: a lesion beside a
    vessel, found. Without that rule (the search run again on the pipeline's liver) it is dropped again,
    and the liver's QC names the drop: warn ``low_contrast``, its size, position and why."""
    import dicomnode.imaging.lesions as lesions
    from dicomnode.imaging.qc import QCFlag, QCReport, QCStatus, SegmentQC
    from dicomnode.imaging.volume import Volume
    from dicomnode.jobs import JobSpec
    from dicomnode.pipelines.registry import get_pipeline
    from dicomnode.pipelines.runner import process_volume, with_lesion_search_limits

    ct = make_ct_phantom(seed=5, phase="arterial", liver_hu=-40.0, hepatic_vessels=True, fat_planes=True,
                         ivc=True)
    spec = get_pipeline("liver-ct")
    volume = Volume.from_sitk(ct.to_sitk(), modality="CT", units="HU")
    processed, summary = process_volume(spec, volume, JobSpec("steatosis", "liver-ct", {}, (), "/"))
    lesion_masks = [s.mask for s in processed.segments if s.category == "lesion"]
    liver = next(s for s in processed.segments if s.label == "Liver")
    touching = next(t for t in ct.lesions if t.diameter_mm == 25.0)
    found = {t.diameter_mm for t in ct.lesions if t.diameter_mm >= 10
             and any(m[ct.lesion_labels == t.label].mean() > 0.5 for m in lesion_masks)}
    assert all((m & (ct.lesion_labels > 0)).any() for m in lesion_masks), summary["estimates"]  # no false
    assert found == {25.0, 16.0, 12.0, 10.0}, found
    assert not [r for r in liver.qc.reasons if "was not reported as a lesion" in r]

    monkeypatch.setattr(lesions, "BLOB_AXES", 0.0)
    step = next(s for s in spec.steps if s.use == "lesions.detect")
    dropped = detect(ct.to_sitk(), ct.to_sitk(liver.mask.astype(np.uint8)), **step.params)
    assert not sitk.GetArrayFromImage(dropped.image)[ct.lesion_labels == touching.label].any()
    estimates = {f"lesions.{k}": str(v) for k, v in dropped.estimates.items() if isinstance(v, str | float)}
    named = with_lesion_search_limits(QCReport({"Liver": SegmentQC(QCStatus.PASS)}), spec, estimates)
    verdict = named.segments["Liver"]
    (reason,) = verdict.reasons
    assert verdict.status == QCStatus.WARN and QCFlag.LOW_CONTRAST in verdict.flags
    assert "round hyperdense candidate of 2" in reason, reason  # 24-25 mm
    named_at = [float(v) for v in reason.split(" mm at (")[1].split(")")[0].split(", ")]
    assert np.linalg.norm(np.subtract(named_at, touching.centre_mm)) < 5.0, reason
    assert "(continues as a vessel)" in reason and "not ruled out" in reason
