"""One physical law per scene, checked on body positions (or, for waves, on the field).

Not run directly; evaluation/eval_physics.py calls it on positions read off true and
predicted frames (evaluation/positions.py) and on the exact states:

    errors = check("pendulum", pos, states, constants)       # {law: (T,) relative error}

`pos` (N, T, K, 2) float: body centres in the states' body order (match_bodies), NaN where a
body was not found. `states` holds the same N clips' arrays from <split>_states.npz and
`constants` is meta.json's "constants" (values in px and frames). The value at frame t uses
frames t-2, t-1, t only (second differences centred on t-1), so at rollout step s it sees
the last context frames and the first s predictions, never the future. Each entry is a
relative error, 0 when the law holds exactly: the constant fitted at that frame over all
clips against its true value, or the residual of the equation of motion over its size.

Laws (scene: key):
    free fall        bouncing_balls, projectile, falling_objects: "g", fitted vertical
                     acceleration of bodies in flight (no bounce, released, not at rest) / g - 1
    rod length       pendulum, double_pendulum: "rod", mean |pivot-bob distance - L| / L
    equation         pendulum, double_pendulum: "eom", |theta'' - theta''_Lagrange| / |theta''_Lagrange|
                     (RMS over clips), theta'' from the rods' angles
    Hooke            spring_mass: "hooke", fitted k/m from acceleration against displacement
                     from equilibrium / true k/m - 1
    momentum         multi_ball_collision: "momentum", |change of total momentum| over
                     windows with a ball-ball collision and no wall bounce / total |momentum|
    angular momentum orbital_motion: "ang_mom", mean |r x v - true| / |true| about the star
    Kepler III       orbital_motion: "kepler3", the exponent p of T^2 ~ a^p, from the fitted
                     power n of the radial acceleration (p = 1 - n; 3 for inverse-square) / 3 - 1
    waves            wave_motion (on frames, `wave_laws`): "wavelength" of the strongest
                     spatial frequency / the nearest component's - 1; "speed", its phase
                     change per frame / k / c - 1
"""
from __future__ import annotations

import warnings

import numpy as np

LAWS = {
    "bouncing_balls": ("g",), "projectile": ("g",), "falling_objects": ("g",),
    "pendulum": ("rod", "eom"), "double_pendulum": ("rod", "eom"),
    "spring_mass": ("hooke",), "multi_ball_collision": ("momentum",),
    "orbital_motion": ("ang_mom", "kepler3"), "wave_motion": ("wavelength", "speed"),
}
TITLES = {
    "g": "free-fall g", "rod": "rod length", "eom": "equation of motion", "hooke": "Hooke's k/m",
    "momentum": "momentum across collisions", "ang_mom": "angular momentum", "kepler3": "Kepler III exponent",
    "wavelength": "wavelength", "speed": "phase speed",
}


def _value(constants: dict, key: str) -> float:
    c = constants[key]
    return float(c["value"] if isinstance(c, dict) else c)


def _diffs(pos: np.ndarray):
    """pos (N, T, ...) -> (mid, vel, acc), each (N, T, ...) and NaN at t < 2: the position at
    t-1, the central velocity (p_t - p_{t-2}) / 2 and the acceleration p_t - 2 p_{t-1} + p_{t-2}."""
    mid, vel, acc = (np.full(pos.shape, np.nan) for _ in range(3))
    mid[:, 2:] = pos[:, 1:-1]
    vel[:, 2:] = (pos[:, 2:] - pos[:, :-2]) / 2
    acc[:, 2:] = pos[:, 2:] - 2 * pos[:, 1:-1] + pos[:, :-2]
    return mid, vel, acc


def _steady(count: np.ndarray) -> np.ndarray:
    """Cumulative event counts (N, T, ...) -> (N, T, ...) bool: no event in (t-2, t]."""
    out = np.zeros(count.shape, bool)
    out[:, 2:] = count[:, 2:] == count[:, :-2]
    return out


def _per_frame(num: np.ndarray, den: np.ndarray, ok: np.ndarray) -> np.ndarray:
    """Sum of num over the valid entries of every clip (and body) / the same sum of den, per
    frame: (N, T, ...) arrays -> (T,); NaN where a frame has no valid entry."""
    ok = ok & np.isfinite(num) & np.isfinite(den)
    axes = tuple(i for i in range(num.ndim) if i != 1)
    n = np.where(ok, num, 0).sum(axis=axes)
    d = np.where(ok, den, 0).sum(axis=axes)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(d > 0, n / np.where(d > 0, d, 1), np.nan)


def free_fall(pos, states, constants, name):
    g = _value(constants, "g")
    _, _, acc = _diffs(pos.astype(np.float64))
    if name == "bouncing_balls":
        flying = _steady(states["wall_hits"]) & _steady(states["ball_hits"])
    elif name == "projectile":                     # one body: (N, T) -> (N, T, 1)
        flying = (_steady(states["bounces"]) & ~states["at_rest"])[..., None]
    else:                                          # falling_objects
        released = np.zeros_like(states["released"])
        released[:, 2:] = states["released"][:, :-2]      # let go before the window began
        flying = _steady(states["impacts"]) & ~states["at_rest"] & released
    ay = np.where(flying, acc[..., 1], np.nan)            # (N, T, K) vertical acceleration in flight
    with warnings.catch_warnings():                       # frames with no body in flight: NaN
        warnings.simplefilter("ignore", RuntimeWarning)
        fitted = np.nanmean(ay, axis=(0, 2))              # least squares for a constant = the mean
    return {"g": np.abs(fitted / g - 1)}


def _angles(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Angle of b - a from the downward vertical, image coordinates: b = a + L (sin, cos)."""
    d = b - a
    return np.arctan2(d[..., 0], d[..., 1])


def _angle_diffs(th: np.ndarray):
    """Unwrapped central derivatives of angles (N, T, ...): (theta_{t-1}, omega, alpha)."""
    mid, om, al = (np.full(th.shape, np.nan) for _ in range(3))
    d1 = np.angle(np.exp(1j * (th[:, 2:] - th[:, 1:-1])))
    d0 = np.angle(np.exp(1j * (th[:, 1:-1] - th[:, :-2])))
    mid[:, 2:] = th[:, 1:-1]
    om[:, 2:] = (d1 + d0) / 2
    al[:, 2:] = d1 - d0
    return mid, om, al


def pendulum_laws(pos, states, constants, double: bool):
    g = _value(constants, "g")
    pos = pos.astype(np.float64)
    pivot = states["pivot"].astype(np.float64)[:, None, :]               # (N, 1, 2)
    length = states["length"].astype(np.float64)                         # (N,) or (N, 2)
    if not double:
        th = _angles(pivot, pos[:, :, 0])                                 # (N, T)
        rod = np.abs(np.linalg.norm(pos[:, :, 0] - pivot, axis=-1) / length[:, None] - 1)
        mid, _, alpha = _angle_diffs(th)
        law = -(g / length[:, None]) * np.sin(mid)                        # theta'' = -(g/L) sin theta
        res, size = (alpha - law) ** 2, law ** 2
    else:
        b1, b2 = pos[:, :, 0], pos[:, :, 1]
        th = np.stack([_angles(pivot, b1), _angles(b1, b2)], -1)          # (N, T, 2)
        rod = np.stack([np.linalg.norm(b1 - pivot, axis=-1), np.linalg.norm(b2 - b1, axis=-1)], -1)
        rod = np.abs(rod / length[:, None] - 1).mean(-1)
        mid, om, alpha = _angle_diffs(th)
        law = _double_pendulum_alpha(mid, om, states["mass"].astype(np.float64), length, g)
        res, size = ((alpha - law) ** 2).sum(-1), (law ** 2).sum(-1)
    ok = np.isfinite(res)
    eom = np.sqrt(_per_frame(res, size, ok))
    return {"rod": np.nanmean(np.where(np.isfinite(rod), rod, np.nan), axis=0), "eom": eom}


def _double_pendulum_alpha(th, om, mass, length, g):
    """Angular accelerations (N, T, 2) of the double pendulum (point masses, rigid rods,
    angles from the downward vertical) from its Lagrangian equations, a 2x2 linear system
        (m1 + m2) L1 a1 + m2 L2 cos(d) a2 = -m2 L2 w2^2 sin(d) - (m1 + m2) g sin(th1)
        L1 cos(d) a1 + L2 a2              =  L1 w1^2 sin(d) - g sin(th2),     d = th1 - th2."""
    m1, m2 = mass[:, None, 0], mass[:, None, 1]
    L1, L2 = length[:, None, 0], length[:, None, 1]
    t1, t2, w1, w2 = th[..., 0], th[..., 1], om[..., 0], om[..., 1]
    d = t1 - t2
    full = lambda a: np.broadcast_to(a, d.shape)  # noqa: E731  (N, 1) -> (N, T)
    A = np.stack([np.stack([full((m1 + m2) * L1), m2 * L2 * np.cos(d)], -1),
                  np.stack([L1 * np.cos(d), full(L2)], -1)], -2)                 # (N, T, 2, 2)
    b = np.stack([-m2 * L2 * w2 ** 2 * np.sin(d) - (m1 + m2) * g * np.sin(t1),
                  L1 * w1 ** 2 * np.sin(d) - g * np.sin(t2)], -1)                 # (N, T, 2)
    out = np.full(b.shape, np.nan)
    ok = np.isfinite(A).all((-1, -2)) & np.isfinite(b).all(-1)
    out[ok] = np.linalg.solve(A[ok], b[ok][..., None])[..., 0]
    return out


def hooke(pos, states, constants):
    g = _value(constants, "g")
    k_over_m = (states["spring_k"] / states["mass"]).astype(np.float64)              # (N, 2)
    y_eq = (states["anchor"][..., 1] + states["rest_length"]).astype(np.float64) + g / k_over_m
    mid, _, acc = _diffs(pos[..., 1].astype(np.float64))                             # (N, T, 2)
    pull = -k_over_m[:, None] * (mid - y_eq[:, None])          # the law's a; fit a = s * pull
    ok = np.isfinite(acc) & np.isfinite(pull)
    scale = _per_frame(acc * pull, pull * pull, ok)
    return {"hooke": np.abs(scale - 1)}


def momentum(pos, states, constants):
    mass = states["mass"].astype(np.float64)[:, None, :, None]                       # (N, 1, K, 1)
    pos = pos.astype(np.float64)
    v = np.full(pos.shape, np.nan)
    v[:, 1:] = pos[:, 1:] - pos[:, :-1]                                              # over (t-1, t]
    P = (mass * v).sum(2)                                                            # (N, T, 2)
    dP = np.full(P.shape[:2], np.nan)
    dP[:, 2:] = np.linalg.norm(P[:, 2:] - P[:, 1:-1], axis=-1)
    scale = (mass * np.linalg.norm(states["vel"].astype(np.float64), axis=-1, keepdims=True)).sum((2, 3))
    walls = _steady(states["wall_hits"]).all(-1)
    hits = states["ball_hits"].sum(-1)
    collided = np.zeros_like(walls)
    collided[:, 2:] = hits[:, 2:] > hits[:, :-2]
    ok = walls & collided
    return {"momentum": _per_frame(dP, scale, ok)}


def orbital(pos, states, constants):
    star = states["pos"][:, :, :1].astype(np.float64)                               # fixed star (N, T, 1, 2)
    mid, vel, acc = _diffs(pos[:, :, 1:].astype(np.float64) - star)                  # planets (N, T, 2, 2)
    ell = mid[..., 0] * vel[..., 1] - mid[..., 1] * vel[..., 0]                      # (N, T, 2)
    true = np.full(ell.shape, np.nan)
    true[:, 2:] = states["angular_momentum"][:, 1:-1]
    ok = np.isfinite(ell)
    ang = _per_frame(np.abs(ell - true), np.abs(true), ok)
    # central force: a . r_hat = -C r^n; fit n as the slope of log|a . r_hat| on log r
    r = np.linalg.norm(mid, axis=-1)
    radial = -(acc * mid).sum(-1) / np.where(r > 0, r, np.nan)
    T = pos.shape[1]
    kepler = np.full(T, np.nan)
    for t in range(2, T):
        x, y = np.log(r[:, t].ravel()), radial[:, t].ravel()
        keep = np.isfinite(x) & np.isfinite(y) & (y > 0)
        if keep.sum() >= 3 and np.ptp(x[keep]) > 0:
            n = np.polyfit(x[keep], np.log(y[keep]), 1)[0]
            kepler[t] = abs((1 - n) / 3 - 1)
    return {"ang_mom": ang, "kepler3": kepler}


def check(name: str, pos: np.ndarray, states: dict, constants: dict) -> dict:
    """Relative error of each law of scene `name` per frame: {law: (T,)} (NaN where the law
    has no valid window: the first two frames, or no body in flight)."""
    if name in ("bouncing_balls", "projectile", "falling_objects"):
        return free_fall(pos, states, constants, name)
    if name in ("pendulum", "double_pendulum"):
        return pendulum_laws(pos, states, constants, double=name == "double_pendulum")
    if name == "spring_mass":
        return hooke(pos, states, constants)
    if name == "multi_ball_collision":
        return momentum(pos, states, constants)
    if name == "orbital_motion":
        return orbital(pos, states, constants)
    raise ValueError(f"no position law for {name!r}; laws exist for {sorted(set(LAWS) - {'wave_motion'})}")


# ----------------------------------------------------------------------------------------
# Waves: read off the field itself
# ----------------------------------------------------------------------------------------
def _spectrum(frames: np.ndarray, pad: int):
    """frames (N, T, H, W) in [0, 1] -> complex spectra (N, T, pad, pad) of the field
    u = 2 x - 1 (render.field_to_uint8's inverse), Hann-windowed, mean removed."""
    u = 2.0 * frames.astype(np.float64) - 1.0
    u = u - u.mean(axis=(-1, -2), keepdims=True)
    H, W = u.shape[-2:]
    win = np.outer(np.hanning(H), np.hanning(W))
    return np.fft.fft2(u * win, s=(pad, pad))


def wave_laws(frames: np.ndarray, states: dict, pad: int = 128, chunk: int = 16) -> dict:
    """Wavelength and phase speed of the strongest spatial frequency, per frame.

    frames (N, T, H, W) float in [0, 1]. The wavelength read is scored against the nearest
    of the clip's components; every component travels at the clip's speed c. The spectrum is
    zero-padded to `pad` and its peak refined by a parabola through the neighbouring bins
    along each axis."""
    lam, speed = [], []
    for i in range(0, frames.shape[0], chunk):
        part = {k: v[i:i + chunk] for k, v in states.items()}
        a, b = _wave_chunk(frames[i:i + chunk], part, pad)
        lam.append(a)
        speed.append(b)
    lam, speed = np.concatenate(lam), np.concatenate(speed)
    with warnings.catch_warnings():      # frame 0 has no speed: an all-NaN column
        warnings.simplefilter("ignore", RuntimeWarning)
        return {"wavelength": np.nanmean(lam, 0), "speed": np.nanmean(speed, 0)}


def _refine(p: np.ndarray, i: np.ndarray, j: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sub-bin peak position (di, dj) in [-0.5, 0.5] of power p (M, pad, pad) at (i, j)."""
    pad = p.shape[-1]
    m = np.arange(p.shape[0])

    def vertex(lo, mid, hi):
        den = lo - 2 * mid + hi
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.clip(np.where(den < 0, 0.5 * (lo - hi) / den, 0.0), -0.5, 0.5)
    di = vertex(p[m, (i - 1) % pad, j], p[m, i, j], p[m, (i + 1) % pad, j])
    dj = vertex(p[m, i, (j - 1) % pad], p[m, i, j], p[m, i, (j + 1) % pad])
    return di, dj


def _wave_chunk(frames, states, pad):
    F = _spectrum(frames, pad)                                         # (n, T, pad, pad)
    n, T = F.shape[:2]
    power = np.abs(F) ** 2
    f1 = np.fft.fftfreq(pad)                                           # cycles/px
    kmag = 2 * np.pi * np.hypot(*np.meshgrid(f1, f1, indexing="ij"))
    power[..., kmag < 2 * np.pi / 64] = 0                              # wavelengths over a frame: not a wave
    flat = power.reshape(n * T, -1).argmax(-1)
    i, j = flat // pad, flat % pad
    di, dj = _refine(power.reshape(n * T, pad, pad), i, j)
    fy = np.fft.fftfreq(pad)[i] + di / pad
    fx = np.fft.fftfreq(pad)[j] + dj / pad
    k_read = (2 * np.pi * np.hypot(fx, fy)).reshape(n, T)             # rad/px
    # the clip's components (up to 3) have their own wavelengths; the one read is scored
    # against the nearest (which one dominates a frame varies with position and time)
    used = states["kind"] >= 0                                         # (n, 3)
    lam_true = np.where(used, states["wavelength"], np.nan).astype(np.float64)
    lam = np.nanmin(np.abs((2 * np.pi / k_read)[..., None] / lam_true[:, None] - 1), -1)   # (n, T)
    # phase change at frame t's peak bin between frames t-1 and t: omega = c k
    Fl = F.reshape(n, T, -1)
    peak = flat.reshape(n, T)
    now = np.take_along_axis(Fl, peak[..., None], -1)[..., 0]
    before = np.full_like(now, np.nan)
    before[:, 1:] = np.take_along_axis(Fl[:, :-1], peak[:, 1:, None], -1)[..., 0]
    omega = np.abs(np.angle(now * np.conj(before)))
    speed = np.abs(omega / k_read / states["speed"].astype(np.float64)[:, None] - 1)
    speed[:, :1] = np.nan
    return lam, speed
