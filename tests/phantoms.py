"""Synthetic CT (abdomen/chest) and MR (head) phantoms with exact masks, for imaging tests.

API (all sizes in millimetres; arrays are ``(slices, rows, columns)`` = ``(z, y, x)`` with the slice axis
ascending along +z of LPS, i.e. index 0 is the most inferior slice — the order
:mod:`dicomnode.imaging.volume` produces)::

    ct = make_ct_phantom(shape=(40, 128, 128), spacing=(5.0, 2.8, 2.8), phase="portal",
                         noise_sd=12.0, lesions=True, metal=False, seed=0)
    ct.image          # float32 HU, partial-volume blurred + Gaussian noise (+ metal streaks if metal=True)
    ct.clean          # float32 HU without noise and without metal streaks (ground truth for MAR tests)
    ct.masks          # dict name -> bool array: body, liver, spleen, kidney-left, kidney-right, lung-left,
                      # lung-right, lungs, airways, aorta, portal-vein, vessels, spine, lesions, metal
    ct.lesions        # tuple[LesionTruth] (label, centre_mm (x, y, z) LPS, diameter_mm, kind hypo|hyper)
    ct.lesion_labels  # int16 array, 0 = background, i = ct.lesions[i-1]
    ct.spacing, ct.origin, ct.direction       # (z, y, x) mm; LPS origin of voxel [0,0,0]; 3x3 row-major
    ct.to_sitk()      # SimpleITK.Image (float32, x/y/z axis order, geometry set)
    ct.mask_sitk("liver")                      # uint8 SimpleITK mask on the same grid

    mr = make_mr_head_phantom(shape=(48, 96, 96), spacing=(3.0, 2.5, 2.5), noise_sd=0.02,
                              bias=0.2, seed=0)
    mr.image          # float32 T1-like signal (0..~1); masks: head, scalp, skull, csf, brain, ventricles

    write_dicom_series(ct, out_dir, modality="CT")  -> list[Path]   # one CT Image Storage file per slice
        # options: shuffle_instance_numbers, tilt_deg (gantry tilt), drop_slices, duplicate_slice,
        #          slope/intercept, unsigned (PixelRepresentation 0), series_uid, study_uid

Phases (``phase``): ``native`` (liver ~58 HU, vessels darker than liver), ``arterial`` (aorta bright,
liver ~75 HU) and ``portal`` (liver ~105 HU, portal veins bright). Lesions: spheres inside the liver,
diameters 8–25 mm, hypodense (−45 HU vs the phase's normal liver: a hypovascular metastasis, 60 HU in the
portal phase) or hyperdense (+50 HU vs it), never touching each other. A lesion keeps its own attenuation
whatever the liver's: in a fatty liver (``liver_hu`` below the phase's normal liver) it does not darken with
the parenchyma (fat accumulates in hepatocytes, not in a metastasis or a cyst), so a lesion hypodense in a
normal liver is hyperdense in a steatotic one (portal phase, liver −40 HU: the 60 HU metastasis is
+100 HU); each truth's ``kind`` is its density relative to the liver it lies in. One that would be
within 40 HU of the liver (isodense: an arterial-phase 30 HU metastasis in a 10 HU liver) keeps the normal
model's contrast instead: the matrix tests detection, not visibility.
Variants: ``liver_hu`` overrides the liver's attenuation (steatosis: e.g. 10 HU, below the spleen);
``body_scale`` < 1 shrinks every structure about the FOV's centre (a child; lesion truths scale too);
``subcapsular=True`` adds a 30 mm hypodense lesion on the liver's anterior surface that bulges it by
~10 mm (part of the liver's truth); ``fat_planes=True`` gives the trunk a muscle wall and puts fat
behind the peritoneum and in a 6 mm plane around every organ (organs apart as in patients; without it
everything between the organs is one soft tissue); ``gallbladder=True`` puts a 75 mm pear of bile (8 HU, mask
``gallbladder``) in its fossa under the liver's anterior inferior surface, its fundus below the liver's edge.
Metal: a 14 mm steel rod (3000 HU) in the right paravertebral soft tissue; streaks are made physically
(forward projection with photon starvation in the metal trace, filtered back projection) on the slices
it crosses.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from scipy import ndimage

PHASE_HU: dict[str, dict[str, float]] = {
    #            liver spleen kidney aorta portal  muscle
    "native": {"liver": 58, "spleen": 46, "kidney": 32, "aorta": 42, "portal-vein": 40, "muscle": 48},
    "arterial": {"liver": 75, "spleen": 120, "kidney": 180, "aorta": 280, "portal-vein": 90, "muscle": 55},
    "portal": {"liver": 105, "spleen": 118, "kidney": 160, "aorta": 150, "portal-vein": 175, "muscle": 60},
}
# the renal medulla: in the arterial (corticomedullary) phase the cortex enhances first and the medulla
# inside it stays darker; native and portal-venous (nephrographic) kidneys are homogeneous
MEDULLA_HU: dict[str, float] = {"native": 32.0, "arterial": 95.0, "portal": 160.0}
# the heart's blood pool and the bowel wall (only in the anatomical layout of a long field of view)
BLOOD_HU: dict[str, float] = {"native": 40.0, "arterial": 230.0, "portal": 140.0}
BOWEL_WALL_HU: dict[str, float] = {"native": 40.0, "arterial": 80.0, "portal": 90.0}
# the IVC: (below the renal veins, above them) per phase; in the arterial phase only the renal return is
# enhanced, in the portal-venous phase the blood of the whole body has come back (100-140 HU)
IVC_HU: dict[str, tuple[float, float]] = {"native": (40.0, 40.0), "arterial": (50.0, 90.0),
                                          "portal": (130.0, 130.0)}
# the standard layout's half length: lung bases, liver, spleen and upper kidneys of the 200 mm phantom
STANDARD_HALF_LENGTH_MM = 97.5
# the stomach's contents (:func:`make_ct_phantom` ``stomach``): water, positive oral contrast, mucus
STOMACH_CONTENTS_HU: dict[str, float] = {"gas-fluid": 10.0, "fluid": 10.0, "contrast": 300.0, "empty": 20.0}


@dataclass(frozen=True)
class LesionTruth:
    label: int
    centre_mm: tuple[float, float, float]  # LPS x, y, z
    diameter_mm: float
    kind: str  # "hypo" | "hyper"


@dataclass(frozen=True)
class Phantom:
    image: np.ndarray
    clean: np.ndarray
    masks: dict[str, np.ndarray]
    spacing: tuple[float, float, float]  # (z, y, x) mm
    origin: tuple[float, float, float]  # LPS (x, y, z) of voxel [0, 0, 0]
    direction: tuple[float, ...] = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)
    modality: str = "CT"
    phase: str = ""
    lesions: tuple[LesionTruth, ...] = ()
    lesion_labels: np.ndarray | None = None
    extra: dict[str, object] = field(default_factory=dict)

    def to_sitk(self, array: np.ndarray | None = None):  # noqa: ANN201 - SimpleITK.Image
        import SimpleITK as sitk

        img = sitk.GetImageFromArray(np.ascontiguousarray(self.image if array is None else array))
        img.SetSpacing(tuple(float(s) for s in self.spacing[::-1]))
        img.SetOrigin(self.origin)
        img.SetDirection(self.direction)
        return img

    def mask_sitk(self, name: str):  # noqa: ANN201 - SimpleITK.Image
        return self.to_sitk(self.masks[name].astype(np.uint8))


def _grid(shape: tuple[int, int, int], spacing: tuple[float, float, float], z_centre: float = 0.0):
    nz, ny, nx = shape
    sz, sy, sx = spacing
    x = (np.arange(nx) - (nx - 1) / 2.0) * sx
    y = (np.arange(ny) - (ny - 1) / 2.0) * sy
    z = (np.arange(nz) - (nz - 1) / 2.0) * sz + z_centre
    zz, yy, xx = np.meshgrid(z, y, x, indexing="ij", sparse=True)
    origin = (float(x[0]), float(y[0]), float(z[0]))
    return zz, yy, xx, origin


def _ellipsoid(zz, yy, xx, c, r) -> np.ndarray:
    return ((xx - c[0]) / r[0]) ** 2 + ((yy - c[1]) / r[1]) ** 2 + ((zz - c[2]) / r[2]) ** 2 <= 1.0


def _cylinder(zz, yy, xx, c, r, z_range) -> np.ndarray:
    inside = ((xx - c[0]) / r[0]) ** 2 + ((yy - c[1]) / r[1]) ** 2 <= 1.0
    return inside & (zz >= z_range[0]) & (zz <= z_range[1])


def _capsule(zz, yy, xx, a, b, radius: float) -> np.ndarray:
    """Voxels within ``radius`` of the segment a–b (x, y, z mm): a straight vessel with round ends."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    d = b - a
    t = np.clip(((xx - a[0]) * d[0] + (yy - a[1]) * d[1] + (zz - a[2]) * d[2]) / float(d @ d), 0.0, 1.0)
    distance2 = (xx - a[0] - t * d[0]) ** 2 + (yy - a[1] - t * d[1]) ** 2 + (zz - a[2] - t * d[2]) ** 2
    return distance2 <= radius**2


def _hepatic_tree(zmax: float) -> list[tuple[tuple[float, float, float], tuple[float, float, float], float]]:
    """Vessel segments (a, b, radius) in the liver: hepatic veins and portal branches."""
    confluence = (-20.0, 40.0, 0.35 * zmax)
    portal = (-30.0, 0.0, -0.1 * zmax)
    right = (-105.0, 10.0, -0.12 * zmax)
    return [
        (confluence, (-115.0, -30.0, 0.3 * zmax), 5.0),  # right hepatic vein
        (confluence, (-60.0, -60.0, 0.3 * zmax), 4.0),  # middle hepatic vein
        (confluence, (10.0, -40.0, 0.25 * zmax), 3.5),  # left hepatic vein
        (portal, right, 4.5),  # right portal branch (in-plane)
        ((-80.0, 8.0, -0.11 * zmax), (-105.0, 45.0, -0.2 * zmax), 3.0),  # posterior sub-branch
        ((-92.0, 9.5, -0.115 * zmax), (-118.0, -40.0, -0.08 * zmax), 3.0),  # anterior sub-branch
        (portal, (15.0, -25.0, -0.05 * zmax), 3.5),  # left portal branch
    ]


GALLBLADDER_HU = 8.0  # bile: water density (0-20 HU), in every phase


def _gallbladder(zz, yy, xx, zmax: float) -> np.ndarray:  # noqa: ANN001
    """A pear-shaped sac about 75 mm long (an 18 mm neck, a 32 mm fundus) under the liver's anterior
    inferior surface between its lobes, its long axis tilted down and forwards: its neck in the liver's
    fossa, its fundus below and in front of the liver's edge."""
    neck = np.array([-40.0, -48.0, -0.3 * zmax])
    axis = np.array([-5.0, -18.0, -55.0])
    axis /= np.linalg.norm(axis)
    length = 50.0  # between the centres of the neck's and the fundus' rounded ends
    t = np.clip(((xx - neck[0]) * axis[0] + (yy - neck[1]) * axis[1] + (zz - neck[2]) * axis[2]) / length,
                0.0, 1.0)
    distance2 = ((xx - neck[0] - t * length * axis[0]) ** 2 + (yy - neck[1] - t * length * axis[1]) ** 2
                 + (zz - neck[2] - t * length * axis[2]) ** 2)
    return distance2 <= (9.0 + 7.0 * t) ** 2


def _finish(clean: np.ndarray, spacing, noise_sd: float, rng: np.random.Generator) -> np.ndarray:
    sigma = [0.35 * min(1.0, 1.0 / max(s, 1e-3)) * 2 for s in spacing]  # mild partial-volume blur
    blurred = ndimage.gaussian_filter(clean, sigma=[max(0.4, s) for s in sigma])
    noise = rng.normal(0.0, noise_sd, size=clean.shape).astype(np.float32)
    return (blurred + noise).astype(np.float32)


def make_ct_phantom(
    shape: tuple[int, int, int] = (40, 128, 128),
    spacing: tuple[float, float, float] = (5.0, 2.8, 2.8),
    phase: str = "portal",
    noise_sd: float = 12.0,
    lesions: bool = True,
    metal: bool = False,
    seed: int = 0,
    hepatic_vessels: bool = False,
    liver_hu: float | None = None,
    body_scale: float = 1.0,
    subcapsular: bool = False,
    fat_planes: bool = False,
    z_centre_mm: float | None = None,
    gallbladder: bool = False,
    ivc: bool = False,
    stomach: str | None = None,
) -> Phantom:
    """An abdomen + lung-base CT phantom centred in a FOV of ``shape × spacing`` (body ~300 × 220 mm).

    ``hepatic_vessels=True`` adds a branching vessel tree inside the liver (three oblique hepatic veins
    converging towards the IVC and in-plane portal branches, 5–10 mm wide), the hard case for lesion
    detection; the vessels keep at least 4 mm from every lesion.

    Craniocaudal extent: a field of view up to 200 mm long holds the standard layout (lung bases, liver,
    spleen, upper kidneys) fitted to its length. A longer one — or any FOV given ``z_centre_mm`` — shows
    the anatomy at its adult size in patient coordinates (z in mm: 0 is the standard phantom's centre,
    the right lung base lies at +15, the kidneys' hila at −73; the FOV's centre is at ``z_centre_mm``,
    by default 30 % of the length beyond 200 mm above the standard phantom and 70 % below): chest above
    (the lungs up to the carina, the heart on the diaphragm), abdomen and pelvis below (psoas muscles,
    colon with gas, small-bowel loops, no ribs below the kidneys, iliac wings, sacrum, femoral heads,
    bladder), not the same organs stretched. The extra structures' masks: heart, psoas, bowel, bladder,
    pelvis (empty in the fitted layout).

    ``ivc=True`` adds the inferior vena cava (mask ``ivc``): an oval tube 20 × 16 mm, 16 mm right of the
    midline and 14 mm in front of the vertebral body (beside the right crus, 13 mm right of the aorta), from
    the iliac confluence (a long field of view; else the FOV's bottom) up through the liver's bare area
    behind the caudate lobe, where the hepatic veins join it, to the right atrium 20 mm above the right lung
    base; blood of the phase (:data:`IVC_HU`: unenhanced below the renal veins in the arterial phase).

    ``stomach`` adds a stomach (mask ``stomach``: wall and contents) in the left upper quadrant under the left
    hemidiaphragm, in front of and medial to the spleen, left of the aorta, against the liver's left lobe
    (the other organs' masks are unchanged: it fills what they leave): ``"gas-fluid"`` (water with gas
    floating in front of a horizontal level, the patient supine), ``"fluid"`` (water, no gas), ``"contrast"``
    (positive oral contrast, 300 HU) or ``"empty"`` (collapsed: a 10 mm wall round a slit of mucus); the wall
    is 4 mm of the phase's bowel wall (:data:`STOMACH_CONTENTS_HU`)."""
    if phase not in PHASE_HU:
        raise ValueError(f"Unknown phase '{phase}'; expected one of {sorted(PHASE_HU)}.")
    hu = dict(PHASE_HU[phase])
    normal_liver = hu["liver"]  # lesions keep their own attenuation: what they have in a normal liver
    if liver_hu is not None:  # steatosis (e.g. 10 HU, darker than the spleen) or any other attenuation
        hu["liver"] = float(liver_hu)
    rng = np.random.default_rng(seed)
    half = (shape[0] - 1) / 2.0 * spacing[0]
    anatomical = z_centre_mm is not None or half > STANDARD_HALF_LENGTH_MM + 2.5
    if anatomical:
        zmax = STANDARD_HALF_LENGTH_MM  # the layout in mm, whatever the FOV's length
        if z_centre_mm is None:
            z_centre_mm = STANDARD_HALF_LENGTH_MM + 0.3 * 2.0 * (half - STANDARD_HALF_LENGTH_MM) - half
    else:
        zmax, z_centre_mm = half, 0.0  # the layout fitted to the FOV's length
    zz, yy, xx, origin = _grid(shape, spacing, z_centre_mm)
    # body_scale < 1 is a smaller patient (a child): every structure shrinks about the FOV's centre
    zz, yy, xx = zz / body_scale, yy / body_scale, xx / body_scale
    full = np.ones(shape, dtype=bool)

    body = _ellipsoid(zz, yy, xx, (0, 0, 0), (150, 110, 1e6)) & full
    inner = _ellipsoid(zz, yy, xx, (0, 0, 0), (138, 98, 1e6)) & full  # inside the fat/muscle wall
    spine = _cylinder(zz, yy, xx, (0, 70), (18, 16), (-1e6, 1e6)) & full
    aorta = _cylinder(zz, yy, xx, (18, 45), (11, 11), (-1e6, 1e6)) & full
    # lungs in the upper part of the volume; the right lung base sits on the liver dome
    lung_base = 0.15 * zmax
    lung_r = _ellipsoid(zz, yy, xx, (-70, 5, zmax + 40), (55, 75, 130)) & (zz >= lung_base)
    lung_l = _ellipsoid(zz, yy, xx, (70, 5, zmax + 30), (55, 75, 130)) & (zz >= lung_base + 10)
    carina_z = lung_base + 140.0 if anatomical else zmax - 0.25 * zmax
    trachea = _cylinder(zz, yy, xx, (0, -25), (9, 9), (carina_z, 1e6)) & full
    bronchus_r = _cylinder(zz, yy, xx, (-20, -20), (6, 6), (carina_z - 30, carina_z + 2)) & full
    bronchus_l = _cylinder(zz, yy, xx, (20, -20), (6, 6), (carina_z - 30, carina_z + 2)) & full
    airways = (trachea | bronchus_r | bronchus_l) & inner
    liver = (
        _ellipsoid(zz, yy, xx, (-55, -5, -0.15 * zmax), (85, 70, 0.6 * zmax + 25))
        | _ellipsoid(zz, yy, xx, (5, -35, -0.1 * zmax), (50, 35, 0.45 * zmax + 15))
    ) & inner
    liver &= ~spine & ~aorta  # the liver dome pushes the right lung base up (lung = lung minus liver)
    vena = np.zeros(shape, dtype=bool)
    if ivc:  # behind the caudate lobe, in the liver's bare area; the liver wraps round it, it is not liver
        bottom = -190.0 if anatomical else -1e6
        vena = _cylinder(zz, yy, xx, (-16, 40), (10, 8), (bottom, lung_base + 20.0)) & inner & ~spine
        liver &= ~vena
    lung_r &= inner & ~liver & ~vena
    lung_l &= inner
    spleen = _ellipsoid(zz, yy, xx, (95, 40, -0.1 * zmax), (30, 45, 0.35 * zmax + 10)) & inner & ~lung_l
    kidney_r = _ellipsoid(zz, yy, xx, (-60, 60, -0.75 * zmax), (25, 28, 0.3 * zmax + 8)) & inner
    kidney_l = _ellipsoid(zz, yy, xx, (65, 60, -0.7 * zmax), (25, 28, 0.3 * zmax + 8)) & inner
    kidney_r &= ~liver
    # the medulla: the kidney's inner part, under 7 mm of cortex everywhere (also where the liver cuts it)
    kidneys = kidney_r | kidney_l
    medulla = ndimage.distance_transform_edt(kidneys, sampling=spacing) > 7.0 * body_scale
    gall = np.zeros(shape, dtype=bool)
    if gallbladder:  # a pear-shaped sac in its fossa under the liver, its fundus bulging below the liver
        gall = _gallbladder(zz, yy, xx, zmax) & inner
        liver &= ~gall
    portal = (
        _cylinder(zz, yy, xx, (-30, 0), (7, 7), (-0.6 * zmax, 0.1 * zmax))
        | _cylinder(zz, yy, xx, (-70, -10), (4, 4), (-0.5 * zmax, 0.25 * zmax))
    ) & liver
    tree = np.zeros(shape, dtype=bool)
    if hepatic_vessels:
        for a, b, radius in _hepatic_tree(zmax):
            tree |= _capsule(zz, yy, xx, a, b, radius)
        tree &= liver
        portal |= tree
    gastric = lumen_g = gas_g = np.zeros(shape, dtype=bool)
    if stomach is not None:
        if stomach not in STOMACH_CONTENTS_HU:
            raise ValueError(f"Unknown stomach '{stomach}'; expected one of {sorted(STOMACH_CONTENTS_HU)}.")
        centre = (62.0, -40.0, -0.05 * zmax)
        radii = (20.0, 13.0, 0.2 * zmax + 5) if stomach == "empty" else (32.0, 27.0, 0.25 * zmax + 5)
        gastric = _ellipsoid(zz, yy, xx, centre, radii) & inner
        gastric &= ~(liver | spleen | kidney_l | kidney_r | aorta | spine | vena | gall | lung_l | lung_r)
        wall_mm = 9.0 if stomach == "empty" else 4.0
        lumen_g = ndimage.distance_transform_edt(gastric, sampling=spacing) > wall_mm * body_scale
        if stomach == "gas-fluid":  # gas floats in front of a horizontal level (supine)
            gas_g = lumen_g & np.broadcast_to(yy < centre[1] - 6.0, shape)
    # ribs: small bony ellipses along the wall on every slice (down to the kidneys' level)
    ribs = np.zeros(shape, dtype=bool)
    rib_bottom = -130.0 if anatomical else -1e6
    for angle in np.deg2rad([200, 220, 240, 300, 320, 340, 25, 155]):
        cx, cy = 140 * np.cos(angle), 102 * np.sin(angle)
        ribs |= _cylinder(zz, yy, xx, (cx, cy), (7, 5), (rib_bottom, 1e6)) & full
    ribs &= body
    heart = psoas = bowel = lumen = gas = bladder = pelvis = np.zeros(shape, dtype=bool)
    if anatomical:  # what lies above and below the standard layout
        organs_so_far = liver | spleen | kidney_r | kidney_l | aorta | spine | gall | vena
        heart = _ellipsoid(zz, yy, xx, (25, -35, lung_base + 75), (62, 50, 62)) & inner & ~organs_so_far
        heart &= zz >= lung_base + 8  # it sits on the diaphragm, above the liver's left lobe
        lung_r &= ~(heart | aorta | spine)
        lung_l &= ~(heart | aorta | spine)
        # psoas: from the kidneys' upper poles down, thickening towards the pelvis
        radius = np.clip(8.0 + 0.12 * (-40.0 - zz), 0.0, 26.0)
        for side in (-1.0, 1.0):
            column = ((xx - side * 45) ** 2 + (yy - 58) ** 2) <= radius**2
            psoas = psoas | (column & (zz < -40) & (zz > -250))
        psoas &= inner & ~(organs_so_far | spleen)  # behind the liver's bare area, below the crura
        # colon (ascending, transverse below the liver's tip, descending) and small-bowel loops
        segments = [
            ((-95.0, -5.0, -215.0), (-95.0, -5.0, -115.0), 22.0),
            ((-95.0, -40.0, -118.0), (95.0, -40.0, -118.0), 20.0),
            ((100.0, 10.0, -115.0), (100.0, 10.0, -225.0), 20.0),
            ((-45.0, -60.0, -150.0), (40.0, -45.0, -160.0), 13.0),
            ((40.0, -45.0, -175.0), (-40.0, -55.0, -185.0), 13.0),
            ((-40.0, -30.0, -205.0), (45.0, -40.0, -205.0), 13.0),
        ]
        for i, (a, b, r) in enumerate(segments):
            tube = _capsule(zz, yy, xx, a, b, r)
            bowel = bowel | tube
            inside = _capsule(zz, yy, xx, a, b, r - 3.0)
            lumen = lumen | inside
            if i < 3:  # colon: gas floats in front (the patient lies supine)
                gas = gas | (inside & (yy < 0.5 * (a[1] + b[1])))
        keep = inner & ~(organs_so_far | psoas)
        bowel, lumen, gas = bowel & keep, lumen & keep, gas & keep
        bladder = _ellipsoid(zz, yy, xx, (0, -45, -268), (50, 35, 32)) & inner
        # pelvis: iliac wings, sacrum, femoral heads
        ax = np.abs(xx)
        wing = (ax > 65) & (ax < 125) & (np.abs(yy - (45 - 0.7 * (ax - 65))) < 5) & (zz > -245) & (zz < -150)
        sacrum = _cylinder(zz, yy, xx, (0, 78), (42, 18), (-265, -175))
        heads = _ellipsoid(zz, yy, xx, (-95, 15, -275), (24,) * 3)
        heads = heads | _ellipsoid(zz, yy, xx, (95, 15, -275), (24,) * 3)
        pelvis = (wing | sacrum | heads) & inner
        bowel &= ~(bladder | pelvis)
        lumen &= bowel
        gas &= bowel

    clean = np.full(shape, -1000.0, dtype=np.float32)
    clean[body] = -100.0  # subcutaneous fat
    clean[inner] = hu["muscle"] - 20  # generic soft tissue / bowel
    if fat_planes:  # as in patients: a muscle wall, fat behind the peritoneum and around every organ
        inside_wall = _ellipsoid(zz, yy, xx, (0, 0, 0), (126, 86, 1e6)) & full
        clean[inner & ~inside_wall] = hu["muscle"]
        organs = liver | spleen | kidney_r | kidney_l | aorta | spine | heart | psoas | bowel | bladder | vena
        organs = organs | gastric
        around = ndimage.distance_transform_edt(~organs, sampling=spacing) <= 6.0
        retro = (yy > 25.0) & full
        clean[inside_wall & (around | retro) & ~organs] = -90.0
    clean[gall] = GALLBLADDER_HU
    clean[lung_r | lung_l] = -850.0
    clean[airways] = -1000.0
    clean[liver] = hu["liver"]
    clean[spleen] = hu["spleen"]
    clean[kidney_r | kidney_l] = hu["kidney"]
    clean[medulla] = MEDULLA_HU[phase]
    clean[portal] = hu["portal-vein"]
    clean[aorta] = hu["aorta"]
    if ivc:
        below, above = IVC_HU[phase]
        renal_z = -0.72 * zmax  # the renal veins' level
        clean[vena] = np.where(np.broadcast_to(zz < renal_z, shape)[vena], below, above)
    clean[heart] = BLOOD_HU[phase]
    clean[psoas] = hu["muscle"]
    clean[bowel] = BOWEL_WALL_HU[phase]
    clean[lumen] = 15.0
    clean[gas] = -1000.0
    clean[bladder] = 10.0
    if stomach is not None:
        clean[gastric] = BOWEL_WALL_HU[phase]
        clean[lumen_g] = STOMACH_CONTENTS_HU[stomach]
        clean[gas_g] = -1000.0
    clean[spine | ribs | pelvis] = 650.0

    lesion_labels = np.zeros(shape, dtype=np.int16)
    truths: list[LesionTruth] = []
    if lesions:
        candidates = [
            ((-70.0, -20.0, -0.15 * zmax), 25.0, "hypo"),
            ((-30.0, 25.0, -0.35 * zmax), 16.0, "hyper"),
            ((-95.0, 10.0, 0.05 * zmax), 12.0, "hypo"),
            ((-40.0, -45.0, 0.15 * zmax), 10.0, "hyper"),
            ((-60.0, 35.0, -0.5 * zmax), 8.0, "hypo"),
        ]
        clearance = ndimage.distance_transform_edt(~tree, sampling=spacing) > 4.0 if hepatic_vessels else True
        if subcapsular:  # a 30 mm hypodense lesion at the anterior surface, bulging it by ~10 mm
            candidates.insert(0, ((-55.0, -68.0, -0.15 * zmax), 30.0, "hypo"))
        for i, (centre, diameter, kind) in enumerate(candidates):
            sphere = _ellipsoid(zz, yy, xx, centre, (diameter / 2,) * 3)
            if subcapsular and i == 0:  # it bulges out of the liver: the liver's truth includes it
                sphere &= inner & ~(spine | aorta | spleen | kidney_r | kidney_l)
                liver |= sphere
            sphere &= liver & ~portal
            if not sphere.any() or not np.all(clearance | ~sphere):
                continue
            label = len(truths) + 1
            lesion_labels[sphere] = label
            value = normal_liver + (-45.0 if kind == "hypo" else 50.0)
            if abs(value - hu["liver"]) < 40.0:  # isodense in this liver (a 30 HU arterial metastasis in a
                value = hu["liver"] + (-45.0 if kind == "hypo" else 50.0)  # 10 HU one): the matrix tests
            clean[sphere] = value  # detection, not visibility: it keeps the normal liver's contrast
            scaled = tuple(c * body_scale for c in centre)
            seen_as = "hypo" if value < hu["liver"] else "hyper"  # a fatty liver turns a hypodense lesion
            truths.append(LesionTruth(label, scaled, diameter * body_scale, seen_as))  # type: ignore[arg-type]

    metal_mask = np.zeros(shape, dtype=bool)
    if metal:
        metal_mask = _cylinder(zz, yy, xx, (-40, 60), (7, 7), (-0.6 * zmax, 0.6 * zmax)) & inner
        clean[metal_mask] = 3000.0

    image = _finish(clean, spacing, noise_sd, rng)
    if metal:
        image = _add_metal_streaks(image, metal_mask, spacing[1], rng)
        image[metal_mask] = clean[metal_mask] + rng.normal(0, noise_sd, int(metal_mask.sum()))

    masks = {
        "body": body,
        "liver": liver,
        "spleen": spleen,
        "kidney-right": kidney_r,
        "kidney-left": kidney_l,
        "lung-right": lung_r & ~airways,
        "lung-left": lung_l & ~airways,
        "lungs": (lung_r | lung_l) & ~airways,
        "airways": airways,
        "aorta": aorta,
        "ivc": vena,
        "portal-vein": portal,
        "vessels": aorta | portal,
        "hepatic-vessels": tree,
        "spine": spine,
        "ribs": ribs,
        "heart": heart,
        "psoas": psoas,
        "bowel": bowel,
        "bladder": bladder,
        "pelvis": pelvis,
        "lesions": lesion_labels > 0,
        "metal": metal_mask,
        "gallbladder": gall,
        "stomach": gastric,
    }
    return Phantom(
        image=image,
        clean=clean,
        masks=masks,
        spacing=tuple(float(s) for s in spacing),
        origin=origin,
        modality="CT",
        phase=phase,
        lesions=tuple(truths),
        lesion_labels=lesion_labels,
    )


def _add_metal_streaks(
    image: np.ndarray, metal: np.ndarray, pixel_mm: float, rng: np.random.Generator
) -> np.ndarray:
    """Physically motivated streaks: photon starvation/beam hardening along the metal trace, FBP."""
    from skimage.transform import iradon, radon

    out = image.copy()
    ny, nx = image.shape[1:]
    size = max(ny, nx)
    theta = np.linspace(0.0, 180.0, max(180, size), endpoint=False)
    mu_water = 0.02 * pixel_mm  # attenuation per pixel of water (1/mm × mm)
    for k in np.flatnonzero(metal.any(axis=(1, 2))):
        sl = np.zeros((size, size), dtype=np.float64)
        sl[:ny, :nx] = np.clip(image[k] + 1000.0, 0, None) / 1000.0 * mu_water
        sino = radon(sl, theta=theta, circle=False)
        metal_sl = np.zeros((size, size))
        metal_sl[:ny, :nx] = metal[k]
        trace = radon(metal_sl, theta=theta, circle=False)
        # beam hardening (line integrals through metal saturate) and photon starvation noise
        hardening = 1.5 * np.square(trace * mu_water * 3.0)
        starvation = rng.normal(0.0, 1.0, size=sino.shape) * 0.15 * np.sqrt(hardening)
        corrupted = sino - hardening + starvation
        recon = iradon(corrupted, theta=theta, circle=False, filter_name="ramp", output_size=size)
        recon_clean = iradon(sino, theta=theta, circle=False, filter_name="ramp", output_size=size)
        streaks = (recon - recon_clean)[:ny, :nx] / mu_water * 1000.0
        out[k] = image[k] + streaks.astype(np.float32)
    return out


def make_mr_head_phantom(
    shape: tuple[int, int, int] = (48, 96, 96),
    spacing: tuple[float, float, float] = (3.0, 2.5, 2.5),
    noise_sd: float = 0.02,
    bias: float = 0.2,
    seed: int = 0,
) -> Phantom:
    """A T1-like head: bright scalp fat, dark skull, dark CSF rim and ventricles, GM/WM brain."""
    rng = np.random.default_rng(seed)
    zz, yy, xx, origin = _grid(shape, spacing)
    full = np.ones(shape, dtype=bool)
    c = (0.0, 0.0, -10.0)
    head = _ellipsoid(zz, yy, xx, c, (78, 95, 85)) & full
    skull_outer = _ellipsoid(zz, yy, xx, c, (72, 89, 79)) & full
    csf_outer = _ellipsoid(zz, yy, xx, c, (66, 83, 73)) & full
    brain = _ellipsoid(zz, yy, xx, c, (63, 80, 70)) & full
    wm = _ellipsoid(zz, yy, xx, c, (50, 66, 56)) & full
    ventricles = (
        _ellipsoid(zz, yy, xx, (-9, -5, c[2] + 5), (5, 22, 10))
        | _ellipsoid(zz, yy, xx, (9, -5, c[2] + 5), (5, 22, 10))
    ) & full
    clean = np.zeros(shape, dtype=np.float32)
    clean[head] = 0.85  # scalp fat
    clean[skull_outer] = 0.08  # cortical bone
    clean[csf_outer] = 0.18  # CSF
    clean[brain] = 0.55  # grey matter
    clean[wm] = 0.75  # white matter
    clean[ventricles] = 0.18
    zn = (zz - zz.min()) / max(1e-6, float(np.ptp(zz)))
    field_ = (1.0 + bias * (zn - 0.5) + 0.0 * yy + 0.0 * xx).astype(np.float32)
    image = _finish(clean * field_, spacing, noise_sd, rng)
    image = np.abs(image)  # magnitude images
    masks = {
        "head": head,
        "scalp": head & ~skull_outer,
        "skull": skull_outer & ~csf_outer,
        "csf": (csf_outer & ~brain) | ventricles,
        "brain": brain,
        "ventricles": ventricles,
    }
    return Phantom(image=image, clean=clean, masks=masks, spacing=tuple(float(s) for s in spacing),
                   origin=origin, modality="MR")


def write_dicom_series(
    phantom: Phantom,
    out_dir: Path | str,
    *,
    modality: str | None = None,
    shuffle_instance_numbers: bool = False,
    tilt_deg: float = 0.0,
    drop_slices: tuple[int, ...] = (),
    duplicate_slice: int | None = None,
    slope: float = 1.0,
    intercept: float = -1024.0,
    unsigned: bool = False,
    series_uid: str | None = None,
    study_uid: str | None = None,
    seed: int = 0,
) -> list[Path]:
    """Write ``phantom.image`` as a single-frame DICOM series (CT or MR Image Storage) into ``out_dir``."""
    from pydicom import Dataset
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    modality = modality or phantom.modality
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    sop_class = "1.2.840.10008.5.1.4.1.1.2" if modality == "CT" else "1.2.840.10008.5.1.4.1.1.4"
    study_uid = study_uid or generate_uid()
    series_uid = series_uid or generate_uid()
    frame_uid = generate_uid()
    sz, sy, sx = phantom.spacing
    nz = phantom.image.shape[0]
    rng = np.random.default_rng(seed)
    order = rng.permutation(nz) if shuffle_instance_numbers else np.arange(nz)
    if modality != "CT":
        slope, intercept = (1.0 / 4000.0, 0.0)
        unsigned = True
    tilt = np.deg2rad(tilt_deg)
    paths: list[Path] = []
    indices = [k for k in range(nz) if k not in drop_slices]
    if duplicate_slice is not None:
        indices.append(duplicate_slice)
    for n, k in enumerate(indices):
        stored = np.round((phantom.image[k] - intercept) / slope)
        lo, hi = (0, 65535) if unsigned else (-32768, 32767)
        stored = np.clip(stored, lo, hi).astype(np.uint16 if unsigned else np.int16)
        ds = Dataset()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.MediaStorageSOPClassUID = sop_class
        ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.SOPClassUID = sop_class
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID
        ds.StudyInstanceUID = study_uid
        ds.SeriesInstanceUID = series_uid
        ds.FrameOfReferenceUID = frame_uid
        ds.Modality = modality
        ds.PatientName = "Phantom^Test"
        ds.PatientID = "PHANTOM1"
        ds.PatientBirthDate = ""
        ds.PatientSex = "O"
        ds.StudyDate = "20240101"
        ds.StudyTime = "120000"
        ds.AccessionNumber = "ACC1"
        ds.ReferringPhysicianName = ""
        ds.StudyID = "1"
        ds.SeriesNumber = 1
        ds.Manufacturer = "dicomnode-phantom"
        ds.InstanceNumber = int(order[k]) + 1
        # gantry tilt: the image plane tilts about x while the table still moves along z
        ds.ImageOrientationPatient = [1, 0, 0, 0, float(np.cos(tilt)), float(np.sin(tilt))]
        ds.ImagePositionPatient = [phantom.origin[0], phantom.origin[1], phantom.origin[2] + k * sz]
        ds.PixelSpacing = [sy, sx]
        ds.SliceThickness = sz
        ds.GantryDetectorTilt = tilt_deg
        ds.PatientPosition = "HFS"
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.Rows, ds.Columns = stored.shape
        ds.BitsAllocated = 16
        ds.BitsStored = 16
        ds.HighBit = 15
        ds.PixelRepresentation = 0 if unsigned else 1
        ds.RescaleIntercept = intercept
        ds.RescaleSlope = slope
        ds.RescaleType = "HU" if modality == "CT" else "US"
        if modality == "CT" and phantom.phase in ("arterial", "portal"):
            ds.ContrastBolusAgent = "IODINE"
        ds.PixelData = stored.tobytes()
        path = out / f"IMG{n:04d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths
