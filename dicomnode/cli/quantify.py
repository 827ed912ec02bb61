"""CLI command: ``dicomnode quantify IMAGE MASK`` — pyradiomics features of one segment."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Annotated, Any

import typer

from dicomnode.cli.common import cli_errors, fail
from dicomnode.errors import QuantifyError

_NONE = {"none", "null", "~", ""}


def parse_setting(text: str) -> tuple[str, Any]:
    """``key=value`` with a YAML value: ``binWidth=10``, ``resampledPixelSpacing=[2,2,2]``."""
    import yaml

    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise QuantifyError(f"Setting '{text}' is not of the form key=value.")
    if raw.strip().lower() in _NONE:
        return key.strip(), None
    try:
        value = yaml.safe_load(raw)
    except yaml.YAMLError:
        value = raw
    return key.strip(), value


def _is_dicom(path: Path) -> bool:
    if path.is_dir():
        return True
    if path.name.lower().endswith((".nrrd", ".nhdr", ".nii", ".nii.gz", ".mha", ".mhd")):
        return False
    with path.open("rb") as handle:
        handle.seek(128)
        return handle.read(4) == b"DICM"


def compute(image: Path, mask: Path, label: int, settings: dict[str, Any]) -> dict[str, float]:
    """Features for an image/mask pair: files SimpleITK reads, or a DICOM series folder + a DICOM SEG."""
    from dicomnode.imaging.quantify import quantify_files, quantify_images

    for path in (image, mask):
        if not path.exists():
            raise QuantifyError(f"Input '{path}' does not exist.")
    if not _is_dicom(mask):
        if _is_dicom(image):
            import SimpleITK as sitk

            from dicomnode.imaging.volume import read_volume

            volume = read_volume(image)
            mask_image = sitk.ReadImage(str(mask))
            return quantify_images(volume.to_sitk(), mask_image, label=label, settings=settings)
        return quantify_files(str(image), str(mask), label=label, settings=settings)
    import numpy as np

    from dicomnode.imaging.volume import read_volume
    from dicomnode.outputs.segmask import read_seg, seg_mask

    if not _is_dicom(image):
        raise QuantifyError(f"A DICOM SEG mask needs a DICOM series as the image, not '{image}'.")
    volume = read_volume(image)
    if volume.frames:
        raise QuantifyError("A DICOM SEG mask needs a single-frame source series, not a multi-frame image.")
    segmentation = read_seg(mask)
    array = seg_mask(segmentation, volume.datasets, label).astype(np.uint8) * label
    settings = {k: v for k, v in settings.items() if k != "label"}
    return quantify_images(volume.to_sitk(), volume.to_sitk(array), label=label, settings=settings)


def _format(value: float) -> str:
    return repr(float(value)) if math.isfinite(value) else str(value)


def register(app: typer.Typer) -> None:
    """Add this module's commands to the dicomnode app."""

    @app.command("quantify")
    def quantify(
        image: Annotated[Path, typer.Argument(help="Image: NRRD/NIfTI file, or a DICOM series folder.")],
        mask: Annotated[Path, typer.Argument(help="Mask: NRRD/NIfTI label map, or a DICOM SEG file.")],
        label: Annotated[int, typer.Option("--label", "-l", help="Label value (SEG: segment number).")] = 1,
        bin_width: Annotated[
            float | None, typer.Option("--bin-width", help="Grey-level bin width (pyradiomics binWidth).")
        ] = None,
        setting: Annotated[
            list[str] | None,
            typer.Option("--setting", "-s", help="pyradiomics setting key=value (YAML value); repeatable."),
        ] = None,
        as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
    ) -> None:
        """Radiomic features (pyradiomics names) of one segment, plus voxel_count and volume_ml."""
        with cli_errors():
            settings = dict(parse_setting(s) for s in setting or [])
            if bin_width is not None:
                if bin_width <= 0:
                    raise fail(f"--bin-width must be positive, got {bin_width}.")
                settings["binWidth"] = bin_width
            if "label" in settings:
                label = int(settings.pop("label"))
            features = compute(image, mask, label, settings)
        if as_json:
            print(json.dumps(features, indent=2, allow_nan=True))
        else:
            width = max(len(k) for k in features)
            for name, value in features.items():
                print(f"{name:<{width}}  {_format(value)}")
