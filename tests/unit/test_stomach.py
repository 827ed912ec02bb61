"""The stomach in liver-ct's organ competition (``abdomen.organs``) and its QC (``assess.stomach_checks``).

Phantoms (tests/phantoms.py ``stomach=``): water only (no gas), gas floating over a water level (scanned
prone: the same voxels with the other direction cosines), positive oral contrast brighter than the bone
threshold; each scored against the phantom's truth (wall and contents), the liver and spleen beside it
against theirs. The full table (every kind, phase, position, orientation, the real CT and its variants) is in
``benchmarks/accuracy.py`` (``--cases phantom/stomach``).
"""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from dicomnode.imaging.assess import stomach_checks
from dicomnode.imaging.metrics import dice
from dicomnode.imaging.organs.abdomen import LABELS, refine_stomach
from dicomnode.imaging.qc import QCFlag
from tests import variants
from tests.phantoms import make_ct_phantom
from tests.unit.test_abdomen import organs_of

SHAPE, SPACING = (40, 96, 96), (5.0, 3.7, 3.7)  # the phantom's field of view on a coarser matrix


@pytest.mark.parametrize(("kind", "position", "minimum"), [
    # water without gas: no pocket of gas to start from (0.67 on this grid before the stomach was drawn
    # again on the source pixels, abdomen.stomach_on_source: the median across 5 mm slices ate its wall;
    # 0.985)
    ("fluid", "supine", 0.93),
    # gas over its water level, the patient's image turned prone (0.76 before; 0.949)
    ("gas-fluid", "prone", 0.9),
    # oral contrast at 300 HU, brighter than the bone threshold: a lumen, not bone (0.89 before; 0.967)
    ("contrast", "supine", 0.93),
    # water in a thin patient without fat planes: its border against the tissue around it is not in the
    # image (0.825, before as after: its wall drawn 4 mm deep, the poles a slice too far), and QC says so with
    # the share of its surface without a plane (it passed before)
    ("fluid", "no-fat-planes", 0.78),
])
def test_the_stomach_is_found_whatever_it_holds(kind: str, position: str, minimum: float) -> None:
    ct = make_ct_phantom(shape=SHAPE, spacing=SPACING, seed=5, fat_planes=position != "no-fat-planes",
                         hepatic_vessels=True, stomach=kind)
    image = ct.to_sitk()
    truth = ct.to_sitk(ct.masks["stomach"] + 2 * ct.masks["liver"] + 3 * ct.masks["spleen"].astype(np.uint8))
    if position == "prone":
        image, truth = variants.prone(image, truth)
    liver, organs = organs_of(image)
    reference = sitk.GetArrayFromImage(truth)
    stomach = organs == LABELS["stomach"]
    assert dice(stomach, reference == 1) >= minimum
    # its wall and contents take nothing from the liver's left lobe or the spleen beside it
    assert dice(liver, reference == 2) >= 0.96
    assert dice(organs == LABELS["spleen"], reference == 3) >= 0.94
    assert not (stomach & (reference == 2)).sum() > 0.005 * (reference == 2).sum()
    assert not (liver & stomach).any()  # one organ per voxel: the liver gives back the wall drawn into it
    # and its QC finds nothing wrong with it (gas, no wall, a spill into the liver or spleen), or, without
    # fat planes, says that its border is not seen
    neighbours = [("Liver", liver), ("Spleen", organs == LABELS["spleen"])]
    spacing = image.GetSpacing()[::-1]
    found = stomach_checks("Stomach", sitk.GetArrayFromImage(image), stomach, spacing, neighbours)
    if position == "no-fat-planes":
        assert [flag for flag, _ in found] == [QCFlag.LOW_CONTRAST]
        assert "has no fat or gas plane" in found[0][1] and "the tissue around it" in found[0][1]
    else:
        assert found == []


def test_no_stomach_is_invented_where_there_is_none() -> None:
    """A native child without a stomach: the mediastinum's tissue between the lungs (28 HU, near water's
    level in the native phase) was taken for one (37 ml)."""
    ct = make_ct_phantom(seed=5, fat_planes=True, hepatic_vessels=True, ivc=True, phase="native",
                         body_scale=0.7)
    _, organs = organs_of(ct.to_sitk())
    assert not (organs == LABELS["stomach"]).any()


def _ball(shape, centre, radius_vox: float) -> np.ndarray:  # noqa: ANN001
    zz, yy, xx = np.ogrid[: shape[0], : shape[1], : shape[2]]
    return (zz - centre[0]) ** 2 + (yy - centre[1]) ** 2 + (xx - centre[2]) ** 2 <= radius_vox**2


def test_stomach_qc_names_what_is_wrong() -> None:
    """A contour of gas alone, of contrast without a wall, and one that spilled into the spleen are flagged;
    a stomach of wall and water beside the spleen is not."""
    shape, spacing = (34, 60, 64), (2.0, 2.0, 2.0)
    rng = np.random.default_rng(0)
    image = rng.normal(-90.0, 10.0, shape).astype(np.float32)  # fat
    spleen = _ball(shape, (17, 30, 45), 14)
    image[spleen] += 210.0  # 120 HU
    outer = _ball(shape, (17, 30, 18), 9)
    lumen = _ball(shape, (17, 30, 18), 7)
    image[outer] = rng.normal(90.0, 10.0, int(outer.sum()))  # the wall
    image[lumen] = rng.normal(10.0, 10.0, int(lumen.sum()))  # water
    neighbours = [("Spleen", spleen)]
    assert stomach_checks("Stomach", image, outer, spacing, neighbours) == []

    # the same stomach in a thin patient: tissue of its wall's level all round it, no fat plane
    thin = image.copy()
    around = _ball(shape, (17, 30, 18), 13) & ~outer
    thin[around] = rng.normal(60.0, 10.0, int(around.sum()))
    found = stomach_checks("Stomach", thin, outer, spacing, neighbours)
    assert [flag for flag, _ in found] == [QCFlag.LOW_CONTRAST]
    assert found[0][1].startswith("100 % of Stomach's surface has no fat or gas plane")

    gas = image.copy()
    gas[_ball(shape, (17, 30, 18), 8)] = -1000.0  # (70 % of it)
    found = stomach_checks("Stomach", gas, outer, spacing, neighbours)
    assert [flag for flag, _ in found] == [QCFlag.IMPLAUSIBLE_INTENSITY]
    assert "is gas" in found[0][1]

    bright = image.copy()
    bright[outer] = 300.0  # a bright vessel or bone taken for oral contrast: no wall
    found = stomach_checks("Stomach", bright, outer, spacing, neighbours)
    assert [flag for flag, _ in found] == [QCFlag.IMPLAUSIBLE_INTENSITY]
    assert "wall of soft tissue" in found[0][1]

    # the contour took the spleen's near half (the spleen's segment keeps the rest)
    spilled = outer | (spleen & (np.arange(shape[2]) < 47)[None, None, :])
    rest = spleen & ~spilled
    found = stomach_checks("Stomach", image, spilled, spacing, [("Spleen", rest)])
    assert QCFlag.LEAK in [flag for flag, _ in found]
    assert any("spilled into Spleen" in reason for _, reason in found)


def test_the_stomach_is_drawn_again_on_the_source_pixels() -> None:
    """A contour of the lumen alone, a voxel short of it at one pole (what the median across thick slices
    leaves) becomes the lumen and its 4 mm wall: up to the fat where fat lies beyond it, its measured
    thickness into the liver touching it (the liver keeps what lies deeper), none of the fat."""
    shape, spacing = (30, 70, 70), (2.0, 2.0, 2.0)
    rng = np.random.default_rng(1)
    truth = _ball(shape, (15, 35, 30), 10)  # wall and water, 20 mm across
    lumen = _ball(shape, (15, 35, 30), 8)
    liver = np.zeros(shape, dtype=bool)
    liver[:, :, 40:] = True  # touching the stomach's wall from the right, no fat between
    truth &= ~liver
    clean = np.full(shape, -90.0, dtype=np.float32)
    clean[liver] = 105.0
    clean[truth] = 85.0
    clean[lumen] = 10.0
    image = clean + rng.normal(0.0, 10.0, shape).astype(np.float32)
    labels = np.zeros(shape, dtype=np.uint8)
    labels[liver | (_ball(shape, (15, 35, 30), 13) & ~truth & (np.arange(shape[2]) >= 36)[None, None, :])] = \
        LABELS["liver"]
    labels[lumen & (np.arange(shape[0]) < 22)[:, None, None]] = LABELS["stomach"]
    thickness = refine_stomach(labels, image, spacing)
    assert thickness is not None and 1.5 <= thickness <= 4.5
    stomach = labels == LABELS["stomach"]
    assert dice(stomach, truth) >= 0.9
    assert not (stomach & (clean < -30)).any()  # no fat
    assert np.count_nonzero(stomach & liver) <= 0.02 * np.count_nonzero(truth)  # the liver beyond its wall
    assert (labels[:, :, 43:] == LABELS["liver"]).all()  # (3 voxels beyond where the stomach's wall ends)
