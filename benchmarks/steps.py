"""Wall time and peak memory of every imaging step on a synthetic 512 x 512 x 300 CT-like volume.

    python benchmarks/steps.py [--slices 300] [--size 512] [--steps name,name] [--no-scaling]

The volume is SYNTHETIC (not patient data): an elliptic body (fat rim, soft tissue 40 HU), a liver-like
ellipsoid (100 HU) with hypodense lesions, a spine (700 HU), lungs (-850 HU), Gaussian noise (15 HU)
and a steel rod (3000 HU) on 4 slices; 0.7 x 0.7 x 1.5 mm. Each step also runs on a quarter of the
slices; the scaling exponent log(t_full / t_quarter) / log(4) flags steps worse than linear (> 1.2).
Peak memory is the peak resident set size above the level before the step (sampled every 10 ms).
"""

from __future__ import annotations

import argparse
import ctypes
import ctypes.util
import gc
import math
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import psutil
import SimpleITK as sitk

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dicomnode.imaging import artifacts, enhance, fuse, preprocess, segment  # noqa: E402

SPACING = (0.7, 0.7, 1.5)
LIBC = ctypes.CDLL(ctypes.util.find_library("c")) if ctypes.util.find_library("c") else None


def synthetic_ct(size: int, slices: int, seed: int = 0) -> tuple[sitk.Image, sitk.Image]:
    """The synthetic CT volume (float32 HU) and its liver mask."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[:size, :size].astype(np.float32) * SPACING[0]
    c = size * SPACING[0] / 2
    body = ((x - c) / 170) ** 2 + ((y - c) / 125) ** 2 < 1
    inner = ((x - c) / 160) ** 2 + ((y - c) / 115) ** 2 < 1
    spine = (x - c) ** 2 + (y - c - 80) ** 2 < 18**2
    volume = np.empty((slices, size, size), np.float32)
    liver = np.zeros((slices, size, size), np.uint8)
    for k in range(slices):
        z = (k - slices / 2) * SPACING[2]
        plane = np.where(body, -100.0, -1000.0).astype(np.float32)
        plane[inner] = 40.0
        organ = ((x - c + 60) / 90) ** 2 + ((y - c + 10) / 70) ** 2 + (z / 120) ** 2 < 1
        plane[organ] = 100.0
        liver[k] = organ
        for lx, ly, lz, r in [(-70, -20, 0, 12), (-40, 20, 40, 8), (-90, 0, -60, 10)]:
            plane[((x - c - lx) ** 2 + (y - c - ly) ** 2 + (z - lz) ** 2) < r**2] = 55.0
        if z > 0.3 * slices * SPACING[2] / 2:
            for lx in (-80, 80):
                plane[((x - c - lx) / 60) ** 2 + ((y - c + 10) / 70) ** 2 < 1] = -850.0
        plane[spine] = 700.0
        if abs(k - slices // 2) < 2:
            plane[(x - c + 30) ** 2 + (y - c - 60) ** 2 < 7**2] = 3000.0
        volume[k] = plane + rng.normal(0, 15, plane.shape).astype(np.float32)
    image = sitk.GetImageFromArray(volume)
    image.SetSpacing(SPACING)
    mask = sitk.GetImageFromArray(liver)
    mask.CopyInformation(image)
    return image, mask


class PeakRss:
    """Peak RSS above the starting level, sampled in a background thread."""

    def __init__(self) -> None:
        self.process = psutil.Process()
        self.peak = 0
        self._stop = threading.Event()

    def __enter__(self) -> PeakRss:
        self.start = self.process.memory_info().rss
        self.peak = self.start
        self.thread = threading.Thread(target=self._sample, daemon=True)
        self.thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self.process.memory_info().rss)
            time.sleep(0.01)

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self.thread.join()
        self.peak = max(self.peak, self.process.memory_info().rss)

    @property
    def mib(self) -> float:
        return (self.peak - self.start) / 2**20


def cases(image: sitk.Image, liver: sitk.Image) -> dict[str, Callable[[], object]]:
    body = segment.body_mask(image)
    coarse = segment.erode(liver, radius_mm=5.0)
    moved = sitk.Resample(
        image,
        image,
        sitk.Euler3DTransform((0, 0, 0), 0.02, 0.0, 0.03, (3.0, -2.0, 1.0)),
        sitk.sitkLinear,
        -1000.0,
    )
    return {
        "preprocess.median r=1mm": lambda: preprocess.median(image, radius_mm=1.0),
        "preprocess.gaussian 1mm": lambda: preprocess.gaussian(image, sigma_mm=1.0),
        "preprocess.anisotropic_diffusion 5it": lambda: preprocess.anisotropic_diffusion(image),
        "preprocess.bilateral (slice-wise)": lambda: preprocess.bilateral(image),
        "preprocess.nl_means (slice-wise)": lambda: preprocess.nl_means(image),
        "preprocess.wavelet_denoise (3-D)": lambda: preprocess.wavelet_denoise(image),
        "preprocess.resample iso 0.7mm": lambda: preprocess.resample(image),
        "preprocess.window": lambda: preprocess.window(image, center=40, width=400),
        "preprocess.normalize zscore": lambda: preprocess.normalize(image, mask=body),
        "preprocess.register rigid": lambda: preprocess.register(image, moved),
        "segment.threshold": lambda: segment.threshold(image, lower=60, upper=200),
        "segment.otsu": lambda: segment.otsu(image),
        "segment.multi_otsu 3": lambda: segment.multi_otsu(image, classes=3),
        "segment.region_growing": lambda: segment.region_growing(image, lower=70, upper=140),
        "segment.region_growing confidence": lambda: segment.region_growing(
            image, method="confidence", seed_region=coarse
        ),
        "segment.watershed": lambda: segment.watershed(image, lower=70, upper=140),
        "segment.kmeans 4 (in body)": lambda: segment.kmeans(image, clusters=4, mask=body),
        "segment.fuzzy_cmeans 4 (in body)": lambda: segment.fuzzy_cmeans(image, clusters=4, mask=body),
        "segment.canny (slice-wise)": lambda: segment.canny(image),
        "segment.edge_region sobel": lambda: segment.edge_region(image, detector="sobel"),
        "segment.laplacian_of_gaussian": lambda: segment.laplacian_of_gaussian(image),
        "segment.geodesic_active_contour": lambda: segment.geodesic_active_contour(
            image, initial=coarse, iterations=100
        ),
        "segment.supervoxel_mask (liver box)": lambda: segment.supervoxel_mask(
            image, reference=liver, mask=segment.dilate(liver, radius_mm=10.0)
        ),
        "segment.opening 3mm (3-D)": lambda: segment.opening(body, radius_mm=3.0),
        "segment.closing 10mm (3-D)": lambda: segment.closing(body, radius_mm=10.0),
        "segment.fill_holes (slice-wise)": lambda: segment.fill_holes(body),
        "segment.largest_components 2": lambda: segment.largest_components(body, count=2),
        "segment.body_mask": lambda: segment.body_mask(image),
        "enhance.clahe (liver)": lambda: enhance.clahe(image, mask=liver),
        "enhance.contrast_stretch (liver)": lambda: enhance.contrast_stretch(image, mask=liver),
        "enhance.unsharp_mask (liver)": lambda: enhance.unsharp_mask(image, mask=liver),
        "enhance.laplacian_sharpen (liver)": lambda: enhance.laplacian_sharpen(image, mask=liver),
        "enhance.richardson_lucy 10it (liver)": lambda: enhance.richardson_lucy(image, mask=liver),
        "enhance.noise_reduction nl_means (liver)": lambda: enhance.noise_reduction(image, mask=liver),
        "enhance.edge_preserving_smooth (liver)": lambda: enhance.edge_preserving_smooth(image, mask=liver),
        "enhance.histogram_match (liver)": lambda: enhance.histogram_match(
            image, mask=liver, reference=image, reference_mask=liver
        ),
        "artifacts.reduce_metal_artifacts (metal slices)": lambda: artifacts.reduce_metal_artifacts(image),
        "artifacts.correct_slice_motion": lambda: artifacts.correct_slice_motion(image, levels=2),
        "fuse.weighted_average": lambda: fuse.weighted_average(image, other=moved),
        "fuse.wavelet_fusion (slice-wise)": lambda: fuse.wavelet_fusion(image, other=moved),
        "fuse.pca_fusion": lambda: fuse.pca_fusion(image, other=moved),
    }


def measure(step: Callable[[], object]) -> tuple[float, float]:
    gc.collect()
    if LIBC is not None:
        LIBC.malloc_trim(0)  # hand freed heap back to the OS so that the peak above start is meaningful
    with PeakRss() as rss:
        start = time.perf_counter()
        result = step()
        elapsed = time.perf_counter() - start
    del result
    return elapsed, rss.mib


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--slices", type=int, default=300)
    parser.add_argument("--steps", default="", help="comma-separated substrings of step names to run")
    parser.add_argument("--no-scaling", action="store_true", help="skip the quarter-size run")
    args = parser.parse_args()
    wanted = [s for s in args.steps.split(",") if s]
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(2)

    quarter: dict[str, float] = {}
    if not args.no_scaling:
        small, small_liver = synthetic_ct(args.size, max(8, args.slices // 4))
        for name, step in cases(small, small_liver).items():
            if not wanted or any(w in name for w in wanted):
                quarter[name] = measure(step)[0]
        del small, small_liver
    image, liver = synthetic_ct(args.size, args.slices)
    ratio = args.slices / max(8, args.slices // 4)
    print(
        f"synthetic CT-like volume {args.size}x{args.size}x{args.slices} "
        f"({args.size * args.size * args.slices / 1e6:.0f} Mvoxel, float32 HU), ITK threads 2"
    )
    print(f"{'step':<50} {'wall s':>8} {'peak MiB':>9} {'scaling':>8}")
    for name, step in cases(image, liver).items():
        if wanted and not any(w in name for w in wanted):
            continue
        elapsed, mib = measure(step)
        exponent = ""
        if name in quarter and quarter[name] > 0.05:
            value = math.log(elapsed / quarter[name]) / math.log(ratio)
            exponent = f"{value:.2f}" + (" !" if value > 1.2 else "")
        print(f"{name:<50} {elapsed:8.2f} {mib:9.0f} {exponent:>8}", flush=True)
    print("scaling = log(t_full / t_quarter) / log(voxel ratio); 1 = linear, '!' = worse than linear")


if __name__ == "__main__":
    main()
