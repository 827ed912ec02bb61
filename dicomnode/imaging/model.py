"""Trained segmentation models as a pipeline step: ONNX Runtime inference (``model.segment``).

The model takes ``(1, C, *spatial)`` float32 (C = 1: the series) and returns ``(1, K, *spatial)``
logits or probabilities of K mutually exclusive classes (channel 0 usually background). What the model
was trained on is written into the parameters (:class:`ModelParams`):

1. **orientation** (LPS or RAS, DICOM convention: the letters name where each array axis *increases*
   towards): the image is reoriented with SimpleITK ``DICOMOrient`` — a permutation/flip of the voxels,
   exact, whatever the storage order of the series.
2. **spacing_mm** (x, y, z): the reoriented image is resampled (linear, field of view kept: the first and
   last voxel corners coincide) onto the inference grid; null keeps the image's own grid.
3. **intensity**: ``clip: [lo, hi]``, then either ``normalize: {mean, std}`` (``(v - mean) / std``;
   ``normalize: image`` uses the volume's own mean and std) or ``scale: [a, b]`` (the clip range mapped
   linearly onto [a, b], MONAI's ``ScaleIntensityRange``); omitted: raw values (HU on CT).
4. **axes**: zyx keeps SimpleITK's array order (nnU-Net); xyz transposes it (MONAI, NIfTI).
5. **patch/overlap**: sliding windows blended with Gaussian weights (:mod:`dicomnode.imaging.sliding_window`);
   null runs the whole volume in one pass.
6. Back to the source grid, **label-preserving**: without a spacing change the class map is the argmax on
   the inference grid, reoriented back voxel for voxel (exact). With one, each channel's score is
   resampled linearly onto the source grid and the argmax is taken there (as nnU-Net does with its
   probabilities): boundaries are as smooth as the scores allow, not staircases of the coarser grid, and
   memory stays at two source-sized arrays whatever K is.
7. **labels** ``{channel: structure}`` name the channels that are kept; **postprocess**
   ``{largest_component: [structure, ...]}`` keeps the largest 26-connected component of those.

The step returns a label map on the source grid (value = channel); :func:`segment_masks` returns one
mask per label. :func:`check_model` compares a model's declared shapes with the parameters (and runs one
window of zeros through it) so that a model that does not fit is refused when its pipeline is checked.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any, Literal

import numpy as np
import SimpleITK as sitk

from dicomnode.errors import ImagingError
from dicomnode.imaging.grid import image_like
from dicomnode.imaging.segment import largest_components
from dicomnode.imaging.sliding_window import sliding_window
from dicomnode.imaging.step import StepOutput, step

log = logging.getLogger(__name__)

AXES = ("zyx", "xyz")
ORIENTATIONS = ("LPS", "RAS")
DEVICES = ("auto", "cpu", "cuda")
Dim = int | None  # None: a dynamic (named) dimension of the model


@dataclass(frozen=True)
class Intensity:
    clip: tuple[float, float] | None = None
    normalize: tuple[float, float] | Literal["image"] | None = None  # (mean, std) or the image's own
    scale: tuple[float, float] | None = None  # the clip range mapped onto [a, b]

    def apply(self, array: np.ndarray) -> np.ndarray:
        out = array.astype(np.float32, copy=True)
        if self.clip is not None:
            np.clip(out, self.clip[0], self.clip[1], out=out)
        if self.normalize == "image":
            mean, std = float(out.mean()), float(out.std())
            out -= mean
            out /= max(std, 1e-8)
        elif self.normalize is not None:
            out -= self.normalize[0]
            out /= self.normalize[1]
        elif self.scale is not None and self.clip is not None:
            lo, hi = self.clip
            out -= lo
            out *= (self.scale[1] - self.scale[0]) / (hi - lo)
            out += self.scale[0]
        return out


@dataclass(frozen=True)
class ModelParams:
    model: Path
    labels: Mapping[int, str]
    axes: Literal["zyx", "xyz"] = "zyx"
    orientation: Literal["LPS", "RAS"] = "LPS"
    spacing_mm: tuple[float, float, float] | None = None
    intensity: Intensity = Intensity()
    patch: tuple[int, int, int] | None = None
    overlap: float = 0.25
    largest_component: tuple[str, ...] = ()
    threads: int | None = None
    device: Literal["auto", "cpu", "cuda"] = "auto"


def _pair(name: str, value: Any) -> tuple[float, float]:  # noqa: ANN401 - YAML value
    if not isinstance(value, list | tuple) or len(value) != 2:
        raise ImagingError(f"Parameter '{name}' must be a list of two numbers, got {value!r}.")
    try:
        pair = (float(value[0]), float(value[1]))
    except (TypeError, ValueError) as exc:
        raise ImagingError(f"Parameter '{name}' must be a list of two numbers, got {value!r}.") from exc
    if not pair[0] < pair[1]:
        raise ImagingError(f"Parameter '{name}' must be [low, high] with low < high, got {value!r}.")
    return pair


def _intensity(value: Any) -> Intensity:  # noqa: ANN401
    if value is None:
        return Intensity()
    if not isinstance(value, Mapping):
        raise ImagingError(
            f"Parameter 'intensity' must be a mapping (clip, normalize, scale), got {value!r}."
        )
    unknown = sorted(set(value) - {"clip", "normalize", "scale"})
    if unknown:
        raise ImagingError(f"Unknown key(s) {unknown!r} in 'intensity'; it accepts clip, normalize, scale.")
    clip = _pair("intensity.clip", value["clip"]) if value.get("clip") is not None else None
    normalize: tuple[float, float] | Literal["image"] | None = None
    raw = value.get("normalize")
    if raw == "image":
        normalize = "image"
    elif raw is not None:
        if not isinstance(raw, Mapping) or set(raw) != {"mean", "std"}:
            raise ImagingError(f"'intensity.normalize' must be {{mean: M, std: S}} or 'image', got {raw!r}.")
        mean, std = float(raw["mean"]), float(raw["std"])
        if not std > 0:
            raise ImagingError(f"'intensity.normalize.std' must be positive, got {raw['std']!r}.")
        normalize = (mean, std)
    scale = _pair("intensity.scale", value["scale"]) if value.get("scale") is not None else None
    if scale is not None and normalize is not None:
        raise ImagingError("'intensity' takes either 'normalize' or 'scale', not both.")
    if scale is not None and clip is None:
        raise ImagingError("'intensity.scale' maps the 'clip' range onto [a, b]: give 'clip' too.")
    return Intensity(clip, normalize, scale)


def _labels(value: Any) -> Mapping[int, str]:  # noqa: ANN401
    if not isinstance(value, Mapping) or not value:
        raise ImagingError(f"Parameter 'labels' must map output channels to structures, got {value!r}.")
    labels: dict[int, str] = {}
    for key, name in value.items():
        try:
            channel = int(key)
        except (TypeError, ValueError) as exc:
            raise ImagingError(f"'labels' key {key!r} is not a channel number.") from exc
        if channel < 0 or not isinstance(name, str) or not name.strip():
            raise ImagingError(f"'labels' entry {key!r}: {name!r} needs a channel >= 0 and a structure name.")
        labels[channel] = name.strip()
    if len(set(labels.values())) != len(labels):
        raise ImagingError(f"'labels' names a structure twice: {value!r}.")
    return MappingProxyType(labels)


def model_params(
    *,
    model: str | Path,
    labels: Mapping[Any, str],
    axes: str = "zyx",
    orientation: str = "LPS",
    spacing_mm: Sequence[float] | None = None,
    intensity: Mapping[str, Any] | None = None,
    patch: Sequence[int] | None = None,
    overlap: float = 0.25,
    postprocess: Mapping[str, Any] | None = None,
    threads: int | None = None,
    device: str = "auto",
) -> ModelParams:
    """The step's parameters validated (ImagingError quoting the bad value)."""
    if axes not in AXES:
        raise ImagingError(f"Parameter 'axes' must be one of {', '.join(AXES)}, got {axes!r}.")
    if orientation not in ORIENTATIONS:
        raise ImagingError(
            f"Parameter 'orientation' must be one of {', '.join(ORIENTATIONS)}, got {orientation!r}."
        )
    if device not in DEVICES:
        raise ImagingError(f"Parameter 'device' must be one of {', '.join(DEVICES)}, got {device!r}.")
    spacing = None
    if spacing_mm is not None:
        if not isinstance(spacing_mm, list | tuple) or len(spacing_mm) != 3 or not all(
            isinstance(s, int | float) and s > 0 for s in spacing_mm
        ):
            raise ImagingError(
                f"Parameter 'spacing_mm' must be three positive numbers (x, y, z), got {spacing_mm!r}."
            )
        spacing = tuple(float(s) for s in spacing_mm)
    window = None
    if patch is not None:
        if not isinstance(patch, list | tuple) or len(patch) != 3 or not all(
            isinstance(p, int) and p > 0 for p in patch
        ):
            raise ImagingError(f"Parameter 'patch' must be three positive integers, got {patch!r}.")
        window = tuple(int(p) for p in patch)
    if not isinstance(overlap, int | float) or not 0 <= overlap < 1:
        raise ImagingError(f"Parameter 'overlap' must be in [0, 1), got {overlap!r}.")
    if threads is not None and (not isinstance(threads, int) or threads < 1):
        raise ImagingError(f"Parameter 'threads' must be a positive integer, got {threads!r}.")
    names = _labels(labels)
    keep: tuple[str, ...] = ()
    if postprocess:
        if not isinstance(postprocess, Mapping) or set(postprocess) - {"largest_component"}:
            raise ImagingError(
                f"Parameter 'postprocess' accepts only 'largest_component', got {postprocess!r}."
            )
        keep = tuple(str(n) for n in postprocess.get("largest_component") or ())
        unknown = [n for n in keep if n not in names.values()]
        if unknown:
            raise ImagingError(
                f"'postprocess.largest_component' names {unknown!r}, which 'labels' does not "
                f"({', '.join(names.values())})."
            )
    return ModelParams(
        Path(model), names, axes, orientation, spacing, _intensity(intensity),  # type: ignore[arg-type]
        window, float(overlap), keep, threads, device,  # type: ignore[arg-type]
    )


# --- the ONNX model -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ModelSignature:
    input_name: str
    input_shape: tuple[Dim, ...]
    output_name: str
    output_shape: tuple[Dim, ...]
    providers: tuple[str, ...]


def _dims(shape: Sequence[Any]) -> tuple[Dim, ...]:
    return tuple(d if isinstance(d, int) and d > 0 else None for d in shape)


def open_session(path: Path, threads: int | None = None, device: str = "auto") -> Any:  # noqa: ANN401
    """An ONNX Runtime session on ``path``: the CUDA provider when installed (and usable), else the CPU;
    intra-op threads ``threads`` (default: SimpleITK's global thread count, which the workers cap at
    ``processing.itk_threads``)."""
    try:
        import onnxruntime as ort
    except ImportError as exc:
        raise ImagingError(
            "model.segment needs the 'onnxruntime' package (pip install onnxruntime)."
        ) from exc
    if not path.is_file():
        raise ImagingError(f"Model file '{path}' does not exist.")
    options = ort.SessionOptions()
    options.intra_op_num_threads = int(threads or sitk.ProcessObject.GetGlobalDefaultNumberOfThreads() or 1)
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    available = ort.get_available_providers()
    providers = ["CPUExecutionProvider"]
    if device != "cpu" and "CUDAExecutionProvider" in available:
        providers.insert(0, "CUDAExecutionProvider")
    elif device == "cuda":
        raise ImagingError(f"device 'cuda' was asked for but ONNX Runtime offers only {available!r} "
                           "(install onnxruntime-gpu).")
    try:
        session = ort.InferenceSession(str(path), sess_options=options, providers=providers)
    except Exception as exc:  # onnxruntime raises its own exception types for unreadable models
        raise ImagingError(f"ONNX Runtime cannot load the model '{path}': {exc}") from exc
    log.debug("model %s on %s with %d threads", path.name, session.get_providers(),
              options.intra_op_num_threads)
    return session


def signature(session: Any) -> ModelSignature:  # noqa: ANN401 - onnxruntime.InferenceSession
    inputs, outputs = session.get_inputs(), session.get_outputs()
    if len(inputs) != 1:
        raise ImagingError(f"The model has {len(inputs)} inputs ({[i.name for i in inputs]}); "
                           "model.segment feeds exactly one (1, 1, *spatial) float32 tensor.")
    if inputs[0].type != "tensor(float)":
        raise ImagingError(
            f"The model's input '{inputs[0].name}' is {inputs[0].type}, not tensor(float) (float32)."
        )
    return ModelSignature(
        inputs[0].name, _dims(inputs[0].shape), outputs[0].name, _dims(outputs[0].shape),
        tuple(session.get_providers()),
    )


def _check_shapes(sig: ModelSignature, params: ModelParams, name: str) -> None:
    shape_in, shape_out = sig.input_shape, sig.output_shape
    if len(shape_in) != 5:
        raise ImagingError(f"The model '{name}' takes a rank-{len(shape_in)} input {list(shape_in)}; "
                           "model.segment needs (1, C, *spatial) with three spatial axes.")
    if shape_in[0] not in (None, 1):
        raise ImagingError(f"The model '{name}' has a fixed batch of {shape_in[0]}; model.segment feeds 1.")
    if shape_in[1] not in (None, 1):
        raise ImagingError(f"The model '{name}' takes {shape_in[1]} input channels; model.segment feeds one "
                           "image (1 channel).")
    if len(shape_out) != 5:
        raise ImagingError(f"The model '{name}' returns a rank-{len(shape_out)} output {list(shape_out)}; "
                           "model.segment needs (1, K, *spatial).")
    fixed = shape_in[2:]
    if params.patch is None and any(d is not None for d in fixed):
        raise ImagingError(f"The model '{name}' takes fixed windows {list(fixed)}; set 'patch' to them.")
    if params.patch is not None:
        for axis, (dim, size) in enumerate(zip(fixed, params.patch, strict=True)):
            if dim is not None and dim != size:
                raise ImagingError(
                    f"The patch {list(params.patch)} does not fit the model '{name}', whose input is fixed "
                    f"at {list(fixed)} (tensor axis {axis + 2}, axes {params.axes})."
                )
    _check_channels(shape_out[1], params, name)


def _check_channels(channels: Dim, params: ModelParams, name: str) -> None:
    if channels is None:
        return
    if channels < 2:
        raise ImagingError(
            f"The model '{name}' returns {channels} channel; model.segment needs K >= 2 mutually "
            "exclusive classes (background and structures) to take their argmax."
        )
    beyond = sorted(c for c in params.labels if c >= channels)
    if beyond:
        raise ImagingError(f"'labels' names channel(s) {beyond} but the model '{name}' returns {channels} "
                           f"channels (0..{channels - 1}).")


def check_model(params: ModelParams, *, dry_run: bool = True) -> ModelSignature:
    """Refuse a model whose shapes or channel count do not fit ``params`` (ImagingError); with ``dry_run``
    and a patch, run one window of zeros to check the output it really returns."""
    session = open_session(params.model, params.threads or 1, "cpu")
    sig = signature(session)
    _check_shapes(sig, params, params.model.name)
    if dry_run and params.patch is not None:
        out = _forward(session, sig)(np.zeros((1, 1, *params.patch), dtype=np.float32))
        if out.ndim != 5 or out.shape[0] != 1 or tuple(out.shape[2:]) != params.patch:
            raise ImagingError(f"The model '{params.model.name}' returned {list(out.shape)} for a window "
                               f"{[1, 1, *params.patch]}; model.segment needs (1, K, {params.patch}).")
        _check_channels(int(out.shape[1]), params, params.model.name)
    return sig


def _forward(session: Any, sig: ModelSignature) -> Callable[[np.ndarray], np.ndarray]:  # noqa: ANN401
    def forward(batch: np.ndarray) -> np.ndarray:
        try:
            return np.asarray(session.run([sig.output_name], {sig.input_name: batch})[0], dtype=np.float32)
        except Exception as exc:  # onnxruntime's own exception types (shape mismatch, ...)
            raise ImagingError(f"The model failed on an input of shape {list(batch.shape)}: {exc}") from exc

    return forward


# --- the step -------------------------------------------------------------------------------------------


def _orientation(image: sitk.Image) -> str:
    return sitk.DICOMOrientImageFilter.GetOrientationFromDirectionCosines(image.GetDirection())


def to_spacing(image: sitk.Image, spacing: Sequence[float]) -> sitk.Image:
    """``image`` resampled (linear) to ``spacing`` (x, y, z), keeping its field of view."""
    old_spacing = np.asarray(image.GetSpacing())
    new_spacing = np.asarray(spacing, dtype=float)
    size = [
        max(1, int(round(n * s / t)))
        for n, s, t in zip(image.GetSize(), old_spacing, new_spacing, strict=True)
    ]
    direction = np.asarray(image.GetDirection()).reshape(3, 3)
    origin = np.asarray(image.GetOrigin()) + direction @ ((new_spacing - old_spacing) / 2.0)
    return sitk.Resample(
        image, size, sitk.Transform(), sitk.sitkLinear, origin.tolist(), new_spacing.tolist(),
        image.GetDirection(), 0.0, sitk.sitkFloat32, True,
    )


@dataclass(frozen=True)
class Inference:
    scores: np.ndarray  # (K, z, y, x) on the inference grid
    grid: sitk.Image  # the inference grid (reoriented, resampled)
    provider: str  # the ONNX Runtime execution provider that ran it
    windows: int  # forward passes


def infer(params: ModelParams, image: sitk.Image) -> Inference:
    """The model's scores on the inference grid, with that grid and how they were computed."""
    session = open_session(params.model, params.threads, params.device)
    sig = signature(session)
    _check_shapes(sig, params, params.model.name)
    grid = image if image.GetPixelID() == sitk.sitkFloat32 else sitk.Cast(image, sitk.sitkFloat32)
    if _orientation(grid) != params.orientation:
        grid = sitk.DICOMOrient(grid, params.orientation)
    if params.spacing_mm is not None:
        grid = to_spacing(grid, params.spacing_mm)
    array = params.intensity.apply(sitk.GetArrayViewFromImage(grid))
    tensor = array if params.axes == "zyx" else array.transpose(2, 1, 0)
    tensor = np.ascontiguousarray(tensor)[None]
    del array
    grid = _geometry(grid)  # its voxels are in the tensor now
    run = _forward(session, sig)
    passes = [0]

    def forward(batch: np.ndarray) -> np.ndarray:
        passes[0] += 1
        return run(batch)

    if params.patch is not None:
        scores = sliding_window(tensor, forward, params.patch, params.overlap)
    else:
        scores = forward(tensor[None])
        if scores.ndim != 5 or tuple(scores.shape[2:]) != tensor.shape[1:]:
            raise ImagingError(f"The model returned {list(scores.shape)} for an input {[1, *tensor.shape]}.")
        scores = scores[0]
    _check_channels(scores.shape[0], params, params.model.name)
    if not all(np.isfinite(channel).all() for channel in scores):
        raise ImagingError(f"The model '{params.model.name}' returned non-finite scores (NaN or infinity).")
    if params.axes == "xyz":
        scores = np.ascontiguousarray(scores.transpose(0, 3, 2, 1))
    return Inference(scores, grid, session.get_providers()[0], passes[0])


def _geometry(image: sitk.Image) -> sitk.Image:
    """A uint8 image with the grid of ``image`` (a quarter of a float32 image's memory)."""
    reference = sitk.Image(image.GetSize(), sitk.sitkUInt8)
    reference.CopyInformation(image)
    return reference


def _argmax(scores: np.ndarray, slab: int = 16) -> np.ndarray:
    """``argmax`` over the channels as uint16, slab by slab (numpy's int64 result would be 4x larger)."""
    out = np.empty(scores.shape[1:], dtype=np.uint16)
    for z in range(0, scores.shape[1], slab):
        out[z:z + slab] = np.argmax(scores[:, z:z + slab], axis=0)
    return out


def _classes(params: ModelParams, scores: np.ndarray, grid: sitk.Image, image: sitk.Image) -> np.ndarray:
    """The argmax class of every source voxel (z, y, x)."""
    if params.spacing_mm is None:  # same voxels, maybe permuted: argmax, then reorient back exactly
        classes = image_like(_argmax(scores), grid)
        if _orientation(image) != _orientation(classes):
            classes = sitk.DICOMOrient(classes, _orientation(image))
        return sitk.GetArrayFromImage(classes)
    best = np.full(image.GetSize()[::-1], -np.inf, dtype=np.float32)
    classes = np.zeros(best.shape, dtype=np.uint16)
    for k in range(scores.shape[0]):
        channel = sitk.Resample(image_like(scores[k], grid), image, sitk.Transform(), sitk.sitkLinear, 0.0,
                                sitk.sitkFloat32, True)
        values = sitk.GetArrayViewFromImage(channel)
        better = values > best
        best[better] = values[better]
        classes[better] = k
    return classes


def segment_masks(image: sitk.Image, **params: Any) -> dict[str, sitk.Image]:  # noqa: ANN401
    """One uint8 mask per label (structure name → mask on the source grid of ``image``)."""
    labels = segment(image, **params).image
    names = model_params(**params).labels
    array = sitk.GetArrayViewFromImage(labels)
    return {name: image_like((array == channel).astype(np.uint8), image) for channel, name in names.items()}


@step("model.segment")
def segment(
    image: sitk.Image,
    *,
    model: str,
    labels: Mapping[Any, str],
    axes: str = "zyx",
    orientation: str = "LPS",
    spacing_mm: Sequence[float] | None = None,
    intensity: Mapping[str, Any] | None = None,
    patch: Sequence[int] | None = None,
    overlap: float = 0.25,
    postprocess: Mapping[str, Any] | None = None,
    threads: int | None = None,
    device: str = "auto",
) -> StepOutput:
    """Run an ONNX segmentation model on ``image``: a label map on its grid whose values are the output
    channels named in ``labels`` (0 elsewhere), with the estimates ``provider`` (ONNX Runtime's
    execution provider), ``windows`` (forward passes), ``seconds`` (inference) and ``voxels`` per
    structure. See the module docstring for every parameter."""
    params = model_params(
        model=model, labels=labels, axes=axes, orientation=orientation, spacing_mm=spacing_mm,
        intensity=intensity, patch=patch, overlap=overlap, postprocess=postprocess, threads=threads,
        device=device,
    )
    started = time.perf_counter()
    inference = infer(params, image)
    seconds = time.perf_counter() - started
    classes = _classes(params, inference.scores, inference.grid, image)
    provider, windows = inference.provider, inference.windows
    del inference
    out = np.zeros(classes.shape, dtype=np.uint8 if max(params.labels) < 256 else np.uint16)
    for channel, name in params.labels.items():
        mask = classes == channel
        if name in params.largest_component and mask.any():
            kept = largest_components(image_like(mask.astype(np.uint8), image))
            mask = sitk.GetArrayViewFromImage(kept).astype(bool)
        out[mask] = channel
    voxels = {name: int((out == channel).sum()) for channel, name in params.labels.items()}
    log.info("model %s on %s (%d windows, %.1f s): %s", params.model.name, provider, windows, seconds,
             ", ".join(f"{name} {n} voxels" for name, n in voxels.items()))
    estimates = {"provider": provider, "windows": windows, "seconds": seconds, "voxels": voxels}
    return StepOutput(image_like(out, image), estimates)

