"""Looks: the visual variety of a real scene, drawn from the episode seed, never touching the physics.

A *look* is the lighting (key-light direction, intensity, colour temperature and tint, ambient, fill and headlight),
the paint of the table, floor and task objects (colour, texture, texture scale, shine), small pose offsets of the
cameras, and one visual-only distractor standing on the table away from the work. Looks come in two splits drawn
from disjoint sets (:data:`SPLITS`): a policy trained on ``train`` looks is tested on ``heldout`` ones it has never
seen (other hues, texture kinds, key-light sector and distractor shapes).

How it reaches the renders: :class:`SceneLooks` adds a bank of textures and materials and the distractor geoms to
the scene when it is built; at every reset it edits only visual fields of the compiled model (``light_*``,
``geom_rgba``, ``geom_matid``, ``mat_*``, ``cam_pos`` / ``cam_quat``, the distractor's pose, size and colour). A
renderer reads those each frame, so nothing is re-uploaded. The distractor never collides (contype = conaffinity
= 0, on a body of its own without joints) and the looks draw from their own random stream, so the physics and
every non-image observation of an episode are bit-identical with looks on or off.

    python -m sim.looks [task=wipe] [split=train] [seed=0] [n=8] [out=outputs/looks]   # a contact sheet
"""

from __future__ import annotations

import colorsys
import json
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import mujoco
import numpy as np

from bus.cli import UsageError, choose, command
from bus.config import compose
from sim.tasks.base import geom_id, place_geom, resize_geom

if TYPE_CHECKING:
    from sim.tasks.base import Task

SPLITS = ("train", "heldout")
LOOKS = ("none", *SPLITS)  # the ``looks`` option: none keeps the scene's one fixed look
KEY_LIGHT = "key_light"  # the scene's light names (sim.env builds them)
FILL_LIGHT = "fill_light"
KEY_TARGET = np.array([0.55, 0.0, 0.1])  # the key light is aimed here, from KEY_DISTANCE away
KEY_DISTANCE = 2.0
LOOKS_STREAM = 0x100C5  # the looks' random stream is seeded by (LOOKS_STREAM, episode seed), apart from the physics'
TEXTURE_PX = 128
TEXTURE_SEED = 7  # the texture bank is part of the scene: the same images in every process
HUE_BAND = 30.0  # degrees; the hue circle is cut into 12 bands, each belonging to one split


@dataclass(frozen=True)
class SplitSpace:
    """What one split draws from; the two splits' hue bands, key-light sectors and distractor shapes are
    disjoint, and the held-out textures other than plain are never drawn in train."""

    hue_bands: tuple[int, ...]  # indices of HUE_BAND-wide bands, from hue 0
    textures: tuple[str, ...]
    key_azimuth: tuple[float, float]  # degrees, [lo, hi) (hi may pass 360): where the key light comes from
    shapes: tuple[str, ...]  # distractor shapes


HELDOUT_HUE_BANDS = (1, 5, 9)  # 30-60 (amber), 150-180 (spring green), 270-300 (violet)
SPACES = {
    "train": SplitSpace(
        hue_bands=tuple(b for b in range(12) if b not in HELDOUT_HUE_BANDS),
        textures=("plain", "checker", "stripes", "grain"),
        key_azimuth=(-135.0, 135.0),  # from the front and the sides
        shapes=("box", "sphere", "cylinder"),
    ),
    "heldout": SplitSpace(
        hue_bands=HELDOUT_HUE_BANDS,
        textures=("plain", "dots", "marble"),
        key_azimuth=(135.0, 225.0),  # from behind the robots, against the scene camera
        shapes=("capsule", "ellipsoid"),
    ),
}
TEXTURES = ("checker", "stripes", "grain", "dots", "marble")  # "plain" is a material without a texture


@dataclass(frozen=True)
class PaintRange:
    """Saturation, value and texture scale (repeats per metre) of one role's paint."""

    saturation: tuple[float, float]
    value: tuple[float, float]
    texrepeat: tuple[float, float]


ROLES = {  # the parts a task's geoms may play (Task.look_geoms), and the distractor's paint
    "floor": PaintRange((0.0, 0.3), (0.2, 0.55), (2.0, 5.0)),
    "table": PaintRange((0.1, 0.55), (0.3, 0.75), (3.0, 8.0)),
    "object": PaintRange((0.3, 0.85), (0.45, 0.95), (8.0, 20.0)),
    "distractor": PaintRange((0.5, 1.0), (0.4, 1.0), (20.0, 40.0)),
}
TASK_ROLES = ("floor", "table", "object")
SHAPES = {
    "box": mujoco.mjtGeom.mjGEOM_BOX,
    "sphere": mujoco.mjtGeom.mjGEOM_SPHERE,
    "cylinder": mujoco.mjtGeom.mjGEOM_CYLINDER,
    "capsule": mujoco.mjtGeom.mjGEOM_CAPSULE,
    "ellipsoid": mujoco.mjtGeom.mjGEOM_ELLIPSOID,
}
DISTRACTOR_BODY = "look_distractor"


@dataclass(frozen=True)
class CameraJitter:
    """How far a camera may move from its nominal pose each episode: a shift (m, uniform in a ball) and a tilt
    (degrees, about a uniformly random axis). A camera aimed at a body (the wrist cameras) takes no tilt."""

    shift: float
    tilt: float


SCENE_CAMERA_JITTER = CameraJitter(shift=0.015, tilt=2.5)
WRIST_CAMERA_JITTER = CameraJitter(shift=0.005, tilt=0.0)


# ------------------------------------------------------------------------------------------------ a look
@dataclass(frozen=True)
class Paint:
    hue: float  # degrees [0, 360)
    saturation: float
    value: float
    texture: str  # "plain" or one of TEXTURES
    texrepeat: float  # texture tiles per metre
    specular: float
    shininess: float

    @property
    def rgba(self) -> np.ndarray:
        return np.array([*colorsys.hsv_to_rgb(self.hue / 360.0, self.saturation, self.value), 1.0])


@dataclass(frozen=True)
class Lighting:
    azimuth: float  # degrees [0, 360): the key light's direction of arrival, about world z from +x
    elevation: float  # degrees above the horizon
    kelvin: float  # colour temperature of every light
    tint: float  # green (+) / magenta (-) shift
    key: float  # key light's diffuse intensity
    specular: float
    ambient: float
    fill: float  # the fill light's diffuse intensity
    headlight: float  # the camera headlight's diffuse intensity

    @property
    def colour(self) -> np.ndarray:
        rgb = kelvin_to_rgb(self.kelvin) * np.array([1.0, 1.0 + self.tint, 1.0])
        return rgb / rgb.max()

    @property
    def direction(self) -> np.ndarray:
        """Unit vector from the scene towards the key light."""
        az, el = np.deg2rad(self.azimuth), np.deg2rad(self.elevation)
        return np.array([np.cos(el) * np.cos(az), np.cos(el) * np.sin(az), np.sin(el)])


@dataclass(frozen=True)
class CameraOffset:
    shift: tuple[float, ...]  # (3,) m, in the camera's parent frame
    rotvec: tuple[float, ...]  # (3,) rad, in the camera's own frame


@dataclass(frozen=True)
class Distractor:
    shape: str
    paint: Paint
    size: tuple[float, ...]  # (3,) MuJoCo geom size of that shape
    pos: tuple[float, ...]  # (3,) m, world
    yaw: float  # rad


@dataclass(frozen=True)
class Look:
    split: str
    lighting: Lighting
    paints: Mapping[str, Paint]  # role -> paint
    cameras: Mapping[str, CameraOffset]  # camera name -> offset
    distractor: Distractor | None


def kelvin_to_rgb(kelvin: float) -> np.ndarray:
    """(3,) linear-ish RGB in [0, 1] of a black body at ``kelvin`` (Tanner Helland's fit, 1000-40000 K)."""
    t = kelvin / 100.0
    r = 255.0 if t <= 66 else 329.698727446 * (t - 60) ** -0.1332047592
    g = 99.4708025861 * np.log(t) - 161.1195681661 if t <= 66 else 288.1221695283 * (t - 60) ** -0.0755148492
    b = 255.0 if t >= 66 else (0.0 if t <= 19 else 138.5177312231 * np.log(t - 10) - 305.0447927307)
    return np.clip(np.array([r, g, b]), 0.0, 255.0) / 255.0


# ------------------------------------------------------------------------------------------------ sampling
def sample_look(
    rng: np.random.Generator,
    split: str,
    roles: Sequence[str],
    cameras: Mapping[str, CameraJitter],
    spots: Sequence[tuple[float, float, float, float, float]],
) -> Look:
    """One look of ``split``: paints for ``roles`` (keys of ROLES), offsets for ``cameras``, and a distractor on
    one of ``spots`` ((x0, x1, y0, y1, z of the supporting surface); none without spots)."""
    space = SPACES[choose("split", split, SPLITS, "looks split")]
    lighting = Lighting(
        azimuth=float(rng.uniform(*space.key_azimuth)) % 360.0,
        elevation=float(rng.uniform(35.0, 80.0)),
        kelvin=float(rng.uniform(3200.0, 7500.0)),
        tint=float(rng.uniform(-0.05, 0.05)),
        key=float(rng.uniform(0.45, 0.9)),
        specular=float(rng.uniform(0.1, 0.4)),
        ambient=float(rng.uniform(0.0, 0.15)),
        fill=float(rng.uniform(0.1, 0.45)),
        headlight=float(rng.uniform(0.15, 0.45)),
    )
    paints = {role: _paint(rng, space, ROLES[role]) for role in roles}
    offsets = {name: _camera_offset(rng, jitter) for name, jitter in cameras.items()}
    distractor = _distractor(rng, space, spots) if spots else None
    return Look(split, lighting, paints, offsets, distractor)


def _paint(rng: np.random.Generator, space: SplitSpace, r: PaintRange) -> Paint:
    band = space.hue_bands[int(rng.integers(len(space.hue_bands)))]
    return Paint(
        hue=float((band + rng.uniform(0.0, 1.0)) * HUE_BAND) % 360.0,
        saturation=float(rng.uniform(*r.saturation)),
        value=float(rng.uniform(*r.value)),
        texture=space.textures[int(rng.integers(len(space.textures)))],
        texrepeat=float(rng.uniform(*r.texrepeat)),
        specular=float(rng.uniform(0.05, 0.5)),
        shininess=float(rng.uniform(0.05, 0.6)),
    )


def _camera_offset(rng: np.random.Generator, jitter: CameraJitter) -> CameraOffset:
    shift = _unit(rng) * jitter.shift * rng.uniform() ** (1 / 3)  # uniform in the ball
    rotvec = _unit(rng) * np.deg2rad(jitter.tilt) * rng.uniform()
    return CameraOffset(tuple(float(v) for v in shift), tuple(float(v) for v in rotvec))


def _unit(rng: np.random.Generator) -> np.ndarray:
    v = rng.normal(size=3)
    return v / np.linalg.norm(v)


def _distractor(
    rng: np.random.Generator, space: SplitSpace, spots: Sequence[tuple[float, float, float, float, float]]
) -> Distractor:
    shape = space.shapes[int(rng.integers(len(space.shapes)))]
    paint = _paint(rng, space, ROLES["distractor"])
    if shape in ("box", "ellipsoid"):
        size = rng.uniform(0.015, 0.035, 3)
        height = size[2]
    elif shape == "sphere":
        size = np.array([rng.uniform(0.015, 0.035), 0.0, 0.0])
        height = size[0]
    elif shape == "cylinder":  # upright
        size = np.array([rng.uniform(0.012, 0.03), rng.uniform(0.015, 0.045), 0.0])
        height = size[1]
    else:  # capsule, lying on its side
        size = np.array([rng.uniform(0.012, 0.025), rng.uniform(0.01, 0.03), 0.0])
        height = size[0]
    x0, x1, y0, y1, z = spots[int(rng.integers(len(spots)))]
    pos = (float(rng.uniform(x0, x1)), float(rng.uniform(y0, y1)), float(z + height))
    return Distractor(shape, paint, tuple(float(s) for s in size), pos, float(rng.uniform(-np.pi, np.pi)))


# ------------------------------------------------------------------------------------------------ the scene
class SceneLooks:
    """One split's looks on one scene: ``build`` adds the material bank and the distractor to the spec, ``bind``
    finds them (and the nominal camera poses) in the compiled model, ``reset`` draws the episode's look from its
    seed and writes it into the model. ``current`` is the look on show."""

    def __init__(self, split: str, task: Task, cameras: Mapping[str, CameraJitter]) -> None:
        self.split = choose("looks", split, SPLITS, "looks split")
        self.roles = {role: tuple(names) for role, names in task.look_geoms.items()}
        unknown = sorted(set(self.roles) - set(TASK_ROLES))
        if unknown:
            raise ValueError(f"task {task.name!r} gives geoms the look roles {unknown}; "
                             f"expected some of {', '.join(TASK_ROLES)}")
        self.spots = tuple(task.distractor_spots)
        self.cameras = dict(cameras)
        self._rng = np.random.default_rng()  # episodes reset without a seed continue this stream
        self.current: Look | None = None

    # -- scene
    def build(self, spec: mujoco.MjSpec) -> None:
        for kind in TEXTURES:
            img = texture_image(kind)
            tex = spec.add_texture(name=f"look/{kind}", type=mujoco.mjtTexture.mjTEXTURE_2D,
                                   width=img.shape[1], height=img.shape[0], nchannel=3)
            tex.data = img.tobytes()
        for role in ROLES:
            for kind in ("plain", *TEXTURES):
                mat = spec.add_material(name=f"look/{role}/{kind}", texuniform=True)
                if kind != "plain":
                    mat.textures[mujoco.mjtTextureRole.mjTEXROLE_RGB] = f"look/{kind}"
        # A body of its own, without joints (welded to the world), last in the tree: no body or geom of the scene
        # changes its index, and geoms that never collide add nothing to the physics.
        body = spec.worldbody.add_body(name=DISTRACTOR_BODY)
        for shape, geom_type in SHAPES.items():
            body.add_geom(name=f"{DISTRACTOR_BODY}/{shape}", type=geom_type, size=[0.02, 0.02, 0.02],
                          pos=[0.0, 0.0, -1.0], rgba=[0.5, 0.5, 0.5, 0.0], contype=0, conaffinity=0, mass=0)

    def bind(self, model: mujoco.MjModel) -> None:
        self._geoms = {role: [geom_id(model, n) for n in names] for role, names in self.roles.items()}
        self._mats = {(role, kind): _id(model, mujoco.mjtObj.mjOBJ_MATERIAL, f"look/{role}/{kind}")
                      for role in ROLES for kind in ("plain", *TEXTURES)}
        self._shapes = {shape: geom_id(model, f"{DISTRACTOR_BODY}/{shape}") for shape in SHAPES}
        self._key = _id(model, mujoco.mjtObj.mjOBJ_LIGHT, KEY_LIGHT)
        self._fill = _id(model, mujoco.mjtObj.mjOBJ_LIGHT, FILL_LIGHT)
        self._cams = {name: _id(model, mujoco.mjtObj.mjOBJ_CAMERA, name) for name in self.cameras}
        self._cam_pos0 = {name: model.cam_pos[i].copy() for name, i in self._cams.items()}
        self._cam_quat0 = {name: model.cam_quat[i].copy() for name, i in self._cams.items()}

    # -- episode
    def reset(self, model: mujoco.MjModel, seed: int | None) -> Look:
        """Draw the look of the episode ``seed`` (the same look for the same seed, whatever came before; None:
        the next of this scene's own stream) and write it into ``model``, before the reset's ``mj_forward``."""
        if seed is not None:
            self._rng = np.random.default_rng([LOOKS_STREAM, seed])
        look = sample_look(self._rng, self.split, list(self.roles), self.cameras, self.spots)
        self.apply(model, look)
        self.current = look
        return look

    def apply(self, model: mujoco.MjModel, look: Look) -> None:
        """Write ``look`` into ``model``; every field is set from its nominal value, so nothing drifts."""
        self._apply_lighting(model, look.lighting)
        for role, paint in look.paints.items():
            for g in self._geoms[role]:
                self._paint_geom(model, g, role, paint)
        for name, offset in look.cameras.items():
            self._apply_camera(model, name, offset)
        for g in self._shapes.values():
            model.geom_rgba[g, 3] = 0.0  # hidden (not drawn at all) unless it is the one on show
        d = look.distractor
        if d is not None:
            g = self._shapes[d.shape]
            quat = _yaw_quat(d.yaw)
            if d.shape == "capsule":
                mujoco.mju_mulQuat(quat, quat.copy(), np.array([np.sqrt(0.5), np.sqrt(0.5), 0.0, 0.0]))
            resize_geom(model, g, np.asarray(d.size))
            place_geom(model, g, np.asarray(d.pos), quat)
            self._paint_geom(model, g, "distractor", d.paint)

    def _apply_lighting(self, model: mujoco.MjModel, light: Lighting) -> None:
        colour, u = light.colour, light.direction
        k = self._key
        model.light_pos[k] = KEY_TARGET + KEY_DISTANCE * u
        model.light_dir[k] = -u
        model.light_diffuse[k] = light.key * colour
        model.light_specular[k] = light.specular * colour
        model.light_ambient[k] = light.ambient * colour
        model.light_diffuse[self._fill] = light.fill * colour
        model.vis.headlight.diffuse[:] = light.headlight
        model.vis.headlight.ambient[:] = 0.05 + light.ambient / 2

    def _paint_geom(self, model: mujoco.MjModel, g: int, role: str, paint: Paint) -> None:
        m = self._mats[(role, paint.texture)]
        rgba = paint.rgba
        model.geom_matid[g] = m
        model.geom_rgba[g] = rgba  # the geom's rgba wins over its material's unless it is MuJoCo's default grey:
        model.mat_rgba[m] = rgba  # both hold the colour, so either way it shows
        model.mat_texrepeat[m] = paint.texrepeat
        model.mat_specular[m] = paint.specular
        model.mat_shininess[m] = paint.shininess

    def _apply_camera(self, model: mujoco.MjModel, name: str, offset: CameraOffset) -> None:
        i = self._cams[name]
        model.cam_pos[i] = self._cam_pos0[name] + np.asarray(offset.shift)
        rv = np.asarray(offset.rotvec)
        angle = float(np.linalg.norm(rv))
        tilt = np.array([1.0, 0.0, 0.0, 0.0])
        if angle > 0:
            mujoco.mju_axisAngle2Quat(tilt, rv / angle, angle)
        mujoco.mju_mulQuat(model.cam_quat[i], self._cam_quat0[name], tilt)


def scene_looks(option: str, task: Task, cameras: Mapping[str, CameraJitter]) -> SceneLooks | None:
    """The ``looks`` option of an env: None for ``none`` (the scene keeps its one look), else that split's looks;
    another value raises a UsageError (a ValueError) listing the valid ones."""
    if choose("looks", option, LOOKS) == "none":
        return None
    return SceneLooks(option, task, cameras)


def _id(model: mujoco.MjModel, kind: mujoco.mjtObj, name: str) -> int:
    i = mujoco.mj_name2id(model, kind, name)
    if i < 0:
        raise KeyError(f"{kind.name.removeprefix('mjOBJ_').lower()} {name!r} not in the model")
    return i


def _yaw_quat(yaw: float) -> np.ndarray:
    return np.array([np.cos(yaw / 2), 0.0, 0.0, np.sin(yaw / 2)])


# ------------------------------------------------------------------------------------------------ textures
def texture_image(kind: str, size: int = TEXTURE_PX) -> np.ndarray:
    """(size, size, 3) uint8 grey tile of texture ``kind``, seamless, in ~[0.6, 1] so the paint's colour (which
    multiplies it) dominates."""
    rng = np.random.default_rng([TEXTURE_SEED, TEXTURES.index(kind)])
    y, x = np.mgrid[0:size, 0:size] / size
    if kind == "checker":
        v = np.where((np.floor(2 * x) + np.floor(2 * y)) % 2 == 0, 1.0, 0.72)
    elif kind == "stripes":
        v = 0.86 + 0.14 * np.tanh(4.0 * np.sin(2 * np.pi * 4 * x))
    elif kind == "grain":  # wood: wavy rings along y
        v = 0.84 + 0.12 * np.sin(2 * np.pi * (6 * y + 0.8 * _periodic_noise(rng, size, 3.0))) \
            + 0.04 * _periodic_noise(rng, size, 24.0)
    elif kind == "dots":  # 4 x 4 soft polka dots
        cx, cy = (x * 4) % 1.0 - 0.5, (y * 4) % 1.0 - 0.5
        v = 1.0 - 0.38 * np.clip((0.3 - np.hypot(cx, cy)) / 0.04, 0.0, 1.0)
    elif kind == "marble":  # thin dark veins through a cloudy ground
        veins = 1.0 - np.abs(np.sin(2 * np.pi * (x + y) + 3.0 * _periodic_noise(rng, size, 4.0)))
        v = 0.95 - 0.35 * veins**6 + 0.05 * _periodic_noise(rng, size, 8.0)
    else:
        raise ValueError(f"texture {kind!r}: expected one of {', '.join(TEXTURES)}")
    grey = np.round(np.clip(v, 0.0, 1.0) * 255).astype(np.uint8)
    return np.repeat(grey[:, :, None], 3, axis=2)


def _periodic_noise(rng: np.random.Generator, size: int, cycles: float) -> np.ndarray:
    """(size, size) smooth noise in [-1, 1] that tiles seamlessly: white noise low-passed to ~``cycles`` waves per
    tile (a Gaussian filter in the Fourier domain, periodic by construction)."""
    f = np.fft.fftfreq(size) * size
    fx, fy = np.meshgrid(f, f)
    spectrum = np.fft.fft2(rng.normal(size=(size, size))) * np.exp(-(fx**2 + fy**2) / (2 * cycles**2))
    n = np.real(np.fft.ifft2(spectrum))
    return n / np.abs(n).max()


# ------------------------------------------------------------------------------------------------ contact sheet
SHEET_COLUMNS = 8


@dataclass
class SheetConfig:
    """``configs/sim/looks.yaml``."""

    task: str = "wipe"
    split: str = "train"
    seed: int = 0
    n: int = 8
    size: int = 128
    out: str = "outputs/looks"

    def __post_init__(self) -> None:
        choose("split", self.split, LOOKS, "looks")
        if self.n < 1 or self.seed < 0 or self.size < 16:
            raise UsageError(f"n={self.n} must be >= 1, seed={self.seed} >= 0 and size={self.size} >= 16")


def contact_sheet(task: str, split: str, seeds: Sequence[int], size: int) -> np.ndarray:
    """(rows * 2 size, columns * size, 3) uint8: per seed, the scene camera above the (first) wrist camera, at the
    episode's reset, SHEET_COLUMNS seeds to a row."""
    from sim.registry import make_env

    env = make_env(task, perturb=False, looks=split, render_size=size, image_size=size)
    try:
        tiles = []
        for seed in seeds:
            env.reset(seed=seed)
            views = [env.render_camera(camera, size) for camera in env.camera_names.values()]
            tiles.append(np.concatenate(views, axis=0))
    finally:
        env.close()
    cols = min(len(tiles), SHEET_COLUMNS)
    tiles += [np.zeros_like(tiles[0])] * (-len(tiles) % cols)
    rows = [np.concatenate(tiles[i : i + cols], axis=1) for i in range(0, len(tiles), cols)]
    return np.concatenate(rows, axis=0)


@command("sim.looks")
def main(argv: Sequence[str] | None = None) -> int:
    cfg = compose(SheetConfig, "sim/looks", list(sys.argv[1:] if argv is None else argv), "looks",
                  "task=peel split=heldout n=8")
    from PIL import Image

    seeds = list(range(cfg.seed, cfg.seed + cfg.n))
    sheet = contact_sheet(cfg.task, cfg.split, seeds, cfg.size)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{cfg.task}-{cfg.split}-seed{cfg.seed}-n{cfg.n}.png"
    tmp = path.with_suffix(".tmp.png")
    Image.fromarray(sheet).save(tmp)
    tmp.replace(path)  # whole or not at all
    print(json.dumps({"task": cfg.task, "split": cfg.split, "seeds": seeds, "sheet": str(path)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
