"""Per-step wall time and peak memory of each pipeline on a full-size volume; prints a table.

The CT volume is a SYNTHETIC PHANTOM (``tests/phantoms.py``: body, liver with lesions, spleen, kidneys,
lungs, airways, vessels, spine/ribs, 12 HU noise, fat planes between the organs as in patients; 300 mm long,
so the anatomy keeps its adult size in patient coordinates — lung bases and heart above, psoas, bowel and
the iliac crests below), written as a single-frame DICOM series — by default 512×512×300 at
0.7×0.7×1.0 mm — because the real data in ``shared/data`` is only 20–48 slices. The MR
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
import dicomnode.imaging.assess as assess_module
import dicomnode.outputs.capture as capture_module
import dicomnode.outputs.package as package_module
import dicomnode.pipelines.runner as runner_module
from dicomnode.imaging.volume import read_volume
from dicomnode.jobs import JobResult, JobSpec
from dicomnode.pipelines.registry import get_pipeline

def rss():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0

def cpu():  # user + system seconds of every thread of this process
    return time.process_time()

rows = []

def timed(module, attribute, label):
    # wrap module.attribute so that each call adds a row (the stages between and after the steps)
    original = getattr(module, attribute)
    def wrapper(*args, **kwargs):
        wall, used = time.perf_counter(), cpu()
        try:
            return original(*args, **kwargs)
        finally:
            rows.append({"name": label, "seconds": time.perf_counter() - wall, "cpu_seconds": cpu() - used,
                         "peak_rss_mb": rss()})
    setattr(module, attribute, wrapper)

timed(runner_module, "build_segments", "segments from step outputs")
timed(assess_module, "assess", "QC (assess)")
timed(runner_module, "enhancement_summary", "enhancement report")
timed(runner_module, "resolve_windows", "windows")
timed(package_module, "build_seg", "package: SEG")
timed(package_module, "_write_series", "package: derived series")
timed(package_module, "segment_measurements", "package: measurements")
timed(package_module, "finding_info", "package: finding info")
timed(package_module, "build_sr", "package: SR")
timed(package_module, "build_ko", "package: KOS")
timed(capture_module, "build_capture", "package: secondary capture")

pipeline, series, out = sys.argv[1], sys.argv[2], sys.argv[3]
t0, c0 = time.perf_counter(), cpu()
volume = read_volume(series)
rows.append({"name": "load series", "seconds": time.perf_counter() - t0, "cpu_seconds": cpu() - c0,
             "peak_rss_mb": rss()})
spec = get_pipeline(pipeline)
steps_at = len(rows)
processed, summary = runner_module.process_volume(spec, volume, JobSpec("bench", pipeline, {}, (), out))
rows[steps_at:steps_at] = [
    {"name": f"{s['name']} ({s['use']})", "seconds": s["seconds"], "cpu_seconds": s["cpu_seconds"],
     "peak_rss_mb": s["peak_rss_mb"]} for s in summary["steps"]]
t1, c1 = time.perf_counter(), cpu()
files = package_module.write_result_package(processed, Path(out))
JobResult("bench", True, tuple(str(f) for f in files), summary).write(Path(out))
rows.append({"name": "write result package (all)", "seconds": time.perf_counter() - t1,
             "cpu_seconds": cpu() - c1, "peak_rss_mb": rss()})
print(json.dumps({"rows": rows, "total": time.perf_counter() - t0, "total_cpu": cpu() - c0, "peak": rss(),
                  "files": len(files), "shape": list(volume.shape), "segments": summary["segments"]}))
"""


def make_series(kind: str, folder: Path, matrix: int, slices: int) -> str:
    from tests.phantoms import make_ct_phantom, make_mr_head_phantom, write_dicom_series

    if kind == "CT":
        fov = 360.0
        phantom = make_ct_phantom(
            shape=(slices, matrix, matrix), spacing=(300.0 / slices, fov / matrix, fov / matrix),
            phase="portal", seed=1, fat_planes=True,
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
    parser.add_argument("--keep", type=Path, default=None,
                        help="folder that keeps the generated series (reused when present: "
                             "<keep>/CT-512x300) and each pipeline's result package (<keep>/out-<pipeline>), "
                             "to compare runs")
    args = parser.parse_args()
    # other processes share the cores: every figure below is only as good as the load it ran under
    print("# machine: {} cores, load average {:.1f} {:.1f} {:.1f} (1/5/15 min) at the start".format(
        os.cpu_count(), *os.getloadavg()), flush=True)
    with tempfile.TemporaryDirectory(prefix="dicomnode-bench-") as tmp:
        base = args.keep if args.keep is not None else Path(tmp)
        series: dict[str, tuple[Path, str]] = {}
        for name in args.pipelines.split(","):
            kind = "MR" if name.endswith("-mr") else "CT"
            if kind not in series:
                folder = base / (f"CT-{args.matrix}x{args.slices}" if kind == "CT" else "MR")
                if args.keep is not None and folder.is_dir() and any(folder.iterdir()):
                    print(f"# {kind} series reused from {folder}", flush=True)
                    series[kind] = (folder, f"{kind} phantom reused from {folder.name}")
                    folder, description = series[kind]
                    out = base / f"out-{name}"
                    run_one(name, folder, description, out, args.threads)
                    continue
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
            run_one(name, folder, description, base / f"out-{name}", args.threads)


def run_one(name: str, folder: Path, description: str, out: Path, threads: int) -> None:
    """Run pipeline ``name`` on the series in ``folder`` in a fresh process; print its stage table (wall and
    CPU seconds: CPU, all threads of the process, is the figure to compare when other processes share the
    cores)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    run = subprocess.run(
        [sys.executable, "-c", CHILD, name, str(folder), str(out), str(threads)],
        capture_output=True, text=True, env=env, cwd=ROOT,
    )
    if run.returncode != 0:
        print(f"{name}: FAILED\n{run.stderr[-3000:]}")
        return
    report = json.loads(run.stdout.strip().splitlines()[-1])
    print(f"\n## {name} on {description} ({'x'.join(map(str, report['shape']))}), {threads} threads")
    print(f"{'stage':<44}{'seconds':>10}{'CPU s':>10}{'peak RSS MB':>14}")
    for row in report["rows"]:
        print(f"{row['name'][:43]:<44}{row['seconds']:>10.2f}{row['cpu_seconds']:>10.2f}"
              f"{row['peak_rss_mb']:>14.0f}")
    print(f"{'TOTAL':<44}{report['total']:>10.2f}{report['total_cpu']:>10.2f}{report['peak']:>14.0f}")
    volumes = ", ".join(f"{k} {v['volume_ml']:.0f} ml" for k, v in report["segments"].items())
    print(f"segments: {volumes}; {report['files']} result files")
    print("# load average {:.1f} {:.1f} {:.1f} (1/5/15 min) after {}".format(*os.getloadavg(), name),
          flush=True)


if __name__ == "__main__":
    main()
