"""Wall time and peak memory of each part of the result package on a full-size series; prints a table.

The series is the synthetic CT phantom of ``benchmarks/pipelines.py`` (512×512×300 by default, written as
single-frame DICOM in its own process). A child process loads it, runs the pipeline (``liver-ct`` by
default) to get a real :class:`~dicomnode.outputs.api.ProcessedSeries` (organ + lesion masks, enhanced
volume), then times the parts of :func:`~dicomnode.outputs.package.write_result_package` one by one —
pyradiomics measurements per segment, SEG build/write, derived series build+write, SR build/write — and
finally the whole package call. Peak RSS is the process's high-water mark after each part.

    python benchmarks/outputs.py [--slices 300] [--matrix 512] [--threads 2] [--pipeline liver-ct]
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
import dataclasses, json, os, resource, shutil, sys, time
threads = sys.argv[4]
for name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS",
             "ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS"):
    os.environ[name] = threads
import SimpleITK as sitk
sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(int(threads))
from pathlib import Path
from dicomnode.imaging.volume import read_volume
from dicomnode.jobs import JobSpec
from dicomnode.outputs import package as pk
from dicomnode.outputs.codes import DEFAULT_SR_FEATURES
from dicomnode.outputs.derived import DerivedSpec, iter_derived_series
from dicomnode.outputs.seg import SegSpec, build_seg
from dicomnode.outputs.sr import SRSpec, build_sr
from dicomnode.outputs.uids import UIDFactory
from dicomnode.pipelines.registry import get_pipeline
from dicomnode.pipelines.runner import process_volume

def rss():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0

pipeline, series, out = sys.argv[1], sys.argv[2], Path(sys.argv[3])
rows = []
def timed(name, fn):
    started = time.perf_counter()
    result = fn()
    rows.append({"name": name, "seconds": time.perf_counter() - started, "peak_rss_mb": rss()})
    return result

volume = timed("load series", lambda: read_volume(series))
processed, summary = timed(f"pipeline {pipeline}", lambda: process_volume(
    get_pipeline(pipeline), volume, JobSpec("bench", pipeline, {}, (), str(out))))
processed = dataclasses.replace(processed, sources=pk.conforming_sources(processed.sources))
prov, first = processed.provenance, processed.sources[0]
uids = UIDFactory(str(first.get("SeriesInstanceUID", "")), prov.pipeline, prov.params_hash)
parts = out / "parts"
seg = timed("SEG build", lambda: build_seg(processed.sources, processed.segments, prov, uids, SegSpec()))
timed("SEG write", lambda: pk._write(seg, parts / pk.SEG_FILE))
if processed.enhanced is not None:
    timed("derived series build + write", lambda: pk._write_series(iter_derived_series(
        processed.sources, processed.enhanced, prov, uids, DerivedSpec(), processed.window),
        parts / pk.DERIVED_DIR))
measurements = {}
for segment in processed.segments:
    measurements[segment.label] = timed(
        f"measurements {segment.label} ({int(segment.mask.sum())} vox)",
        lambda: pk.segment_measurements(processed, segment, DEFAULT_SR_FEATURES))
sr = timed("SR build", lambda: build_sr(processed.sources, processed.segments, seg, measurements,
                                        DEFAULT_SR_FEATURES, prov, uids, SRSpec()))
timed("SR write", lambda: pk._write(sr, parts / pk.SR_FILE))
del seg, sr
shutil.rmtree(parts)
files = timed("write_result_package (all of it)", lambda: pk.write_result_package(processed, out / "package"))
print(json.dumps({"rows": rows, "peak": rss(), "files": len(files), "shape": list(volume.shape)}))
"""


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--matrix", type=int, default=512)
    parser.add_argument("--slices", type=int, default=300)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--pipeline", default="liver-ct")
    args = parser.parse_args()
    kind = "MR" if args.pipeline.endswith("-mr") else "CT"
    with tempfile.TemporaryDirectory(prefix="dicomnode-bench-outputs-") as tmp:
        folder = Path(tmp) / kind
        started = time.perf_counter()
        made = subprocess.run(
            [sys.executable, str(ROOT / "benchmarks" / "pipelines.py"), "--make", kind, str(folder),
             str(args.matrix), str(args.slices)],
            capture_output=True, text=True, check=True, cwd=ROOT,
        )
        description = made.stdout.strip().splitlines()[-1]
        print(f"# {description}: generated and written in {time.perf_counter() - started:.1f} s", flush=True)
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        run = subprocess.run(
            [sys.executable, "-c", CHILD, args.pipeline, str(folder), str(Path(tmp) / "out"),
             str(args.threads)],
            capture_output=True, text=True, env=env, cwd=ROOT,
        )
        if run.returncode != 0:
            print(f"{args.pipeline}: FAILED\n{run.stderr[-3000:]}")
            sys.exit(1)
        report = json.loads(run.stdout.strip().splitlines()[-1])
        print(f"\n## result package of {args.pipeline} on {description} "
              f"({'x'.join(map(str, report['shape']))}), {args.threads} threads")
        print(f"{'part':<52}{'seconds':>10}{'peak RSS MB':>14}")
        for row in report["rows"]:
            print(f"{row['name'][:51]:<52}{row['seconds']:>10.2f}{row['peak_rss_mb']:>14.0f}")
        print(f"{report['files']} result files")


if __name__ == "__main__":
    main()
