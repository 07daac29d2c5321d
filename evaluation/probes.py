"""Linear probes: can the true physical state be read linearly off a representation?

Not run directly; evaluation/eval_physics.py fits them:

    targets = probe_targets("pendulum", states, t=9)        # {"pos": (N, 2), "theta": (N, 2), ...}
    r2 = probe(train_x, train_y, test_x, test_y)             # R^2 per column on the test clips

The representation is model.latent(state) after the context frames (what the agent's actor
and critic read), the same for an untrained model, or the last two context frames' pixels.
The targets are the state of the last context frame. Bodies are put in an order that can be
seen in a frame (by size where sizes differ, left to right otherwise), since the states' own
order is arbitrary where bodies look alike; angles enter as (sin, cos) so that a linear map
can represent them.
"""
from __future__ import annotations

import numpy as np
from sklearn.linear_model import RidgeCV
from sklearn.metrics import r2_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

ALPHAS = tuple(10.0 ** np.arange(-1, 7))   # 0.1 ... 1e6: pixels need strong shrinkage
# scenes whose bodies have a fixed meaning in the states' order
FIXED_ORDER = ("pendulum", "double_pendulum", "orbital_motion", "spring_mass", "falling_objects", "projectile")


def _ordered(name: str, states: dict, t: int) -> np.ndarray:
    """Body indices (N, K) in an order visible in the frame."""
    pos = states["pos"][:, t]                                            # (N, K, 2)
    N, K = pos.shape[:2]
    if name in FIXED_ORDER:    # one body, a chain, star-inner-outer, or left-to-right slots
        return np.broadcast_to(np.arange(K), (N, K))
    if "radius" in states:     # balls: smallest first
        return np.argsort(states["radius"], axis=1, kind="stable")
    return np.argsort(pos[..., 0], axis=1, kind="stable")               # digits: left to right


def probe_targets(name: str, states: dict, t: int) -> dict:
    """{group: (N, d) float64} the state at frame t: positions and velocities of the moving
    bodies (px, px/frame), angles as (sin, cos) and angular velocities where the scene has
    rods; for waves the speed and the wavelength of the strongest component."""
    if name == "wave_motion":
        strongest = np.argmax(states["amplitude"], axis=-1)[:, None]
        return {"speed": states["speed"][:, None].astype(np.float64),
                "wavelength": np.take_along_axis(states["wavelength"], strongest, 1).astype(np.float64)}
    order = _ordered(name, states, t)
    take = lambda a: np.take_along_axis(a[:, t], order[..., None], 1)  # noqa: E731  (N, K, 2)
    pos, vel = take(states["pos"]), take(states["vel"])
    if name == "orbital_motion":           # the star does not move
        pos, vel = pos[:, 1:], vel[:, 1:]
    out = {"pos": pos.reshape(len(pos), -1), "vel": vel.reshape(len(vel), -1)}
    if "theta" in states:
        th = states["theta"][:, t].reshape(len(pos), -1)
        out["angle"] = np.concatenate([np.sin(th), np.cos(th)], 1)
        out["omega"] = states["omega"][:, t].reshape(len(pos), -1)
    return {k: v.astype(np.float64) for k, v in out.items()}


def probe(train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, test_y: np.ndarray) -> np.ndarray:
    """Ridge regression (features standardised, alpha by efficient leave-one-out over
    ALPHAS) fitted on the training clips; R^2 of each target column on the test clips,
    NaN for a column that is constant on the test clips."""
    model = make_pipeline(StandardScaler(), RidgeCV(alphas=ALPHAS))
    model.fit(train_x, train_y)
    pred = model.predict(test_x).reshape(test_y.shape)
    r2 = r2_score(test_y, pred, multioutput="raw_values")
    return np.where(test_y.std(0) > 1e-8, r2, np.nan)
