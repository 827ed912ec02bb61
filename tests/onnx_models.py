"""Tiny ONNX segmentation models built with the ``onnx`` helper API (no downloaded weights).

Every model takes ``X`` (1, 1, *spatial) float32 and returns ``Y`` (1, K, *spatial): class scores whose
argmax the ``model.segment`` step takes. Their answers are known in closed form, so tests can predict
the expected mask voxel for voxel.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 17
DYNAMIC = ["n", "c", "d0", "d1", "d2"]


def _save(nodes: list, initializers: list, path: Path, *, input_shape: Sequence | None = None,
          output_shape: Sequence | None = None) -> Path:
    x = helper.make_tensor_value_info("X", TensorProto.FLOAT, list(input_shape or [1, 1, "d0", "d1", "d2"]))
    output_shape = list(output_shape or [1, None, "d0", "d1", "d2"])
    y = helper.make_tensor_value_info("Y", TensorProto.FLOAT, output_shape)
    graph = helper.make_graph(nodes, path.stem, [x], [y], initializer=initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path


def _const(name: str, value: np.ndarray | float) -> onnx.TensorProto:
    return numpy_helper.from_array(np.asarray(value, dtype=np.float32), name)


def linear_classes(path: Path, coefficients: Sequence[tuple[float, float]], **shapes: Sequence) -> Path:
    """Channel k scores ``a_k * X + b_k`` for ``coefficients[k] = (a_k, b_k)``. With [(0, 0), (1, -t)]
    it is a thresholding model: class 1 where X > t."""
    nodes, inits, names = [], [], []
    for k, (a, b) in enumerate(coefficients):
        inits += [_const(f"a{k}", a), _const(f"b{k}", b)]
        nodes += [helper.make_node("Mul", ["X", f"a{k}"], [f"m{k}"]),
                  helper.make_node("Add", [f"m{k}", f"b{k}"], [f"s{k}"])]
        names.append(f"s{k}")
    nodes.append(helper.make_node("Concat", names, ["Y"], axis=1))
    return _save(nodes, inits, path, **shapes)


def threshold(path: Path, value: float, **shapes: Sequence) -> Path:
    """Class 1 where X > ``value`` (scores 0 and X - value)."""
    return linear_classes(path, [(0.0, 0.0), (1.0, -value)], **shapes)


def shifted_threshold(path: Path, offset: Sequence[int], value: float) -> Path:
    """Class 1 at index i where X[i + offset] > ``value`` (offset per tensor spatial axis, each -1..1):
    a 3x3x3 convolution with one non-zero tap, so a wrong axis order or orientation moves the mask."""
    weight = np.zeros((2, 1, 3, 3, 3), dtype=np.float32)
    weight[1, 0, 1 + offset[0], 1 + offset[1], 1 + offset[2]] = 1.0
    inits = [_const("W", weight), _const("B", np.array([0.0, -value]))]
    nodes = [helper.make_node("Conv", ["X", "W", "B"], ["Y"], pads=[1] * 6, kernel_shape=[3, 3, 3])]
    return _save(nodes, inits, path)


def window_mean(path: Path) -> Path:
    """Class 1 scores the mean of X over the window it is given (a model whose answer depends on the
    window: what the Gaussian blending averages)."""
    inits = [_const("zero", 0.0)]
    nodes = [
        helper.make_node("ReduceMean", ["X"], ["mean"], axes=[2, 3, 4], keepdims=1),
        helper.make_node("Mul", ["X", "zero"], ["zeros"]),
        helper.make_node("Add", ["zeros", "mean"], ["broadcast"]),
        helper.make_node("Concat", ["zeros", "broadcast"], ["Y"], axis=1),
    ]
    return _save(nodes, inits, path)


def unet(path: Path, *, channels: int = 8, classes: int = 4, levels: int = 3, seed: int = 0) -> Path:
    """A small 3-D U-Net-shaped network with random weights (conv-ReLU blocks, max-pool down, resize up,
    skip concatenations): realistic compute per voxel for timing, meaningless output."""
    rng = np.random.default_rng(seed)
    nodes: list = []
    inits: list = []

    def conv(name: str, source: str, c_in: int, c_out: int, relu: bool = True) -> str:
        inits.append(_const(f"{name}_w", rng.normal(0, (2.0 / (27 * c_in)) ** 0.5, (c_out, c_in, 3, 3, 3))))
        inits.append(_const(f"{name}_b", np.zeros(c_out)))
        out = f"{name}_c"
        nodes.append(helper.make_node("Conv", [source, f"{name}_w", f"{name}_b"], [out], pads=[1] * 6,
                                      kernel_shape=[3, 3, 3]))
        if relu:
            nodes.append(helper.make_node("Relu", [out], [f"{name}_r"]))
            return f"{name}_r"
        return out

    skips = []
    current, c_in = "X", 1
    for level in range(levels):
        width = channels * 2**level
        current = conv(f"enc{level}b", conv(f"enc{level}a", current, c_in, width), width, width)
        skips.append((current, width))
        c_in = width
        if level < levels - 1:
            nodes.append(helper.make_node("MaxPool", [current], [f"pool{level}"], kernel_shape=[2, 2, 2],
                                          strides=[2, 2, 2]))
            current = f"pool{level}"
    inits.append(_const("scales", np.array([1, 1, 2, 2, 2])))
    for level in range(levels - 2, -1, -1):
        nodes.append(helper.make_node("Resize", [current, "", "scales"], [f"up{level}"], mode="nearest"))
        skip, width = skips[level]
        nodes.append(helper.make_node("Concat", [f"up{level}", skip], [f"cat{level}"], axis=1))
        current = conv(f"dec{level}", f"cat{level}", c_in + width, width)
        c_in = width
    conv("head", current, c_in, classes, relu=False)
    nodes.append(helper.make_node("Identity", ["head_c"], ["Y"]))
    return _save(nodes, inits, path, output_shape=[1, classes, "d0", "d1", "d2"])
