"""The policy features of raw streams: one definition for training data and for the running robot.

Recordings hold raw streams only (poses, wrench, marker fields, images, commands). Everything a policy reads is
computed from them by ``lowdim_features``: when a dataset is loaded for training (``rdp.data``), and on every live
observation (``sim.eval``'s policy, the runtime's slow and fast nodes, ``rdp.inference``). A feature therefore
cannot differ between the data a policy learnt from and what it sees when it runs, and any recording trains, from
whichever recorder it came (``teleop.collect``, ``teleop.record_expert``, a LeRobot import).

Features per step (any leading shape ``...``; ``A`` arms, ``P`` tactile pads):

* ``proprio`` (..., 10 A): per arm tcp position (3), tcp rotation 6-D (6), gripper width (1);
* ``tactile`` (..., 15 P): each pad's marker field (``marker_offset`` (..., P, R, C, 2)) through the PCA
  embedding (``sensors.embedding.TactileEmbedding.encode``);
* ``tactile_load`` (..., 3 P): each pad's load read off its marker field (``TactileEmbedding.pad_load``);
* ``wrench`` (..., 6 A);
* with a ``scene`` stream (the one-shot object localisation at reset): ``scene`` (..., S) and ``proprio_scene``,
  ``proprio`` with each tcp position taken relative to the scene anchor (the scene's first 3 numbers); the same
  for ``scene_seen``, the localisation a perception head read off the camera (``rdp.perception``): ``scene_seen``
  and ``proprio_scene_seen``;
* with a ``goal`` (the episode's goal encoding, ``sim.tasks`` ``Goal.vector``: the env observes it when goals vary,
  a recording keeps it in the episode's metadata as ``goal_vector``): ``goal`` (..., G), as given.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from sensors.embedding import TactileEmbedding
from spatial.rotations import matrix_to_rot6d, quat_to_matrix

# The raw streams the features are computed from (``scene`` is used when present).
FEATURE_STREAMS = ("gripper_width", "marker_offset", "tcp_pos", "tcp_quat", "wrench")
OPTIONAL_FEATURE_STREAMS = ("scene",)
# Scene localisations -> the proprio relative to their anchor: ``scene`` the simulator's own (privileged),
# ``scene_seen`` the perception head's estimate from the episode's first scene-camera frame (rdp.perception).
SCENE_SOURCES = {"scene": "proprio_scene", "scene_seen": "proprio_scene_seen"}


def lowdim_features(raw: Mapping[str, np.ndarray], embedding: TactileEmbedding) -> dict[str, np.ndarray]:
    """Raw per-step arrays ``tcp_pos`` (..., A, 3), ``tcp_quat`` (..., A, 4), ``gripper_width`` (..., A),
    ``marker_offset`` (..., P, R, C, 2), ``wrench`` (..., A, 6) and optionally ``scene`` / ``scene_seen`` (..., S) ->
    {proprio, tactile, tactile_load, wrench[, scene, proprio_scene][, scene_seen, proprio_scene_seen][, goal]}
    (..., Dk) float32 (see the module docstring); a ``goal`` (..., G) is passed through. Other keys of ``raw`` are
    ignored; a missing one raises ``KeyError``, a misshapen one ``ValueError``."""
    pos = np.asarray(raw["tcp_pos"], dtype=np.float64)
    r6 = matrix_to_rot6d(quat_to_matrix(raw["tcp_quat"]))
    grip = np.asarray(raw["gripper_width"], dtype=np.float64)[..., None]
    proprio = np.concatenate([pos, r6, grip], axis=-1)  # (..., A, 10)
    tactile = embedding.encode(raw["marker_offset"])  # (..., P, 15)
    load = embedding.pad_load(tactile)  # (..., P, 3)
    wrench = np.asarray(raw["wrench"])
    out = {
        "proprio": proprio.reshape(*proprio.shape[:-2], -1).astype(np.float32),
        "tactile": tactile.reshape(*tactile.shape[:-2], -1).astype(np.float32),
        "tactile_load": load.reshape(*load.shape[:-2], -1).astype(np.float32),
        "wrench": wrench.reshape(*wrench.shape[:-2], -1).astype(np.float32),
    }
    for key in SCENE_SOURCES:
        if key in raw:
            scene = np.asarray(raw[key], dtype=np.float32)
            if scene.shape[-1] < 3 or scene.shape[:-1] != proprio.shape[:-2]:
                raise ValueError(f"{key} {scene.shape}: expected (..., S >= 3) with the leading shape of tcp_pos "
                                 f"{pos.shape[:-2]}")
            out[key] = scene
            rel = proprio.copy()
            rel[..., :3] -= scene[..., None, :3]  # every arm's TCP relative to the scene anchor
            out[SCENE_SOURCES[key]] = rel.reshape(*rel.shape[:-2], -1).astype(np.float32)
    if "goal" in raw:
        goal = np.asarray(raw["goal"], dtype=np.float32)
        if goal.ndim < 1 or goal.shape[:-1] != proprio.shape[:-2]:
            raise ValueError(f"goal {goal.shape}: expected (..., G) with the leading shape of tcp_pos {pos.shape[:-2]}")
        out["goal"] = goal
    return out
