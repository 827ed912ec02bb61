"""Inference time and peak memory of the ``model.segment`` step on a full-size volume; prints a table.

The model is a small 3-D U-Net-shaped ONNX network with random weights (``tests/onnx_models.py``: three
levels, 8-16-32 channels, conv-ReLU blocks, max-pool down, nearest upsampling, skip concatenations,
4 classes), built with the onnx helper API. The volume is synthetic (a body-shaped ellipse of soft
tissue with noise, air around it), 512×512×300 at 0.8×0.8×1.5 mm by default. Each configuration runs in
its own process (ONNX Runtime on the CPU provider with ``--threads`` intra-op threads) so that its peak
RSS is its own: the whole step (reorientation, resampling, intensity, sliding windows of 96³ with
Gaussian blending, return to the source grid, masks) is timed, and the forward passes alone.

    python benchmarks/model.py [--size 512 512 300] [--patch 96] [--threads 2] [--overlap 0.25 0.5]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

CHILD = r"""
import json, os, resource, sys, time
threads = int(sys.argv[2])
for name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[name] = str(threads)
import numpy as np
import SimpleITK as sitk
sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(threads)
from dicomnode.imaging import model as M
from dicomnode.imaging import sliding_window as sw

args = json.loads(sys.argv[1])
x, y, z = args["size"]
rng = np.random.default_rng(0)
zz, yy, xx = np.ogrid[:z, :y, :x]
body = ((xx - x / 2) / (0.42 * x)) ** 2 + ((yy - y / 2) / (0.32 * y)) ** 2 < 1
array = np.where(body, 40.0, -1000.0).astype(np.float32) + rng.normal(0, 12, (z, y, x)).astype(np.float32)
image = sitk.GetImageFromArray(array)
image.SetSpacing((0.8, 0.8, 1.5))
del array, body
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
forward_seconds = [0.0]
windows = [0]
original = sw.sliding_window

def counted(tensor, forward, patch, overlap=0.25, **kw):
    def timed(batch):
        started = time.perf_counter()
        out = forward(batch)
        forward_seconds[0] += time.perf_counter() - started
        windows[0] += 1
        return out
    return original(tensor, timed, patch, overlap, **kw)

M.sliding_window = counted
started = time.perf_counter()
labels = M.segment(image, model=args["model"], labels={1: "A", 2: "B", 3: "C"}, patch=[args["patch"]] * 3,
                   overlap=args["overlap"], spacing_mm=args["spacing"], threads=threads,
                   intensity={"clip": [-1000, 1000], "scale": [0, 1]})
seconds = time.perf_counter() - started
print(json.dumps({"seconds": seconds, "forward_seconds": forward_seconds[0], "windows": windows[0],
                  "volume_rss_mb": base,
                  "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0}))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", type=int, nargs=3, default=[512, 512, 300], metavar=("X", "Y", "Z"))
    parser.add_argument("--patch", type=int, default=96)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--overlap", type=float, nargs="+", default=[0.25])
    parser.add_argument("--spacing", type=float, nargs="*", default=[], help="also run on these grids (mm)")
    options = parser.parse_args()

    import onnxruntime

    from tests.onnx_models import unet

    with tempfile.TemporaryDirectory(prefix="dicomnode-model-bench-") as scratch:
        model = unet(Path(scratch) / "unet.onnx", channels=8, classes=4, levels=3)
        size_mb = model.stat().st_size / 1e6
        runs = [(overlap, None) for overlap in options.overlap]
        runs += [(options.overlap[0], s) for s in options.spacing]
        x, y, z = options.size
        print(f"model.segment: 3-D U-Net (8-16-32 channels, 4 classes, {size_mb:.2f} MB ONNX, random "
              "weights), "
              f"volume {x}x{y}x{z} at 0.8x0.8x1.5 mm (synthetic), windows {options.patch}^3, "
              f"onnxruntime {onnxruntime.__version__} CPU, {options.threads} threads")
        print(f"{'grid':<14}{'overlap':>8}{'windows':>9}{'total_s':>9}{'forward_s':>11}{'s/window':>10}"
              f"{'volume_MB':>11}{'peak_MB':>9}")
        for overlap, spacing in runs:
            args = {"model": str(model), "size": options.size, "patch": options.patch, "overlap": overlap,
                    "spacing": [spacing] * 3 if spacing else None}
            child = subprocess.run([sys.executable, "-c", CHILD, json.dumps(args), str(options.threads)],
                                   capture_output=True, text=True, cwd=ROOT, check=False)
            if child.returncode != 0:
                print(child.stderr, file=sys.stderr)
                raise SystemExit(child.returncode)
            r = json.loads(child.stdout.strip().splitlines()[-1])
            grid = f"{spacing:g} mm" if spacing else "source"
            print(f"{grid:<14}{overlap:>8.2f}{r['windows']:>9}{r['seconds']:>9.1f}{r['forward_seconds']:>11.1f}"
                  f"{r['forward_seconds'] / max(r['windows'], 1):>10.2f}{r['volume_rss_mb']:>11.0f}"
                  f"{r['peak_rss_mb']:>9.0f}")


if __name__ == "__main__":
    main()
