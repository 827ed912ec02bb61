"""lung-ct finds tumours: the lung envelope holds what lies inside the pleura and nodules/masses >= 4 mm
become ``Lesion N`` segments. Real data: lung1 (pyradiomics) with its reference tumour; a realistic
variant of it with broad-based juxtapleural nodules of 12, 18 and 24 mm inserted against the left chest
wall and, in the same run, small nodules nobody tuned for (6 mm deep in the lung, 8 mm against the chest
wall, 10 mm at either hilum: ``tests/variants.insert_nodule``, partial volume of lung1's 5 mm slices);
the abdomen phantom (lung bases on the liver dome, no lung nodule) reports none."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import SimpleITK as sitk

from dicomnode.imaging.assess import assess
from dicomnode.imaging.qc import QCFlag, QCStatus
from dicomnode.imaging.volume import Volume, load_series
from dicomnode.jobs import JobSpec
from dicomnode.pipelines.registry import get_pipeline
from dicomnode.pipelines.runner import process_volume
from tests import variants
from tests.phantoms import make_ct_phantom
from tests.support import shared_data


def dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2.0 * float((a & b).sum()) / float(a.sum() + b.sum())


@pytest.fixture(scope="module")
def lung1() -> tuple[Volume, np.ndarray]:
    volume = load_series(sorted(shared_data("radiomics", "lung1-dicom").glob("*.dcm")))
    label = sitk.GetArrayFromImage(sitk.ReadImage(str(shared_data("radiomics", "lung1_label.nrrd")))) > 0
    return volume, label


# broad-based juxtapleural nodules, far enough apart to share one run: (slice, radius in mm, lung, wall) —
# 12, 18 and 24 mm across on the left lateral chest wall, 18 and 12 mm on the right posterior wall (the
# 12 mm one's caps on the 5 mm slices above and below were lost: Dice 0.61, volume -52 %), 12 mm anterior
NODULES = ((10, 6.0, "left", "lateral"), (21, 9.0, "left", "lateral"), (32, 12.0, "left", "lateral"),
           (24, 9.0, "right", "posterior"), (12, 6.0, "right", "posterior"), (20, 6.0, "left", "anterior"))
# small and paramediastinal nodules at sites found in the image (tests/variants.nodule_site), away from the
# ones above: (where, side, slice, radius mm, row fraction) — a 6 mm one deep in the right upper lobe, an
# 8 mm one on the left chest wall, 10 mm ones against either hilum (cut by the envelope's medial border)
SMALL = (("parenchyma", "right", 40, 3.0, 0.5), ("pleura", "left", 28, 4.0, 0.5),
         ("mediastinum", "right", 26, 5.0, 0.5), ("mediastinum", "left", 28, 5.0, 0.5))


@pytest.fixture(scope="module")
def with_nodules(lung1):  # noqa: ANN001, ANN201
    """lung1 with the juxtapleural nodules inserted, processed once: (volume, truths, processed, summary);
    ``truths`` maps each of :data:`NODULES` to its truth and ``"tumour"`` to the reference."""
    volume, tumour = lung1
    truths: dict = {"tumour": tumour}
    array = volume.array
    for nodule in NODULES:
        index, radius, side, wall = nodule
        array, truths[nodule] = variants.juxtapleural(array, volume.spacing, slice_index=index,
                                                      radius_mm=radius, side=side, wall=wall)
    array = _insert_small(volume, array, SMALL, truths)
    return _run(volume, array, truths)


def _insert_small(volume, array: np.ndarray, nodules, truths: dict) -> np.ndarray:  # noqa: ANN001
    """``array`` with each of ``nodules`` ((where, side, slice, radius mm, row fraction[, kind])) inserted by
    tests.variants at the site it names, in lung1's own lung space; each truth goes into ``truths``."""
    space = variants.lung_space(volume.array)
    for seed, nodule in enumerate(nodules):
        where, side, index, radius, rows = nodule[:5]
        centre = variants.nodule_site(array, volume.spacing, where=where, side=side, slice_index=index,
                                      radius_mm=radius, row_fraction=rows, space=space)
        kind = nodule[5] if len(nodule) > 5 else "solid"
        array, truths[nodule] = variants.insert_nodule(array, volume.spacing, centre, radius, seed=seed,
                                                       space=space, kind=kind)
    return array


def _run(volume, array: np.ndarray, truths: dict):  # noqa: ANN001, ANN202
    """(variant, truths, processed, summary): lung-ct run once on ``volume`` with ``array``'s pixels."""
    variant = replace(volume, array=array)
    spec = JobSpec("t", "lung-ct", {}, (), "o")
    processed, summary = process_volume(get_pipeline("lung-ct"), variant, spec)
    return variant, truths, processed, summary


def test_lung1_tumour_and_juxtapleural_nodules_are_the_only_lesions(with_nodules) -> None:  # noqa: ANN001
    _, truths, processed, summary = with_nodules
    tumour = truths["tumour"]
    lungs = np.logical_or.reduce([s.mask for s in processed.segments if s.category == "organ"])
    lesions = [s for s in processed.segments if s.category == "lesion"]
    # nothing else: no vessel, bronchus, rib, the heart or the diaphragm dome
    assert [s.label for s in lesions] == [f"Lesion {n}" for n in range(1, len(NODULES) + len(SMALL) + 2)]
    assert all(s.structure == "neoplasm" for s in lesions)
    assert float((lungs & tumour).sum()) / tumour.sum() > 0.95  # was 24 % before the envelope
    best = max(lesions, key=lambda s: dice(s.mask, tumour))
    assert dice(best.mask, tumour) >= 0.85
    assert summary["segments"][best.label]["volume_ml"] == pytest.approx(1.36, rel=0.35)
    assert summary["qc"]["segments"][best.label]["status"] == "pass", summary["qc"]["segments"][best.label]


@pytest.mark.parametrize("nodule", NODULES, ids=[f"{2 * r:.0f}mm-{s}-{w}" for _, r, s, w in NODULES])
def test_a_juxtapleural_nodule_is_segmented_to_the_chest_wall(with_nodules, nodule) -> None:  # noqa: ANN001
    """The pleural line is carried across the nodule's broad base: the whole nodule is one lesion inside
    the lungs (not the half that indents the air), with its volume, and QC passes it."""
    volume, truths, processed, summary = with_nodules
    truth = truths[nodule]
    lungs = np.logical_or.reduce([s.mask for s in processed.segments if s.category == "organ"])
    lesions = [s for s in processed.segments if s.category == "lesion"]
    best = max(lesions, key=lambda s: dice(s.mask, truth))
    assert dice(best.mask, truth) >= 0.8
    truth_ml = float(truth.sum()) * float(np.prod(volume.spacing)) / 1000.0
    assert summary["segments"][best.label]["volume_ml"] == pytest.approx(truth_ml, rel=0.3)
    # the pleural indentation is repaired (on the 2 mm working grid: a small nodule's base lies in the lesion
    # carried out to the pleura, not in the lung mask)
    assert float((lungs & truth).sum()) / truth.sum() > 0.5
    assert float(((lungs | best.mask) & truth).sum()) / truth.sum() > 0.8
    assert summary["qc"]["segments"][best.label]["status"] == "pass", summary["qc"]["segments"][best.label]


@pytest.mark.parametrize("nodule", SMALL, ids=[f"{2 * r:.0f}mm-{w}-{s}" for w, s, _, r, _ in SMALL])
def test_a_small_or_hilar_nodule_is_one_lesion_with_its_volume(with_nodules, nodule) -> None:  # noqa: ANN001
    """6-10 mm nodules deep in the lung, on the chest wall and against the hilum (where the envelope's
    medial border cut them in half before: Dice 0.71, volume -42 %) are each one lesion with their volume;
    a hilar one is `warn` `truncated` (its extent against the mediastinum is estimated), the others pass."""
    volume, truths, processed, summary = with_nodules
    truth = truths[nodule]
    lesions = [s for s in processed.segments if s.category == "lesion"]
    best = max(lesions, key=lambda s: dice(s.mask, truth))
    assert dice(best.mask, truth) >= 0.85
    truth_ml = float(truth.sum()) * float(np.prod(volume.spacing)) / 1000.0
    assert summary["segments"][best.label]["volume_ml"] == pytest.approx(truth_ml, rel=0.25)
    verdict = summary["qc"]["segments"][best.label]
    if nodule[0] == "mediastinum":  # its medial extent is estimated where the lung's contour stops: said so
        assert verdict["status"] == "warn" and "truncated" in verdict["flags"]
        assert "against the mediastinum or hilum" in " ".join(verdict["reasons"])
    else:
        assert verdict["status"] == "pass"


def test_a_nodule_cut_at_the_lung_edge_is_flagged_not_passed(with_nodules) -> None:  # noqa: ANN001
    """A juxtapleural nodule whose contour stops inside the pleural line (the half that indents the air:
    what the envelope's repair gave before) is `warn` `truncated`, its volume called underestimated."""
    volume, truths, processed, _ = with_nodules
    truth = truths[NODULES[1]]
    lesions = [s for s in processed.segments if s.category == "lesion"]
    best = max(lesions, key=lambda s: dice(s.mask, truth))
    columns = np.nonzero(best.mask)[2]
    half = best.mask.copy()
    half[:, :, int(np.median(columns)):] = False  # the lateral half (the left chest wall is +x) left out
    cut = best.mask & ~half  # ... by the lung's contour too
    segments = [replace(s, mask=half) if s is best else replace(s, mask=s.mask & ~cut)
                if s.category == "organ" else s for s in processed.segments]
    report, _ = assess(volume.array, volume.spacing, segments, axial_axis=0)
    verdict = report.segments[best.label]
    assert verdict.status == QCStatus.WARN and QCFlag.TRUNCATED in verdict.flags
    assert "volume may be underestimated" in " ".join(verdict.reasons)
    whole, _ = assess(volume.array, volume.spacing, processed.segments, axial_axis=0)
    assert whole.segments[best.label].status == QCStatus.PASS


def test_an_inserted_nodule_is_imaged_like_a_5mm_slice_would() -> None:
    """The variant is physically honest: a 10 mm solid nodule centred on a 5 mm slice fills that slice
    (soft tissue at its centre), is a partial-volume mixture on the slices above and below (below half
    filled: not in the truth), replaces only lung, and a ground-glass one keeps the vessel through it."""
    spacing = (5.0, 0.7, 0.7)
    array = np.full((9, 64, 64), -850.0, dtype=np.float32)
    array[:, :, :4] = 40.0  # chest wall on one side
    array[:, 30:33, 40:43] = 40.0  # a vessel running through the slices
    space = np.ones(array.shape, dtype=bool)
    space[:, :, :4] = False
    centre = (4 * 5.0, 32 * 0.7, 32 * 0.7)
    out, truth = variants.insert_nodule(array, spacing, centre, 5.0, lobulation=0.0, noise_sd=0.0,
                                        space=space)
    assert out[4, 32, 32] == pytest.approx(35.0, abs=5.0)
    assert -850.0 < out[3, 32, 32] < -300.0 and -850.0 < out[5, 32, 32] < -300.0  # the caps: partial volume
    assert set(np.flatnonzero(truth.any(axis=(1, 2)))) == {4}
    # the cross-section on the slice: a disc of radius sqrt(5^2 - 1.25^2)-ish (half of the slab filled)
    area = float(truth[4].sum()) * 0.49
    assert np.pi * 4.0**2 < area < np.pi * 5.0**2
    glass, _ = variants.insert_nodule(array, spacing, (4 * 5.0, 32 * 0.7, 38 * 0.7), 5.0,
                                      kind="ground-glass", lobulation=0.0, noise_sd=0.0, space=space)
    assert glass[4, 32, 38] == pytest.approx(-480.0, abs=10.0)
    assert glass[4, 31, 41] >= 39.0  # the vessel inside the ground glass keeps its density
    near_wall, wall_truth = variants.insert_nodule(array, spacing, (4 * 5.0, 20 * 0.7, 5 * 0.7), 4.0,
                                                   space=space)
    assert np.array_equal(near_wall[:, :, :4], array[:, :, :4]) and not wall_truth[:, :, :4].any()


def test_no_lung_lesion_in_a_lesion_free_chest() -> None:
    for seed, shape, spacing in ((4, (40, 128, 128), (5.0, 2.8, 2.8)), (13, (30, 96, 96), (5.0, 3.2, 3.2))):
        ct = make_ct_phantom(shape=shape, spacing=spacing, seed=seed)  # liver lesions only
        volume = Volume(array=ct.image, spacing=ct.spacing, origin=ct.origin, direction=ct.direction,
                        modality="CT", units="HU")
        processed, _ = process_volume(get_pipeline("lung-ct"), volume, JobSpec("t", "lung-ct", {}, (), "o"))
        assert [s.label for s in processed.segments] == ["Right lung", "Left lung"]
        right = next(s.mask for s in processed.segments if s.label == "Right lung")
        assert dice(right, ct.masks["lung-right"]) > 0.97  # the liver dome stays outside the lung


# nodules where the search cannot promise to look (``lung.search_limits``), with one it must find: (where,
# side, slice, radius mm, row fraction) — 5 mm on the left chest wall (4 mm wide on a 5 mm slice), 10 mm
# on the right chest wall near the apex (the lung above it ends), 12 mm against the left mediastinum (mostly
# outside the lung's contour), 8 mm on the left diaphragm dome, 8 mm deep in the right upper lobe, and a 12 mm
# ground-glass one (-480 HU) deep in the left lung
LIMITED = (("pleura", "left", 12, 2.5, 0.5), ("pleura", "right", 40, 5.0, 0.5),
           ("mediastinum", "left", 20, 6.0, 0.3), ("diaphragm", "left", 2, 4.0, 0.5),
           ("parenchyma", "right", 40, 4.0, 0.5), ("parenchyma", "left", 24, 6.0, 0.5, "ground-glass"))


@pytest.fixture(scope="module")
def at_the_limits(lung1):  # noqa: ANN001, ANN201
    """lung1 with the nodules of :data:`LIMITED` inserted, processed once: (volume, truths, processed,
    summary); ``truths`` maps each of :data:`LIMITED` to its truth and ``"tumour"`` to the reference."""
    volume, tumour = lung1
    truths: dict = {}
    array = _insert_small(volume, volume.array, LIMITED, truths)
    return _run(volume, array, {**truths, "tumour": tumour})


def test_a_missed_nodule_lies_where_the_lungs_qc_says_the_search_cannot_look(at_the_limits) -> None:  # noqa: ANN001
    """No silent miss: every inserted nodule is a lesion, or the QC of its lung warns with a reason whose
    region (``lung.nodule_search_limits``: thick slices, the mediastinal band, the apex and diaphragm) holds
    at least half of it and whose size bound exceeds its size. The deep 8 mm nodule lies in no such region
    at its size: it must be found."""
    from dicomnode.imaging.organs.lung import nodule_search_limits

    volume, truths, processed, summary = at_the_limits
    lesions = [s for s in processed.segments if s.category == "lesion"]
    organs = [s for s in processed.segments if s.category == "organ"]
    image = volume.to_sitk()
    lungs = sitk.GetImageFromArray(np.logical_or.reduce([s.mask for s in organs]).astype(np.uint8))
    lungs.CopyInformation(image)
    limits = nodule_search_limits(image, lungs)
    assert {(limit.side, limit.region) for limit in limits} == {
        (side, region) for side in ("right", "left") for region in ("slices", "mediastinum", "surface")}
    missed = []
    for nodule, truth in truths.items():
        if any((s.mask & truth).any() for s in lesions) or nodule == "tumour":
            continue
        where, side, _, radius = nodule[:4]
        missed.append(where)
        verdict = summary["qc"]["segments"][f"{side.capitalize()} lung"]
        assert verdict["status"] == "warn" and "search_limited" in verdict["flags"], verdict
        explaining = [limit for limit in limits if limit.side == side and limit.mask[truth].mean() >= 0.5
                      and 2.0 * radius < limit.below_mm and limit.reason in verdict["reasons"]]
        assert explaining, f"{nodule} was missed and no QC reason of the {side} lung explains it"
    assert "parenchyma" not in missed
    # the 12 mm one against the heart (72 % outside the lung's own contour: its dent carried across by the
    # envelope, lung.envelope dent_mm) is found whole
    paramediastinal = truths[LIMITED[2]]
    assert dice(max(lesions, key=lambda s: dice(s.mask, paramediastinal)).mask, paramediastinal) >= 0.8
    # the ground-glass one's border is drawn half way between the parenchyma and its own density (the haze
    # threshold alone, 250 HU above the parenchyma, left out its half-filled border voxels: Dice 0.83, -30 %)
    glass = truths[LIMITED[5]]
    best = max(lesions, key=lambda s: dice(s.mask, glass))
    assert dice(best.mask, glass) >= 0.9
    assert float(best.mask.sum()) == pytest.approx(float(glass.sum()), rel=0.15)
    # lung1's 5 mm slices cannot promise a 4 mm nodule: that, not the regions every chest has, is why
    # both lungs warn (the regions are named among the reasons)
    assert summary["estimates"]["nodules.limit_right_slices"] in summary["qc"]["segments"]["Right lung"][
        "reasons"]
    assert "low_contrast" not in summary["qc"]["segments"]["Right lung"]["flags"]
    assert any((s.mask & truths["tumour"]).any() for s in lesions)
    assert all(any((s.mask & t).any() for t in truths.values()) for s in lesions)  # no false lesion


def test_the_search_limits_follow_the_slices_and_the_lungs_borders() -> None:
    """Two box lungs: on 1 mm slices no thickness limit; on 5 mm slices nodules under √(5² + 4²) = 6.4 mm
    may be missed; the mediastinal band lies along each lung's medial side only, the surface region within
    10 mm of its top and bottom only. The runner makes a lung ``warn search_limited`` only for a concrete
    reason — slices too thick for the promised 4 mm, or a round candidate dropped in one of its regions —
    naming each of its regions then; on thin slices with nothing dropped the lung's verdict stays as it was
    (those regions exist in every chest)."""
    from dicomnode.imaging.organs.lung import _PlaneCoordinates, search_limits
    from dicomnode.imaging.qc import QCReport, SegmentQC
    from dicomnode.pipelines.runner import with_nodule_search_limits

    outline = np.zeros((40, 60, 100), dtype=bool)
    outline[5:35, 10:50, 10:40] = True  # right lung (−x)
    outline[5:35, 10:50, 60:90] = True  # left lung
    image = sitk.GetImageFromArray(np.zeros(outline.shape, dtype=np.float32))
    plane = _PlaneCoordinates(image, tuple(slice(0, n) for n in outline.shape))
    thin = search_limits(outline, (1.0, 1.0, 1.0), plane, 49.5, 4.0)
    assert {(limit.side, limit.region) for limit in thin} == {
        (side, region) for side in ("right", "left") for region in ("mediastinum", "surface")}
    thick = {(limit.side, limit.region): limit for limit in search_limits(outline, (5.0, 1.0, 1.0), plane,
                                                                          49.5, 4.0)}
    assert thick["left", "slices"].below_mm == pytest.approx(6.4, abs=0.05)
    band = thick["left", "mediastinum"].mask
    assert band[20, 30, 60:70].all() and not band[20, 30, 71:].any() and not band[:, :, :50].any()
    surface = thick["right", "surface"].mask  # 2 slices of 5 mm at the top and at the bottom
    assert surface[[5, 6, 33, 34], 30, 20].all() and not surface[7:33, 30, 20].any()
    estimates = {f"nodules.limit_{limit.side}_{limit.region}": limit.reason for limit in thick.values()}
    report = QCReport({"Right lung": SegmentQC(), "Left lung": SegmentQC(), "Lesion 1": SegmentQC()})
    warned = with_nodule_search_limits(report, get_pipeline("lung-ct"), estimates)
    assert warned.segments["Lesion 1"] == SegmentQC()
    left = warned.segments["Left lung"]
    assert left.status == QCStatus.WARN and left.flags == (QCFlag.SEARCH_LIMITED,)
    assert sorted(left.reasons) == sorted(v.reason for (side, _), v in thick.items() if side == "left")
    assert all("left lung" in reason for reason in left.reasons)
    regions = {f"nodules.limit_{limit.side}_{limit.region}": limit.reason for limit in thin}
    assert with_nodule_search_limits(report, get_pipeline("lung-ct"), regions).segments == report.segments
    doubt = "A round 12 mm candidate at (30, 40, 28) mm in the surface region of the right lung was dropped."
    doubted = with_nodule_search_limits(report, get_pipeline("lung-ct"),
                                        {**regions, "nodules.doubt_right_surface": doubt}).segments
    assert doubted["Left lung"] == SegmentQC()
    right = doubted["Right lung"]
    assert right.status == QCStatus.WARN and right.flags == (QCFlag.SEARCH_LIMITED,)
    assert doubt in right.reasons and regions["nodules.limit_right_mediastinum"] in right.reasons


@pytest.mark.parametrize("depth", [6.0, 17.0], ids=["under-the-apex", "deep"])
def test_a_round_candidate_dropped_where_the_search_is_limited_is_named(depth: float) -> None:
    """Two box lungs on 1 mm slices; a round 12 mm blob of partial-volume density (dropped as ``faint``)
    6 mm under the right lung's apex lies in its ``surface`` region: the step names it (``doubt_right_
    surface``: size, position, why), the concrete reason for the lung to warn. The same blob deep in the
    lung is dropped without a doubt (the search can look there)."""
    from dicomnode.imaging.organs.lung import nodules

    shape = (40, 80, 120)
    lungs = np.zeros(shape, dtype=np.uint8)
    lungs[5:35, 10:70, 10:55] = 1
    lungs[5:35, 10:70, 65:110] = 1
    array = np.where(lungs > 0, -850.0, 40.0) + np.random.default_rng(0).normal(0, 10, shape)
    zz, yy, xx = np.indices(shape)
    array[(zz - (35 - depth)) ** 2 + (yy - 40) ** 2 + (xx - 30) ** 2 <= 36] = -250.0
    image = sitk.GetImageFromArray(array.astype(np.float32))
    mask = sitk.GetImageFromArray(lungs)
    mask.CopyInformation(image)
    out = nodules(image, mask)
    assert out.estimates["nodules"] == 0 and out.estimates["rejected"]["faint"] == 1
    doubts = {k: v for k, v in out.estimates.items() if k.startswith("doubt_")}
    if depth < 10.0:
        assert list(doubts) == ["doubt_right_surface"]
        assert doubts["doubt_right_surface"].startswith(
            f"A round 12 mm candidate at (30, 40, {35 - depth:.0f}) mm in the surface region of the right "
            "lung was dropped as partial volume")
    else:
        assert doubts == {}
