"""model.segment: ONNX inference with tiny models built in the test (geometry, reorientation, resampling,
windowing, blending, shape checks)."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from dicomnode.errors import ImagingError
from dicomnode.imaging import model as M
from dicomnode.imaging.sliding_window import sliding_window, window_starts
from dicomnode.imaging.step import StepOutput, image_of
from tests import onnx_models

pytest.importorskip("onnxruntime")


def _image(
    array: np.ndarray, spacing=(0.8, 0.7, 2.5), origin=(-120.0, 35.5, 410.0), direction=None
) -> sitk.Image:
    img = sitk.GetImageFromArray(array.astype(np.float32))
    img.SetSpacing(spacing)
    img.SetOrigin(origin)
    if direction is not None:
        img.SetDirection(direction)
    return img


def _mask(img: sitk.Image | StepOutput) -> np.ndarray:
    return sitk.GetArrayFromImage(image_of(img))


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("models")


@pytest.fixture(scope="module")
def thresh(models: Path) -> str:
    return str(onnx_models.threshold(models / "threshold.onnx", 100.0))


def _phantom(shape=(16, 24, 28), seed=1) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.uniform(-200, 400, shape).astype(np.float32)


def test_threshold_model_is_voxel_exact_and_keeps_the_source_geometry(thresh: str) -> None:
    array = _phantom()
    # an oblique series: the step must neither resample nor move the voxels
    angle = np.deg2rad(12)
    direction = (np.cos(angle), -np.sin(angle), 0.0, np.sin(angle), np.cos(angle), 0.0, 0.0, 0.0, 1.0)
    img = _image(array, direction=direction)
    result = M.segment(img, model=thresh, labels={1: "Bright"})
    out = result.image
    assert np.array_equal(_mask(out), (array > 100).astype(np.uint8))
    assert result.estimates["provider"] == "CPUExecutionProvider" and result.estimates["windows"] == 1
    assert result.estimates["voxels"] == {"Bright": int((array > 100).sum())}
    assert out.GetOrigin() == img.GetOrigin() and out.GetSpacing() == img.GetSpacing()
    assert out.GetDirection() == img.GetDirection()
    masks = M.segment_masks(img, model=thresh, labels={1: "Bright"})
    assert list(masks) == ["Bright"] and np.array_equal(_mask(masks["Bright"]), _mask(out))


def _shift(array: np.ndarray, axis: int, step: int) -> np.ndarray:
    """out[i] = array[i + step] along ``axis`` (zero where i + step falls outside)."""
    out = np.zeros_like(array)
    src = [slice(None)] * 3
    dst = [slice(None)] * 3
    n = array.shape[axis]
    if step > 0:
        src[axis], dst[axis] = slice(step, n), slice(0, n - step)
    else:
        src[axis], dst[axis] = slice(0, n + step), slice(-step, n)
    out[tuple(dst)] = array[tuple(src)]
    return out


@pytest.mark.parametrize(
    ("offset", "axes", "orientation", "array_axis", "step"),
    [
        ((1, 0, 0), "zyx", "LPS", 0, 1),   # tensor axis 0 is z
        ((0, 0, 1), "zyx", "LPS", 2, 1),   # tensor axis 2 is x
        ((1, 0, 0), "xyz", "LPS", 2, 1),   # tensor axis 0 is x
        ((1, 0, 0), "xyz", "RAS", 2, -1),  # x increases towards the right: a step left in LPS
        ((0, 1, 0), "xyz", "RAS", 1, -1),  # y increases anteriorly
        ((0, 0, 1), "xyz", "RAS", 0, 1),   # z is superior in both
    ],
)
def test_axis_order_and_orientation_move_an_asymmetric_kernel_where_expected(
    models: Path, offset, axes, orientation, array_axis, step
) -> None:
    model = onnx_models.shifted_threshold(models / f"shift{''.join(map(str, offset))}.onnx", offset, 0.5)
    array = np.zeros((9, 10, 11), np.float32)
    array[3:6, 4, 5] = 1.0  # an asymmetric blob: a rod along z and one extra voxel
    array[4, 5, 7] = 1.0
    out = M.segment(_image(array), model=str(model), labels={1: "Blob"}, axes=axes, orientation=orientation)
    expected = _shift(array, array_axis, step) > 0.5
    assert np.array_equal(_mask(out).astype(bool), expected)


def test_a_series_stored_in_another_order_gives_the_same_physical_mask(models: Path) -> None:
    model = onnx_models.shifted_threshold(models / "shift-z.onnx", (1, 0, 1), 0.5)
    array = np.zeros((9, 10, 11), np.float32)
    array[2:5, 3:5, 4] = 1.0
    array[6, 7, 8] = 1.0
    lps = _image(array)
    flipped = sitk.DICOMOrient(lps, "RAI")  # the same patient, stored x- and z-reversed
    assert not np.array_equal(sitk.GetArrayFromImage(flipped), array)
    for orientation, axes in (("LPS", "zyx"), ("RAS", "xyz")):
        a = M.segment(lps, model=str(model), labels={1: "B"}, orientation=orientation, axes=axes)
        b = M.segment(flipped, model=str(model), labels={1: "B"}, orientation=orientation, axes=axes).image
        assert b.GetDirection() == flipped.GetDirection()
        assert np.array_equal(_mask(sitk.DICOMOrient(b, "LPS")), _mask(a))
        assert _mask(a).sum() == 7


def test_resampling_to_the_inference_grid_and_back_is_label_preserving(thresh: str) -> None:
    array = np.full((20, 40, 40), -100.0, np.float32)
    # box edges on even voxels: the 2x coarser grid keeps them (at the corners the trilinear weight is
    # 0.75**3, so 500 HU keeps them above 100 HU; a voxel outside gets at most 0.25 of the box)
    array[4:12, 10:30, 6:22] = 500.0
    img = _image(array, spacing=(1.0, 1.0, 1.0), origin=(0.0, 0.0, 0.0))
    plain = _mask(M.segment(img, model=thresh, labels={1: "Box"}))
    same = _mask(M.segment(img, model=thresh, labels={1: "Box"}, spacing_mm=[1.0, 1.0, 1.0]))
    coarse = _mask(M.segment(img, model=thresh, labels={1: "Box"}, spacing_mm=[2.0, 2.0, 2.0]))
    assert np.array_equal(plain, array > 100)
    assert np.array_equal(same, plain)
    assert np.array_equal(coarse, plain)  # scores resampled linearly, argmax on the source grid
    # a sphere on an anisotropic grid, inferred on 1.5 mm: boundaries within a voxel, volume within 3 %
    z, y, x = np.mgrid[:24, :48, :48]
    sphere = ((z - 12) * 2.5) ** 2 + ((y - 24) * 0.8) ** 2 + ((x - 23.5) * 0.8) ** 2 < 14.0**2
    img = _image(np.where(sphere, 300.0, -100.0), spacing=(0.8, 0.8, 2.5))
    out = _mask(M.segment(img, model=thresh, labels={1: "Sphere"}, spacing_mm=[1.5, 1.5, 1.5]))
    assert set(np.unique(out)) == {0, 1}
    dice = 2 * (out.astype(bool) & sphere).sum() / (out.sum() + sphere.sum())
    assert dice > 0.95 and abs(int(out.sum()) - int(sphere.sum())) < 0.03 * sphere.sum()


def test_intensity_clip_scale_and_normalize_move_the_threshold_exactly(models: Path) -> None:
    half = str(onnx_models.threshold(models / "half.onnx", 0.5))
    values = np.arange(-505.0, 505.0, 10.0, dtype=np.float32)  # no value sits on a threshold
    array = np.broadcast_to(values, (3, 4, values.size)).copy()
    img = _image(array)

    def bright(**params) -> np.ndarray:
        return _mask(M.segment(img, model=half, labels={1: "Bright"}, **params)).astype(bool)

    # [-100, 300] onto [0, 1]: 0.5 is 100 HU
    assert np.array_equal(bright(intensity={"clip": [-100, 300], "scale": [0, 1]}), array > 100)
    assert np.array_equal(bright(intensity={"clip": [-100, 300], "scale": [-1, 1]}), array > 200)
    assert np.array_equal(bright(intensity={"normalize": {"mean": 40, "std": 20}}), array > 50)
    clipped = np.clip(array, -300, 300)
    cut = clipped.mean() + 0.5 * clipped.std()
    assert np.array_equal(bright(intensity={"clip": [-300, 300], "normalize": "image"}), clipped > cut)
    assert np.array_equal(bright(), array > 0.5)  # raw values


def test_sliding_window_starts_follow_monai() -> None:
    assert window_starts(100, 96, 0.25) == [0, 4]
    assert window_starts(200, 96, 0.5) == [0, 48, 96, 104]
    assert window_starts(96, 96, 0.5) == [0]
    assert window_starts(10, 4, 0.0) == [0, 4, 6]


def test_sliding_window_blends_with_gaussian_weights_and_pads_small_volumes(models: Path) -> None:
    rng = np.random.default_rng(3)
    tensor = rng.normal(size=(1, 13, 20, 6)).astype(np.float32)  # axis 2 is smaller than the patch
    patch, overlap = (8, 8, 8), 0.5
    import onnxruntime as ort

    def forward_of(path: Path):
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        return lambda batch: session.run(None, {"X": batch})[0]

    identity = forward_of(onnx_models.linear_classes(models / "identity.onnx", [(0, 0), (1, 0)]))
    out = sliding_window(tensor, identity, patch, overlap)
    assert out.shape == (2, 13, 20, 6)
    np.testing.assert_allclose(out[1], tensor[0], atol=1e-5)  # a weighted mean of equal values
    # a model whose answer depends on the window: the blend is the Gaussian-weighted mean of the windows
    out = sliding_window(tensor, forward_of(onnx_models.window_mean(models / "mean.onnx")), patch, overlap)
    padded = np.pad(tensor[0], [(0, 0), (0, 0), (1, 1)])
    sigma = np.array(patch) / 8.0
    grids = np.meshgrid(*[np.arange(p) - (p - 1) / 2 for p in patch], indexing="ij")
    gauss = np.exp(-0.5 * sum((g / s) ** 2 for g, s in zip(grids, sigma, strict=True)))
    num, den, uniform_num, uniform_den = (np.zeros(padded.shape) for _ in range(4))
    starts = [window_starts(s, p, overlap) for s, p in zip(padded.shape, patch, strict=True)]
    for corner in itertools.product(*starts):
        box = tuple(slice(c, c + p) for c, p in zip(corner, patch, strict=True))
        num[box] += gauss * padded[box].mean()
        den[box] += gauss
        uniform_num[box] += padded[box].mean()
        uniform_den[box] += 1
    expected = (num / den)[:, :, 1:-1]
    np.testing.assert_allclose(out[1], expected, atol=1e-4)
    assert np.abs(expected - (uniform_num / uniform_den)[:, :, 1:-1]).max() > 1e-2  # the weights matter


def test_model_step_through_sliding_windows_matches_the_whole_volume(thresh: str) -> None:
    array = _phantom((20, 30, 26))
    img = _image(array)
    whole = _mask(M.segment(img, model=thresh, labels={1: "B"}))
    result = M.segment(img, model=thresh, labels={1: "B"}, patch=[8, 16, 32], overlap=0.25)
    assert np.array_equal(whole, _mask(result))
    assert result.estimates["windows"] == 3 * 3 * 1  # z 20: 0, 6, 12; y 30: 0, 12, 14; x 26 < 32: padded


def test_largest_component_postprocessing_and_several_labels(models: Path) -> None:
    # three classes: 1 where 100 < X <= 300 (scores ordered so), 2 where X > 300
    model = onnx_models.linear_classes(models / "three.onnx", [(0, 0), (1, -100), (2, -400)])
    array = np.full((10, 20, 20), -50.0, np.float32)
    array[2:8, 2:10, 2:10] = 200.0  # large class-1 blob
    array[2:4, 15:17, 15:17] = 200.0  # small class-1 blob
    array[5:7, 15:18, 15:18] = 500.0  # class 2
    img = _image(array)
    params = {"model": str(model), "labels": {1: "Liver", 2: "Spleen"}}
    out = _mask(M.segment(img, **params))
    assert set(np.unique(out)) == {0, 1, 2} and (out == 1).sum() == 6 * 8 * 8 + 8
    out = _mask(M.segment(img, **params, postprocess={"largest_component": ["Liver"]}))
    assert (out == 1).sum() == 6 * 8 * 8 and (out == 2).sum() == 18
    only = _mask(M.segment(img, model=str(model), labels={2: "Spleen"}))  # unnamed channels become 0
    assert set(np.unique(only)) == {0, 2}


def test_models_that_do_not_fit_the_parameters_are_refused(models: Path, thresh: str) -> None:
    fixed = onnx_models.threshold(models / "fixed.onnx", 0.0, input_shape=[1, 1, 16, 16, 16],
                                  output_shape=[1, 2, 16, 16, 16])
    with pytest.raises(ImagingError, match=r"fixed windows \[16, 16, 16\]; set 'patch'"):
        M.check_model(M.model_params(model=fixed, labels={1: "A"}))
    with pytest.raises(ImagingError, match=r"patch \[16, 16, 8\] does not fit"):
        M.check_model(M.model_params(model=fixed, labels={1: "A"}, patch=[16, 16, 8]))
    with pytest.raises(ImagingError, match=r"names channel\(s\) \[2\] but the model 'fixed.onnx' returns 2"):
        M.check_model(M.model_params(model=fixed, labels={1: "A", 2: "B"}, patch=[16, 16, 16]))
    # a dynamic channel count is found by running one window of zeros
    with pytest.raises(ImagingError, match=r"channel\(s\) \[3\] but the model 'threshold.onnx' returns 2"):
        M.check_model(M.model_params(model=thresh, labels={3: "A"}, patch=[8, 8, 8]))
    two = onnx_models.threshold(models / "two-in.onnx", 0.0, input_shape=[1, 2, "a", "b", "c"])
    with pytest.raises(ImagingError, match="takes 2 input channels"):
        M.check_model(M.model_params(model=two, labels={1: "A"}))
    flat = onnx_models.threshold(models / "flat.onnx", 0.0, input_shape=[1, 1, "a", "b"],
                                 output_shape=[1, 2, "a", "b"])
    with pytest.raises(ImagingError, match="rank-4 input"):
        M.check_model(M.model_params(model=flat, labels={1: "A"}))
    one = onnx_models.linear_classes(models / "one.onnx", [(1, 0)])
    with pytest.raises(ImagingError, match="returns 1 channel"):
        M.segment(_image(np.zeros((4, 4, 4))), model=str(one), labels={0: "A"})
    with pytest.raises(ImagingError, match="does not exist"):
        M.check_model(M.model_params(model=models / "missing.onnx", labels={1: "A"}))
    fits = M.check_model(M.model_params(model=fixed, labels={1: "A"}, patch=[16, 16, 16]))
    assert fits.output_shape[1] == 2


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"axes": "yxz"}, "'axes' must be one of zyx, xyz, got 'yxz'"),
        ({"orientation": "RAI"}, "'orientation' must be one of LPS, RAS"),
        ({"spacing_mm": [1, 1]}, "'spacing_mm' must be three positive numbers"),
        ({"patch": [96, 96, 0]}, "'patch' must be three positive integers"),
        ({"overlap": 1.0}, r"'overlap' must be in \[0, 1\)"),
        ({"intensity": {"scale": [0, 1]}}, "give 'clip' too"),
        ({"intensity": {"clip": [1000, -1000]}}, "low < high"),
        ({"intensity": {"window": 1}}, r"Unknown key\(s\) \['window'\]"),
        ({"labels": {}}, "'labels' must map output channels"),
        ({"postprocess": {"largest_component": ["Kidney"]}}, r"names \['Kidney'\], which 'labels' does not"),
    ],
)
def test_bad_parameters_are_refused_with_the_value(params: dict, message: str) -> None:
    with pytest.raises(ImagingError, match=message):
        M.model_params(**{"model": "m.onnx", "labels": {1: "Liver"}, **params})
