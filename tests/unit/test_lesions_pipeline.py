"""Lesions as liver-ct reports them (whole pipeline, phantom truth): no false lesion from metal streaks,
and a lesion cut by the edge of the field of view carries its own truncation flag and a lower-bound volume."""

from __future__ import annotations

import SimpleITK as sitk
from scipy import ndimage

from dicomnode.imaging.volume import Volume
from dicomnode.jobs import JobSpec
from dicomnode.pipelines.registry import get_pipeline
from dicomnode.pipelines.runner import process_volume
from tests import variants
from tests.phantoms import make_ct_phantom


def _run(image):  # noqa: ANN001, ANN202
    volume = Volume.from_sitk(image, modality="CT", units="HU")
    job = JobSpec("t", "liver-ct", {}, (), "/tmp")
    processed, summary = process_volume(get_pipeline("liver-ct"), volume, job)
    return [s for s in processed.segments if s.label.startswith("Lesion")], summary


def test_metal_streaks_give_no_false_lesion() -> None:
    """A steel rod beside the liver: after metal artefact reduction the dark band between the rod and the
    spine is still darker than the liver, elongated along the direction from the metal: a streak, not a
    lesion. Lesions on the streaked slices are found; what is reported lies on a true lesion; lesions
    near the metal carry the metal flag."""
    ct = make_ct_phantom(seed=5, hepatic_vessels=True, fat_planes=True, metal=True)
    lesions, _ = _run(ct.to_sitk())
    expected = [t for t in ct.lesions if t.diameter_mm >= 10]
    found = [t for t in expected if any(s.mask[ct.lesion_labels == t.label].any() for s in lesions)]
    assert len(found) >= 3, found  # of 4 (before averaging along arcs about the metal: 2)
    for lesion in lesions:
        assert (lesion.mask & ct.masks["lesions"]).any(), f"{lesion.label} is not a lesion"
    from_metal = ndimage.distance_transform_edt(~ct.masks["metal"], sampling=ct.spacing)
    near = [s for s in lesions if from_metal[s.mask].min() <= 25.0]
    assert near and all("metal" in s.qc.flags for s in near)


def test_lesion_cut_by_the_field_of_view_is_flagged_truncated() -> None:
    """The field of view cuts into the liver and through a 25 mm lesion: the lesion is reported (what is
    visible of it) with the truncated flag and its volume as a lower bound, not dropped or made whole."""
    ct = make_ct_phantom(seed=5, hepatic_vessels=True, fat_planes=True)
    image, labels = variants.crop(ct.to_sitk(), ct.to_sitk(ct.lesion_labels), keep_fraction=0.72,
                                  side="right")
    truth = sitk.GetArrayFromImage(labels)
    cut = [t.label for t in ct.lesions if (truth == t.label).any() and (truth == t.label)[:, :, 0].any()]
    assert cut  # the 25 mm lesion crosses the edge
    lesions, summary = _run(image)
    for label in cut:
        found = [s for s in lesions if (s.mask & (truth == label)).any()]
        assert len(found) == 1
        assert "truncated" in found[0].qc.flags
        assert summary["segments"][found[0].label]["volume_is_lower_bound"]
