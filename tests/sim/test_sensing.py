import numpy as np

import sim
from sim.experts import make_expert


def _run_until_traverse(task: str, seed: int):
    env = sim.make_env(task, perturb=False)
    obs, _ = env.reset(seed=seed)
    pol = make_expert(task)
    pol.reset(env)
    while pol.phase != "traverse":
        obs, *_ = env.step(pol.act(obs))
    return env, pol, obs


def _cos(a: np.ndarray, b: np.ndarray) -> float:
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b) + 1e-12))


def test_friction_on_the_pad_follows_the_surface_sliding_over_it():
    """While the sponge slides, the surface drags the gel along: the shear the wrist feels and the
    mean marker displacement both point along the sensed slip of the surface over the pad."""
    env, pol, obs = _run_until_traverse("wipe", seed=0)
    pad = env.pad_names.index("arm/tool")
    cos_markers, cos_wrench, sliding = [], [], 0
    for _ in range(80):
        obs, *_ = env.step(pol.act(obs))
        slip = obs["marker_slip"][pad].astype(float)
        if np.linalg.norm(slip) < 0.005 or obs["marker_depth"][pad].max() <= 0:
            continue
        sliding += 1
        cos_markers.append(_cos(obs["marker_offset"][pad].reshape(-1, 2).mean(axis=0), slip))
        cos_wrench.append(_cos(obs["wrench"][0][:2].astype(float), slip))  # tool pad frame == TCP frame
    assert sliding > 30
    assert np.median(cos_markers) > 0.8, np.median(cos_markers)
    assert np.median(cos_wrench) > 0.8, np.median(cos_wrench)


def test_wrench_reads_the_press_while_peeling():
    env, pol, obs = _run_until_traverse("peel", seed=1)
    sensed = []
    for _ in range(30):
        obs, *_ = env.step(pol.act(obs))
        sensed.append(-float(obs["wrench"][0][2]))
    assert 4.0 < np.mean(sensed) < 16.0  # the expert regulates ~8 N


def test_slip_reads_zero_while_sticking_and_nonzero_while_sliding():
    env = sim.make_env("lift", perturb=False)
    obs, _ = env.reset(seed=0)
    pol = make_expert("lift")
    pol.reset(env)
    for _ in range(int(3.0 * env.control_hz)):  # squeezed and lifting: the box sticks
        obs, *_ = env.step(pol.act(obs))
    sticking = np.abs(obs["marker_slip"]).max()
    assert np.abs(obs["marker_offset"]).max() > 0
    env.model.geom_friction[env.task._box_geom][0] = 0.02  # make it slide
    slid = 0.0
    for _ in range(10):
        obs, *_ = env.step(pol.act(obs))
        slid = max(slid, float(np.abs(obs["marker_slip"]).max()))
    assert sticking < 0.005 < slid
