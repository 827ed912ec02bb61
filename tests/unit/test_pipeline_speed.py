"""The shortcuts that keep liver-ct on a 512x512x300 series within its time and memory give the values the
straightforward way gives: segment masks as planes of one stack (the SEG takes it without a copy, also
after a segment is withheld), in-plane enhancement slice by slice, label maps mapped back on boxes, QC
overlaps on box intersections and signed distances with the inside on the mask's box."""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from dicomnode.imaging import enhance, grid, preprocess
from dicomnode.imaging.assess import _overlap, edge_fraction
from dicomnode.outputs.seg import mask_stack
from dicomnode.pipelines.registry import get_pipeline
from dicomnode.pipelines.runner import build_segments, compact_segments


def _image(array: np.ndarray, spacing=(0.7, 0.7, 1.0), origin=(-10.0, 5.0, 30.0)) -> sitk.Image:
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(spacing)
    image.SetOrigin(origin)
    return image


def _liver_ct_context(shape):
    rng = np.random.default_rng(3)
    liver = np.zeros(shape, np.uint8)
    liver[1:5, 4:14, 3:12] = 1
    organs = rng.integers(0, 8, size=shape).astype(np.uint8)
    organs[organs == 4] = 0  # no left kidney: an optional segment left out
    lesions = np.zeros(shape, np.uint16)
    lesions[2, 5:7, 5:7], lesions[3, 9:11, 4:6] = 1, 3  # values 1 and 3: "Lesion 1" and "Lesion 2"
    context = {"liver": _image(liver), "organs": _image(organs), "lesions": _image(lesions)}
    return context, liver, organs, lesions


def test_segments_are_planes_of_one_stack_that_the_seg_takes_without_a_copy():
    shape = (6, 16, 15)
    context, liver, organs, lesions = _liver_ct_context(shape)
    segments = build_segments(get_pipeline("liver-ct"), context, shape)
    expected = {"Liver": liver > 0, "Spleen": organs == 2, "Right kidney": organs == 3,
                "Stomach": organs == 5, "Aorta": organs == 6, "Inferior vena cava": organs == 7,
                "Lesion 1": lesions == 1,
                "Lesion 2": lesions == 3}
    assert [s.label for s in segments] == list(expected)
    for segment in segments:
        assert segment.mask.dtype == bool and np.array_equal(segment.mask, expected[segment.label])
    stack = mask_stack(segments, shape[0])
    assert stack.shape == (*shape, len(segments))
    assert np.shares_memory(stack, segments[0].mask)  # no copy
    assert np.array_equal(stack, np.stack([expected[s.label] for s in segments], axis=-1))

    kept = compact_segments([s for s in segments if s.label not in ("Spleen", "Aorta")])  # withheld
    assert [s.label for s in kept] == ["Liver", "Right kidney", "Stomach", "Inferior vena cava", "Lesion 1",
                                       "Lesion 2"]
    for segment in kept:
        assert np.array_equal(segment.mask, expected[segment.label])
    stack = mask_stack(kept, shape[0])
    assert np.shares_memory(stack, kept[0].mask)
    assert np.array_equal(stack, np.stack([expected[s.label] for s in kept], axis=-1))

    separate = [s.__class__(s.label, s.structure, s.mask.copy()) for s in kept]  # masks of their own
    assert compact_segments(separate) == separate
    assert not np.shares_memory(mask_stack(separate, shape[0]), separate[0].mask)
    assert np.array_equal(mask_stack(separate, shape[0]), stack)


def test_in_plane_enhancement_equals_the_whole_box_run():
    rng = np.random.default_rng(5)
    values = (rng.normal(60.0, 15.0, size=(14, 48, 44)) + np.linspace(0, 80, 44)).astype(np.float32)
    inside = np.zeros(values.shape, np.uint8)
    inside[3:11, 10:30, 8:20] = 1
    inside[6:9, 30:40, 15:35] = 1  # a cross-section that changes from slice to slice
    image, mask = _image(values), _image(inside)

    def bilateral(crop: sitk.Image) -> sitk.Image:
        return preprocess.bilateral(crop, domain_sigma_mm=1.5, range_sigma=30.0, separable=True)

    whole = enhance.apply_in_mask(image, mask, bilateral, feather_mm=3.0, support_mm=4.5)
    sliced = enhance.apply_in_mask(image, mask, bilateral, feather_mm=3.0, support_mm=4.5, in_plane=True)
    assert np.array_equal(sitk.GetArrayViewFromImage(whole), sitk.GetArrayViewFromImage(sliced))
    assert not np.array_equal(sitk.GetArrayViewFromImage(whole), values)  # it did enhance


def test_label_map_back_on_the_source_grid_equals_resampling_each_label_on_the_whole_grid():
    reference = _image(np.zeros((20, 40, 36), np.float32), spacing=(0.8, 0.8, 1.0))
    working = grid.to_working_grid(reference, 2.0)
    labels = np.zeros(working.GetSize()[::-1], np.uint8)
    labels[2:7, 3:9, 2:8] = 1
    labels[3:8, 8:14, 7:13] = 2  # touches label 1
    labels[0:3, 0:4, 10:14] = 5  # at the grid's corner
    label_map = grid.image_like(labels, working)
    expected = np.zeros(reference.GetSize()[::-1], np.uint8)
    for value in (1, 2, 5):
        indicator = grid.image_like((labels == value).astype(np.float32), working)
        resampled = sitk.Resample(indicator, reference, sitk.Transform(), sitk.sitkLinear, 0.0,
                                  sitk.sitkFloat32)
        expected[sitk.GetArrayViewFromImage(resampled) >= 0.5] = value
    assert np.array_equal(sitk.GetArrayViewFromImage(grid.to_source(label_map, reference)), expected)
    single = grid.to_source(grid.image_like(labels == 2, working), reference)
    assert np.array_equal(sitk.GetArrayViewFromImage(single), (expected == 2).astype(np.uint8))


def test_overlaps_and_edges_on_boxes_equal_the_whole_array_counts():
    rng = np.random.default_rng(7)
    shape = (9, 20, 18)
    masks = [ndimage.binary_dilation(rng.random(shape) > 0.995, iterations=2) for _ in range(4)]
    masks.append(np.zeros(shape, bool))
    masks[0][0, 5:8, 0:4] = True  # on the image's edges
    boxes = [None if not m.any() else tuple(
        slice(int(i.min()), int(i.max()) + 1) for i in np.nonzero(m)) for m in masks]
    for a, box_a in zip(masks, boxes, strict=True):
        for b, box_b in zip(masks, boxes, strict=True):
            assert _overlap(a, b, box_a, box_b) == int((a & b).sum())
    edge = np.zeros(shape, bool)
    edge[0], edge[-1], edge[:, 0], edge[:, -1], edge[:, :, 0], edge[:, :, -1] = (True,) * 6
    for mask in masks[:4]:
        surface = mask & ~ndimage.binary_erosion(mask, border_value=0)
        assert edge_fraction(mask, None) == float((surface & edge).sum()) / int(surface.sum())


def test_signed_distance_is_the_distance_to_the_nearest_voxel_on_the_other_side():
    spacing = (1.0, 0.7, 0.7)
    mask = np.zeros((12, 30, 26), bool)
    mask[2:9, 5:20, 0:14] = True  # reaches the array's edge
    mask[4:7, 18:27, 10:22] = True
    distance = enhance.signed_distance_mm(mask, spacing)
    outside = ndimage.distance_transform_edt(~mask, sampling=spacing)
    inside = ndimage.distance_transform_edt(mask, sampling=spacing)
    np.testing.assert_allclose(distance, np.where(mask, -inside, outside), atol=1e-4)
