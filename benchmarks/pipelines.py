"""Per-step wall time and peak memory of each pipeline on a full-size volume; prints a table.

The CT volume is a SYNTHETIC PHANTOM (``tests/phantoms.py``: body, liver with lesions, spleen, kidneys,
lungs, airways, vessels, spine/ribs, 12 HU noise), written as a single-frame DICOM series — by default
512×512×300 at 0.7×0.7×1.0 mm — because the real data in ``shared/data`` is only 20–48 slices. The MR
volume for ``brain-mr`` is the MR head phantom at 256×256×160 (1 mm). Each pipeline runs in a fresh
process (ITK/OpenMP threads capped at ``--threads``) so its peak RSS is the pipeline's own: loading
the series, every step, and writing the result package (SEG, enhanced series, SR).

    python benchmarks/pipelines.py [--slices 300] [--matrix 512] [--threads 2] [--pipelines liver-ct,...]

Targets on the 2-core development machine: liver-ct ≤ 60 s end to end, peak RSS ≤ 3 GB.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

CHILD = r"""
import json, os, resource, sys, time
threads = sys.argv[4]
for name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS",
             "ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS"):
    os.environ[name] = threads
import SimpleITK as sitk
sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(int(threads))
from pathlib import Path
from dicomnode.imaging.volume import read_volume
from dicomnode.jobs import JobSpec
from dicomnode.outputs.package import write_result_package
from dicomnode.pipelines.registry import get_pipeline
from dicomnode.pipelines.runner import process_volume

def rss():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0

pipeline, series, out = sys.argv[1], sys.argv[2], sys.argv[3]
rows = []
t0 = time.perf_counter()
volume = read_volume(series)
rows.append({"name": "load series", "seconds": time.perf_counter() - t0, "peak_rss_mb": rss()})
spec = get_pipeline(pipeline)
processed, summary = process_volume(spec, volume, JobSpec("bench", pipeline, {}, (), out))
rows.extend({"name": f"{s['name']} ({s['use']})", "seconds": s["seconds"], "peak_rss_mb": s["peak_rss_mb"]}
            for s in summary["steps"])
t1 = time.perf_counter()
files = write_result_package(processed, Path(out))
rows.append({"name": "write result package", "seconds": time.perf_counter() - t1, "peak_rss_mb": rss()})
print(json.dumps({"rows": rows, "total": time.perf_counter() - t0, "peak": rss(), "files": len(files),
                  "shape": list(volume.shape), "segments": summary["segments"]}))
"""


def make_series(kind: str, folder: Path, matrix: int, slices: int) -> str:
    from tests.phantoms import make_ct_phantom, make_mr_head_phantom, write_dicom_series

    if kind == "CT":
        fov = 360.0
        phantom = make_ct_phantom(
            shape=(slices, matrix, matrix), spacing=(300.0 / slices, fov / matrix, fov / matrix),
            phase="portal", seed=1,
        )
        description = f"CT phantom {matrix}x{matrix}x{slices}"
    else:
        phantom = make_mr_head_phantom(shape=(160, 256, 256), spacing=(1.0, 1.0, 1.0), seed=1)
        description = "MR head phantom 256x256x160"
    write_dicom_series(phantom, folder)
    del phantom
    return description


def main() -> None:
    if len(sys.argv) == 6 and sys.argv[1] == "--make":
        print(make_series(sys.argv[2], Path(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])))
        return
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--matrix", type=int, default=512)
    parser.add_argument("--slices", type=int, default=300)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--pipelines", default="liver-ct,lung-ct,brain-mr")
    args = parser.parse_args()
    # other processes share the cores: every figure below is only as good as the load it ran under
    print("# machine: {} cores, load average {:.1f} {:.1f} {:.1f} (1/5/15 min) at the start".format(
        os.cpu_count(), *os.getloadavg()), flush=True)
    with tempfile.TemporaryDirectory(prefix="dicomnode-bench-") as tmp:
        series: dict[str, tuple[Path, str]] = {}
        for name in args.pipelines.split(","):
            kind = "MR" if name.endswith("-mr") else "CT"
            if kind not in series:
                folder = Path(tmp) / kind
                started = time.perf_counter()
                # generate in a separate process: on Linux a child inherits its parent's peak RSS
                # (ru_maxrss survives fork/exec), so the parent must stay small for honest figures
                made = subprocess.run(
                    [sys.executable, __file__, "--make", kind, str(folder), str(args.matrix),
                     str(args.slices)],
                    capture_output=True, text=True, check=True, cwd=ROOT,
                )
                description = made.stdout.strip().splitlines()[-1]
                print(f"# {description}: generated and written in {time.perf_counter() - started:.1f} s",
                      flush=True)
                series[kind] = (folder, description)
            folder, description = series[kind]
            out = Path(tmp) / f"out-{name}"
            env = {**os.environ, "PYTHONPATH": str(ROOT)}
            run = subprocess.run(
                [sys.executable, "-c", CHILD, name, str(folder), str(out), str(args.threads)],
                capture_output=True, text=True, env=env, cwd=ROOT,
            )
            if run.returncode != 0:
                print(f"{name}: FAILED\n{run.stderr[-3000:]}")
                continue
            report = json.loads(run.stdout.strip().splitlines()[-1])
            print(f"\n## {name} on {description} ({'x'.join(map(str, report['shape']))}), "
                  f"{args.threads} threads")
            print(f"{'step':<44}{'seconds':>10}{'peak RSS MB':>14}")
            for row in report["rows"]:
                print(f"{row['name'][:43]:<44}{row['seconds']:>10.2f}{row['peak_rss_mb']:>14.0f}")
            print(f"{'TOTAL':<44}{report['total']:>10.2f}{report['peak']:>14.0f}")
            volumes = ", ".join(f"{k} {v['volume_ml']:.0f} ml" for k, v in report["segments"].items())
            print(f"segments: {volumes}; {report['files']} result files")
            print("# load average {:.1f} {:.1f} {:.1f} (1/5/15 min) after {}".format(*os.getloadavg(), name),
                  flush=True)


if __name__ == "__main__":
    main()
