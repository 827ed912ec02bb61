"""Abdominal organs in competition (liver-ct's ``abdomen.organs``) on the real CT and realistic variants.

The reference is TotalSegmentator's label map of ``ct-abdomen-20`` (5 liver, 1 spleen). Each variant
rewrites pixels and geometry together (tests/variants.py), so the variant is scored against its own
transformed reference.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import SimpleITK as sitk

from dicomnode.imaging.assess import stomach_checks
from dicomnode.imaging.metrics import dice
from dicomnode.imaging.organs.abdomen import LABELS
from dicomnode.imaging.qc import QCFlag
from dicomnode.pipelines.registry import get_pipeline
from dicomnode.pipelines.runner import execute
from tests import variants

REF_LIVER, REF_SPLEEN, REF_AORTA, REF_STOMACH = 5, 1, 52, 6


@pytest.fixture(scope="module")
def real_case() -> tuple[sitk.Image, sitk.Image]:
    return variants.real_case()


def organs_of(image: sitk.Image) -> tuple[np.ndarray, np.ndarray]:
    spec = get_pipeline("liver-ct")
    ids = [s.id for s in spec.steps]
    short = dataclasses.replace(spec, steps=spec.steps[: max(ids.index("organs"), ids.index("liver")) + 1])
    context = execute(short, image).context
    return sitk.GetArrayFromImage(context["liver"]) > 0, sitk.GetArrayFromImage(context["organs"])


def test_real_abdomen_liver_and_spleen_in_competition(real_case) -> None:  # noqa: ANN001
    image, labels = real_case
    liver, organs = organs_of(image)
    reference = sitk.GetArrayFromImage(labels)
    assert dice(liver, reference == REF_LIVER) >= 0.93
    assert dice(organs == LABELS["spleen"], reference == REF_SPLEEN) >= 0.85
    assert not (liver & (organs == LABELS["spleen"])).any()  # one organ per voxel
    # the aorta with the partial volume at its border and the calcified plaques of its wall, without the
    # origins of its branches (0.84: the contour lay inside the lumen's edge and took the coeliac trunk),
    # its border drawn again on the source pixels (0.894 on the 2 mm grid alone; 0.912)
    assert dice(organs == LABELS["aorta"], reference == REF_AORTA) >= 0.90
    # no kidney in this field of view (the slices end above them): none may be invented
    assert not np.isin(organs, [LABELS["kidney-right"], LABELS["kidney-left"]]).any()
    # the stomach (full of food, a pocket of gas in front): right, or its QC says what is wrong (its contour
    # holds the gas pocket only: Dice 0.27, withheld)
    stomach = organs == LABELS["stomach"]
    if dice(stomach, reference == REF_STOMACH) < 0.85:
        neighbours = [("Liver", liver), ("Spleen", organs == LABELS["spleen"])]
        found = stomach_checks("Stomach", sitk.GetArrayFromImage(image), stomach, image.GetSpacing()[::-1],
                               neighbours)
        assert QCFlag.IMPLAUSIBLE_INTENSITY in [flag for flag, _ in found]
        assert any("is gas" in reason for _, reason in found)


@pytest.mark.parametrize("variant", ["prone", "native", "lower-20mm"])
def test_real_abdomen_variants(real_case, variant: str) -> None:  # noqa: ANN001
    image, labels = real_case
    if variant == "prone":  # rows and columns reversed, direction cosines (-1, -1, 1): same patient positions
        image, labels = variants.prone(image, labels)
    elif variant == "lower-20mm":  # a shorter craniocaudal field of view: 10 slices, no lung base
        image, labels = variants.slab(image, labels, keep_mm=20.0, end="inferior")
    else:  # no contrast: liver 55, spleen 45 HU, vessels 40 HU (the spleen no longer differs by intensity)
        image, labels = variants.native_phase(
            image, labels, tissue_hu={REF_LIVER: 55.0, REF_SPLEEN: 45.0, 52: 40.0, 63: 40.0, 64: 40.0}
        )
    liver, organs = organs_of(image)
    reference = sitk.GetArrayFromImage(labels)
    assert dice(liver, reference == REF_LIVER) >= (0.90 if variant == "native" else 0.93)
    assert dice(organs == LABELS["spleen"], reference == REF_SPLEEN) >= 0.85
    # no kidney in these slices: none may be invented (the native liver's darker back passed for one when
    # the perirenal-fat test looked past the kidney's own rim)
    assert not np.isin(organs, [LABELS["kidney-right"], LABELS["kidney-left"]]).any()


def test_real_steatotic_liver_at_minus_40_hu(real_case) -> None:  # noqa: ANN001
    """Steatosis at -40 HU (tests/variants.fatty_liver on the real CT): the liver lies 40 HU above the
    smoothed fat (-79 HU), and its posterior part, 20 HU darker than the rest in this patient, reaches
    within 10 HU of it. The liver is found whole (it was 0.55: the band searched from 0 HU missed it, the
    competition's soft-tissue band and the muscle layer cut its back off), the spleen keeps its own and no
    kidney is made of the liver's dark posterior part (none is in this field of view)."""
    image, labels = variants.fatty_liver(*real_case, liver_value=REF_LIVER, target_hu=-40.0)
    liver, organs = organs_of(image)
    reference = sitk.GetArrayFromImage(labels)
    assert dice(liver, reference == REF_LIVER) >= 0.90
    assert dice(organs == LABELS["spleen"], reference == REF_SPLEEN) >= 0.85
    assert not np.isin(organs, [LABELS["kidney-right"], LABELS["kidney-left"]]).any()


PHANTOM_KEYS = ("liver", "spleen", "kidney-right", "kidney-left", "aorta")


@pytest.mark.parametrize(
    ("params", "position", "minimum"),
    [
        # portal phase: every organ, the right kidney against the liver and the body wall too
        ({"phase": "portal"}, "supine",
         {"liver": 0.93, "spleen": 0.9, "kidney-right": 0.9, "kidney-left": 0.9, "aorta": 0.9}),
        # fatty liver at 10 HU, darker than the spleen, scanned feet first
        ({"phase": "portal", "liver_hu": 10.0}, "feet-first", {"liver": 0.93, "spleen": 0.85}),
        # native phase: liver 58, muscle 48, spleen 46, aorta 42, kidneys 32 HU: the liver must not follow
        # the body wall's muscle, the spleen not grow into the kidney, the aorta is found in its fat, the
        # kidneys keep their back below the ribs' lateral ends (this phantom has no ribs round the back)
        ({"phase": "native"}, "supine",
         {"liver": 0.9, "spleen": 0.88, "kidney-right": 0.88, "kidney-left": 0.88, "aorta": 0.8}),
        # arterial phase: the aorta (280 HU) is brighter than the bone threshold; the kidneys' cortex (180 HU)
        # enhances before their medulla (95 HU, nearer the liver's 75 than the cortex): each kidney is its
        # cortex and what that encloses
        ({"phase": "arterial"}, "supine",
         {"liver": 0.93, "aorta": 0.95, "kidney-right": 0.9, "kidney-left": 0.9}),
        # a child's arterial phase (0.7): the aorta, brighter than the bone threshold and against the
        # vertebral body, is no bone (the spine's front had moved onto it and the aorta was withheld); its
        # border drawn on the source pixels (0.963)
        # (and its kidneys touch the wall's muscle behind them: their border, the local mean outside mixing
        # muscle and fat, grew by a voxel into it, 0.88)
        ({"phase": "arterial", "body_scale": 0.7}, "supine",
         {"liver": 0.93, "aorta": 0.93, "spleen": 0.9, "kidney-right": 0.9, "kidney-left": 0.9}),
        # steatosis at -40 HU (the lower bound), 60 HU above the fat: the chain's band is found
        # above the fat's level, the fat level comes from the subcutaneous fat, not from the liver; spleen and
        # kidneys keep their own
        ({"phase": "portal", "liver_hu": -40.0}, "supine",
         {"liver": 0.93, "spleen": 0.9, "kidney-right": 0.9, "kidney-left": 0.9}),
        # arterial phase with a fatty liver (10 HU): the soft tissue's level, and the bone threshold with it,
        # falls to 180 HU, the kidneys' enhancement (they were both lost)
        ({"phase": "arterial", "liver_hu": 10.0}, "supine",
         {"liver": 0.93, "kidney-right": 0.9, "kidney-left": 0.9}),
        # a 120 mm slab ending through the kidneys: their widest slices lie on the cut (the right kidney was
        # lost where the opening ate them)
        ({"shape": (24, 128, 128), "z_centre_mm": -20.0}, "supine",
         {"liver": 0.93, "kidney-right": 0.9, "kidney-left": 0.9}),
        # a child (body scale 0.7) without contrast: spleen 46, kidneys 32 HU, with little fat between them;
        # the spleen's seed ran into the left kidney, which was not found, and the spleen grew over it
        # (0.62, volume x 2) and down the body wall's muscle of its own attenuation
        ({"phase": "native", "body_scale": 0.7}, "supine",
         {"liver": 0.93, "spleen": 0.83, "kidney-right": 0.8, "kidney-left": 0.88}),
    ],
    ids=["portal", "fatty-ffs", "native", "arterial", "arterial-child", "steatosis-40", "arterial-fatty",
         "slab-120", "native-child"],
)
def test_phantom_organs_in_competition(params: dict, position: str, minimum: dict[str, float]) -> None:
    """Phantom with fat planes (tests/phantoms.py): each organ scored against the phantom's truth."""
    from tests.phantoms import make_ct_phantom

    ct = make_ct_phantom(seed=5, fat_planes=True, hepatic_vessels=True, **params)
    image = ct.to_sitk()
    labels = np.zeros(ct.image.shape, dtype=np.uint8)
    for value, key in enumerate(PHANTOM_KEYS, 1):
        labels[ct.masks[key]] = value
    truth = ct.to_sitk(labels)
    if position == "feet-first":
        image, truth = variants.feet_first(image, truth)
    liver, organs = organs_of(image)
    reference = sitk.GetArrayFromImage(truth)
    for key, floor in minimum.items():
        value = PHANTOM_KEYS.index(key) + 1
        found = liver if key == "liver" else organs == LABELS[key]
        assert dice(found, reference == value) >= floor, key


@pytest.mark.parametrize(("params", "position", "minimum"), [
    # portal phase: 130 HU blood beside the right crus and in the liver's bare area (105 HU liver), scanned
    # feet first (the course runs the other way along the slices); its border in the liver drawn on the mean
    # along its course (0.893 on the working grid's contour: 22 HU over 12 HU noise)
    ({"phase": "portal"}, "feet-first", 0.90),
    # another noise draw: the course's last 20 mm drew off the lumen towards what lies beyond its end (the
    # path ran on through the slices above it; 0.846); the course now ends where the vessel does
    ({"phase": "portal", "seed": 3}, "supine", 0.90),
    # native phase: 40 HU blood, darker than the 58 HU liver it passes through
    ({"phase": "native"}, "supine", 0.7),
])
def test_the_ivc_in_competition(params: dict, position: str, minimum: float) -> None:
    """The IVC (tests/phantoms.py ``ivc=True``) found as one continuous course, against the phantom's truth;
    the aorta beside it keeps its own."""
    from tests.phantoms import make_ct_phantom

    params = {"seed": 5, **params}
    ct = make_ct_phantom(fat_planes=True, hepatic_vessels=True, ivc=True, **params)
    image = ct.to_sitk()
    truth = ct.to_sitk(ct.masks["ivc"].astype(np.uint8) + 2 * ct.masks["aorta"].astype(np.uint8))
    if position == "feet-first":
        image, truth = variants.feet_first(image, truth)
    _, organs = organs_of(image)
    reference = sitk.GetArrayFromImage(truth)
    assert dice(organs == LABELS["ivc"], reference == 1) >= minimum
    assert dice(organs == LABELS["aorta"], reference == 2) >= 0.85


@pytest.mark.parametrize("seed", [2, 4])
def test_kidneys_in_their_fat_whatever_the_noise_draw(seed: int) -> None:
    """The kidneys are told from the psoas by the fat around them. Measured on a shell that held the
    kidney's own partial-volume rim, the fat's share swung with the noise between 0.11 and 0.34 about the 0.3
    it must reach: the base phantom without fat planes lost one or both kidneys on 4 of 5 noise draws."""
    from tests.phantoms import make_ct_phantom

    ct = make_ct_phantom(seed=seed, ivc=True)
    _, organs = organs_of(ct.to_sitk())
    for key in ("kidney-right", "kidney-left"):
        assert dice(organs == LABELS[key], ct.masks[key]) >= 0.95, key


@pytest.mark.parametrize("variant", ["arterial", "fatty-liver"])
def test_real_vessels_of_other_phases_and_livers(real_case, variant: str) -> None:  # noqa: ANN001
    """The late arterial phase (aorta 300 HU, above the bone threshold, against the vertebra's front): the
    lumen is not taken for bone, so the spine's front stays where the reference's vertebra puts it and the
    aorta is found (it was withheld: the spine's front had moved onto the aorta's). A fatty liver (10 HU):
    the IVC, brighter than the liver around it, keeps the border drawn on the source pixels (0.874 on the
    2 mm grid: its section 16 % short)."""
    from dicomnode.imaging.organs.landmarks import find_landmarks, to_lps

    image, labels = real_case
    if variant == "arterial":
        image, labels = variants.arterial_phase(image, labels)
        oriented = to_lps(image)
        array = sitk.GetArrayFromImage(oriented)
        spacing = tuple(float(s) for s in oriented.GetSpacing()[::-1])
        lm = find_landmarks(array, array > -400.0, spacing)  # type: ignore[arg-type]
        vertebra = sitk.GetArrayFromImage(to_lps(labels))
        vertebra = (vertebra >= 26) & (vertebra <= 50)  # TotalSegmentator's vertebrae S1..C1
        rows = np.arange(array.shape[1]) * spacing[1]
        fronts = np.array([np.percentile(rows[np.nonzero(vertebra[k])[0]], 3) for k in range(array.shape[0])])
        assert np.abs(lm.spine_y - fronts).max() < 10.0, (lm.spine_y - fronts).round(1)
    else:
        image, labels = variants.fatty_liver(image, labels, liver_value=REF_LIVER, target_hu=10.0)
    liver, organs = organs_of(image)
    reference = sitk.GetArrayFromImage(labels)
    assert dice(liver, reference == REF_LIVER) >= (0.93 if variant == "arterial" else 0.92)  # 0.945, 0.925
    assert not (liver & np.isin(organs, [LABELS["aorta"], LABELS["ivc"]])).any()  # one organ per voxel
    if variant == "arterial":
        assert dice(organs == LABELS["aorta"], reference == REF_AORTA) >= 0.88
    else:
        assert dice(organs == LABELS["ivc"], reference == 63) >= 0.90


def test_the_spine_is_found_where_the_field_of_view_cuts_the_trunk(real_case) -> None:  # noqa: ANN001
    """A field of view cut through the patient's right moves the body's centre 3-4 cm away from the spine;
    the vertebral body (centre line and front) must still be found where it is (it was found 40 mm too far
    back, on the posterior elements, and the aorta's track then ran on the vertebral body)."""
    from dicomnode.imaging.organs.landmarks import find_landmarks, to_lps

    image, labels = real_case
    cropped, _ = variants.crop(image, labels, keep_fraction=0.72, side="right")
    found = []
    for img in (image, cropped):
        oriented = to_lps(img)
        array = sitk.GetArrayFromImage(oriented)
        spacing = tuple(float(s) for s in oriented.GetSpacing()[::-1])
        lm = find_landmarks(array, array > -400.0, spacing)  # type: ignore[arg-type]
        origin = oriented.GetOrigin()
        found.append((np.median(lm.spine_x) + origin[0], np.median(lm.spine_y) + origin[1]))
    (x_full, y_full), (x_cut, y_cut) = found
    assert abs(x_cut - x_full) < 5.0 and abs(y_cut - y_full) < 5.0, found


def test_phantom_anatomy_keeps_its_place_on_a_longer_field_of_view() -> None:
    """tests/phantoms.py: a field of view longer than 200 mm shows more of the patient (chest above; psoas,
    bowel and pelvis below), not the same organs stretched; a 120 mm slab cuts the liver at both ends."""
    from tests.phantoms import make_ct_phantom

    common = {"spacing": (5.0, 5.6, 5.6), "lesions": False, "fat_planes": True}
    standard = make_ct_phantom(shape=(40, 64, 64), **common)
    long = make_ct_phantom(shape=(80, 64, 64), **common)
    slab = make_ct_phantom(shape=(24, 64, 64), z_centre_mm=-20.0, **common)

    def extent(ct, key: str) -> tuple[float, float]:  # noqa: ANN001
        z = np.flatnonzero(ct.masks[key].any(axis=(1, 2))) * ct.spacing[0] + ct.origin[2]
        return float(z[0]), float(z[-1])

    for key in ("liver", "spleen", "kidney-left"):  # the same organ at the same patient position and size
        assert abs(long.masks[key].sum() - standard.masks[key].sum()) <= 0.02 * standard.masks[key].sum(), key
        assert extent(long, key) == pytest.approx(extent(standard, key), abs=5.0), key
    assert long.origin[2] < standard.origin[2] - 100.0  # most of the extra length lies below
    for key in ("pelvis", "bowel", "psoas", "heart"):
        assert long.masks[key].any() and not standard.masks[key].any(), key
    liver = slab.masks["liver"].any(axis=(1, 2))
    assert liver[0] and liver[-1]  # cut at both ends


def test_long_field_of_view_organs() -> None:
    """A 400 mm field of view (chest to pelvis): the spleen is not the bowel that fills its territory on such
    a field (1 l of 40 HU tissue, Dice 0.005, when it was looked for by the territory's mode alone), the
    kidneys are not the psoas they touch (its attenuation is the blob's mode; it runs on along the spine)."""
    from tests.phantoms import make_ct_phantom

    ct = make_ct_phantom(shape=(80, 128, 128), spacing=(5.0, 2.8, 2.8), seed=5, fat_planes=True,
                         hepatic_vessels=True)
    liver, organs = organs_of(ct.to_sitk())
    assert dice(liver, ct.masks["liver"]) >= 0.93
    for key in ("spleen", "kidney-right", "kidney-left", "aorta"):
        assert dice(organs == LABELS[key], ct.masks[key]) >= 0.9, key


def test_native_300_mm_field_liver_below_the_heart_kidneys_beside_the_psoas() -> None:
    """Native phase on a 300 mm field (lower chest to the iliac crests): heart 40, wall muscle and psoas 48,
    spleen 46, liver 58, kidneys 32 HU. The liver chain's band holds all of them; the liver stays below the
    heart and inside the body wall (it took the whole heart below the mediastinum's cut, Dice 0.82). The
    kidneys, 16 HU below the psoas they touch, are not the psoas (its larger peak hid their level in the
    gutter blob's histogram: 0.63/0.52 at +108/+54 % volume), and the spleen's seed gives back the left
    kidney's level, not the psoas' that was first taken for the kidney (spleen 0.85)."""
    from tests.phantoms import make_ct_phantom

    ct = make_ct_phantom(shape=(60, 128, 128), spacing=(5.0, 2.8, 2.8), seed=5, fat_planes=True,
                         hepatic_vessels=True, phase="native")
    liver, organs = organs_of(ct.to_sitk())
    voxel_ml = float(np.prod(ct.spacing)) / 1000.0
    assert dice(liver, ct.masks["liver"]) >= 0.93
    assert (liver & ct.masks["heart"]).sum() * voxel_ml < 30.0  # 290 ml before
    top = np.flatnonzero(ct.masks["liver"].any(axis=(1, 2)))[-1]
    assert not liver[top + 3 :].any()  # nothing 15 mm above the liver's dome
    wall = (np.abs(ct.clean - 48.0) < 1.0) & ~ct.masks["psoas"]  # the body wall's muscle
    assert (liver & wall).sum() * voxel_ml < 120.0  # 480 ml before
    for key in ("kidney-right", "kidney-left", "spleen"):
        found = organs == LABELS[key]
        assert dice(found, ct.masks[key]) >= 0.89, key
        assert (found & ct.masks["psoas"]).sum() * voxel_ml < 10.0, key  # 85-90 ml before


def test_native_400_mm_field_kidneys_beside_the_psoas_spleen_beside_the_kidney() -> None:
    """Native phase on a 400 mm field (chest to pelvis): each gutter blob is a kidney with the psoas it
    touches, the psoas' level (48 HU) its mode, its band (± 20 HU) taking the 32 HU kidney too: both kidneys
    were rejected as tissue running on along the spine and the spleen grew over the left one (+27 %). The
    kidney's level is the mode of the blob's tissue below the muscle's band, its core what lies nearer that
    level than the muscle's."""
    from tests.phantoms import make_ct_phantom

    ct = make_ct_phantom(shape=(80, 128, 128), spacing=(5.0, 2.8, 2.8), seed=5, fat_planes=True,
                         hepatic_vessels=True, phase="native")
    _, organs = organs_of(ct.to_sitk())
    for key in ("kidney-right", "kidney-left", "spleen"):
        assert dice(organs == LABELS[key], ct.masks[key]) >= 0.88, key
    assert ((organs == LABELS["spleen"]) & ct.masks["kidney-left"]).sum() < 100  # 1476 voxels before


def test_a_childs_lungs_behind_a_thin_chest_wall_give_the_lung_bases() -> None:
    """A child's chest wall (body scale 0.7: under 10 mm of fat and muscle round the lungs) is thinner than
    the trunk's opening, which drops table and arms: the wall broke into pieces, the trunk was the largest
    piece without the lungs inside, no right lung base was found, and the liver was looked for at the top of
    the volume (arterial phase: liver Dice 0.001). The lungs are filled into the trunk before the opening."""
    from dicomnode.imaging.organs.landmarks import find_landmarks, to_lps
    from tests.phantoms import make_ct_phantom

    ct = make_ct_phantom(shape=(40, 128, 128), spacing=(5.0, 2.8, 2.8), seed=5, body_scale=0.7)
    from dicomnode.pipelines.steps import step_registry

    registry, context = step_registry(), {"image": ct.to_sitk()}
    for st in get_pipeline("liver-ct").steps[:3]:  # working grid, median, body: as the pipeline has them
        context[st.id] = registry[st.use].run([context[n] for n in st.inputs], {}, st.params)
    image = to_lps(context["smooth"])
    array = sitk.GetArrayFromImage(image)
    body = sitk.GetArrayFromImage(to_lps(context["body"])) > 0
    spacing = tuple(float(s) for s in image.GetSpacing()[::-1])
    lm = find_landmarks(array, body, spacing)  # type: ignore[arg-type]
    for key, found in (("lung-right", lm.lung_base_right), ("lung-left", lm.lung_base_left)):
        lung = sitk.GetArrayFromImage(to_lps(ct.to_sitk(ct.masks[key].astype(np.uint8)))) > 0
        areas = lung.sum(axis=(1, 2))
        base = float(np.flatnonzero(areas >= 0.1 * areas.max())[0]) * spacing[0]
        assert abs(found - base) <= 10.0, (key, found, base)


def test_the_aorta_is_one_course_where_a_neighbouring_vessel_nearly_ties() -> None:
    """The aorta's track is one continuous course: a vessel at the window's edge (the IVC) that stands out as
    much as the aorta on a few slices does not take its place there (per slice the best disc jumped to it,
    and the aorta's contour lay on the IVC over 18 mm of the 1 mm phantom)."""
    from dicomnode.imaging.organs.abdomen import _disc_path

    spacing = (2.0, 2.0, 2.0)
    array = np.full((12, 40, 60), -90.0, dtype=np.float32)
    yy, xx = np.mgrid[:40, :60]
    aorta = (yy - 20) ** 2 + (xx - 40) ** 2 <= 5**2
    ivc = (yy - 20) ** 2 + (xx - 12) ** 2 <= 4**2
    array[:, aorta] = 150.0
    array[:, ivc] = 125.0
    array[:4, ivc] = 160.0  # brighter than the aorta on the first slices
    window = np.ones(array.shape, dtype=bool)
    rows, cols, found, _, _ = _disc_path(array, window, 7.0, spacing, change=0.0, sectors=False)
    assert found.all()
    assert np.all(np.abs(cols - 40) <= 2) and np.all(np.abs(rows - 20) <= 2), cols


def test_branch_origins_leave_a_vessel_and_a_round_section_stays() -> None:
    """_cut_branches: a stub as wide as a coeliac trunk leaving a round section goes, the section stays
    whole; a slice that would keep under 0.6 of the median section is left as it is."""
    from dicomnode.imaging.organs.abdomen import _cut_branches

    spacing = (2.0, 1.0, 1.0)
    yy, xx = np.mgrid[:80, :80]
    disc = (yy - 40) ** 2 + (xx - 40) ** 2 <= 12**2
    labels = np.zeros((10, 80, 80), dtype=np.uint8)
    labels[:] = np.where(disc, 6, 0)
    stub = (np.abs(xx - 40) <= 4) & (yy >= 10) & (yy < 40)
    labels[2:4][:, stub & ~disc] = 6
    cut = labels.copy()
    _cut_branches(cut, 6, spacing)
    assert (cut[2:4][:, stub & ~disc] == 6).mean() < 0.1  # (its base, where it widens, stays)
    assert (cut[:, disc] == 6).mean() > 0.97  # the round section keeps (nearly) every voxel
    odd = labels.copy()  # one slice holds a thin lumen beside a large blob: nothing there is cut
    odd[6] = np.where(((yy - 40) ** 2 + (xx - 40) ** 2 <= 3**2) | ((np.abs(yy - 60) <= 6) & (xx < 70)), 6, 0)
    before = int((odd[6] == 6).sum())
    _cut_branches(odd, 6, spacing)
    assert int((odd[6] == 6).sum()) == before


def test_a_seed_grown_into_a_darker_organ_keeps_its_own_level() -> None:
    """An organ's seed that runs into a touching organ 14 HU darker (a native child's spleen, 44 HU, into
    the left kidney, 30 HU: its band is at least 15 HU wide) gives that organ back: its level is a second
    peak of the seed's histogram. A seed of one tissue is kept whole."""
    import types

    from dicomnode.imaging.organs.abdomen import _own_level

    rng = np.random.default_rng(3)
    array = np.full((12, 40, 40), -100.0, dtype=np.float32)
    spleen = np.zeros(array.shape, dtype=bool)
    spleen[2:10, 5:35, 5:22] = True
    kidney = np.zeros(array.shape, dtype=bool)
    kidney[2:10, 10:30, 22:32] = True
    array[spleen] = 44.0
    array[kidney] = 30.0
    array += rng.normal(0.0, 4.0, array.shape).astype(np.float32)
    lm = types.SimpleNamespace(fat_hu=-100.0)
    own = _own_level(array, lm, spleen | kidney)  # type: ignore[arg-type]
    assert (own & kidney).sum() < 0.05 * kidney.sum()
    assert (own & spleen).sum() > 0.8 * spleen.sum()
    assert np.array_equal(_own_level(array, lm, spleen), spleen)  # type: ignore[arg-type]


def test_no_kidney_below_the_muscle_level_with_contrast_in_the_aorta(real_case) -> None:  # noqa: ANN001
    """The real CT, arterial phase, as a child (0.6 x): no kidney lies in its field of view. A 19 HU blob of
    the left back muscle was sent as a 5 ml left kidney; with contrast in the aorta a kidney enhances more
    than muscle, so a candidate below the muscle's level is none."""
    image, labels = variants.child(*variants.arterial_phase(*real_case), scale=0.6)
    _, organs = organs_of(image)
    for key in ("kidney-right", "kidney-left"):
        assert not (organs == LABELS[key]).any(), key
