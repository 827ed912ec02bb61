"""The solid organs' border drawn again on the source pixels (``borders.solid_on_source``).

A phantom on a fine grid (1.4 mm pixels, 2 mm slices) whose organ masks are taken to the 2 mm working grid
and back — the contour a competition on that grid gives, with its 2 mm steps — must get its contour back
from the pixels: Dice to the phantom's truth above what the working grid allows, no organ taking another's
voxels, and a border without contrast in the image (a native liver against muscle of its level) left as it
was.
"""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
from scipy import ndimage

from dicomnode.imaging.grid import to_source, to_working_grid
from dicomnode.imaging.metrics import dice
from dicomnode.imaging.organs.borders import SOLID_ORGANS, redraw_border, solid_on_source
from tests.phantoms import make_ct_phantom

NAMES = {"liver": 1, "spleen": 2, "kidney-right": 3, "kidney-left": 4}


def staircase_labels(ct) -> tuple[np.ndarray, sitk.Image]:  # noqa: ANN001
    """The phantom's organs on the 2 mm working grid and back on its own grid (the pipeline's resampling)."""
    image = ct.to_sitk()
    truth = np.zeros(ct.image.shape, np.uint8)
    for name, value in NAMES.items():
        truth[ct.masks[name]] = value
    truth_img = sitk.GetImageFromArray(truth)
    truth_img.CopyInformation(image)
    work = to_working_grid(image, 2.0)
    on_work = sitk.Resample(truth_img, work, sitk.Transform(), sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)
    # the competition's contour follows the working grid's voxels (nearest neighbour: its steps); the
    # liver's lies a working voxel short of its border in-plane, the spleen's one beyond it (into free voxels)
    arr = sitk.GetArrayFromImage(on_work)
    liver = arr == NAMES["liver"]
    cross = np.array([[[0, 1, 0], [1, 1, 1], [0, 1, 0]]])
    arr[liver & ~ndimage.binary_erosion(liver, cross, border_value=1)] = 0
    spleen = arr == NAMES["spleen"]
    arr[ndimage.binary_dilation(spleen) & (arr == 0)] = NAMES["spleen"]
    shifted = sitk.GetImageFromArray(arr)
    shifted.CopyInformation(on_work)
    return sitk.GetArrayFromImage(to_source(shifted, image)), image


@pytest.fixture(scope="module")
def fine_phantom():  # noqa: ANN201
    # 1.4 mm pixels, 2 mm slices: the 2 mm working grid's steps show in-plane
    ct = make_ct_phantom(shape=(40, 256, 256), spacing=(2.0, 1.4, 1.4), seed=3, fat_planes=True)
    return (ct, *staircase_labels(ct))


def test_border_drawn_again_on_the_source_pixels(fine_phantom) -> None:  # noqa: ANN001
    ct, stairs, image = fine_phantom
    labels = sitk.GetImageFromArray(stairs)
    labels.CopyInformation(image)
    result = solid_on_source(labels, image)
    out = sitk.GetArrayFromImage(result.image)
    for name, value in NAMES.items():
        before = dice(stairs == value, ct.masks[name])
        after = dice(out == value, ct.masks[name])
        # the pixels put the border back: within about half a pixel of the truth
        assert after >= (0.96 if name == "spleen" else 0.975), (name, before, after)
        assert after >= before + (0.05 if name == "spleen" else 0.005), (name, before, after)
        assert f"{name}.moved" in result.estimates
    # nothing but the solid organs' labels changed, and no organ took a voxel of another
    changed = out != stairs
    assert np.isin(out[changed], [0, *SOLID_ORGANS]).all()
    assert ((stairs[changed] == 0) | (out[changed] == 0)).all()


def test_no_border_moved_where_the_image_shows_none(fine_phantom) -> None:  # noqa: ANN001
    """The liver at the level of everything around it: there is no border in the image, so the working
    grid's contour stays (a native liver against muscle)."""
    ct, stairs, _ = fine_phantom
    flat = np.where(ct.masks["body"], np.float32(60.0), np.float32(-1000.0))
    flat += np.random.default_rng(0).normal(0.0, 12.0, flat.shape).astype(np.float32)
    out = stairs.copy()
    share, gained, lost = redraw_border(out, flat, NAMES["liver"], ct.spacing)
    assert (share, gained, lost) == (0.0, 0, 0)
    assert (out == stairs).all()
