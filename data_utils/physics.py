"""Simulators for the nine physics scenes, vectorised over sequences with numpy.

Not run directly: the dataset CLIs call `SCENES[name](rng, n, frames, size)`, e.g.

    python data_utils/generate_physics_data.py --dataset pendulum --num 200 --out /tmp/data

Units are pixels (px) and frames: positions in pixel coordinates (x right, y down, the
top-left pixel centred at (0, 0), the image spans [-0.5, size - 0.5]), times in frames,
velocities in px/frame, accelerations in px/frame^2, angles in radians. Geometry, speeds and
accelerations scale with s = size / 64, so a scene looks the same at any resolution.

Integration (float64 inside, float32 stored; frame t is the state at time t):
  * bouncing_balls, multi_ball_collision: exact event-driven billiards. Between collisions
    free flight is integrated in closed form (a parabola under gravity); within each frame the
    earliest wall or ball-ball contact is found by root-finding, the state is advanced to it,
    resolved, and the search repeats. No overlap, no tunnelling, energy exact to round-off.
  * projectile, falling_objects: the same, in 1-D against the floor.
  * pendulum, double_pendulum: classical RK4 on the Lagrangian equations, fixed sub-steps.
  * spring_mass: velocity Verlet (symplectic), fixed sub-steps.
  * orbital_motion: 4th-order Yoshida (symplectic) leapfrog, fixed sub-steps.
  * wave_motion: analytic solutions of the 2-D wave equation, evaluated at each frame.
All randomness comes from the generator passed in, so the same generator state gives the
same bytes.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Callable

import numpy as np

from data_utils.render import Canvas, field_to_uint8


@dataclass
class SceneData:
    frames: np.ndarray          # uint8 (n, T, H, W), grayscale, 0 = black background
    states: dict                # name -> array with leading dims (n, T, ...) or (n, ...) if constant in time
    constants: dict             # name -> {"value": ..., "unit": ...} (pixels / frames units)
    state_doc: dict             # name -> meaning, shape and unit of states[name]
    notes: str                  # restitution, damping, energy loss, modelling choices


def _c(value, unit):
    return {"value": value, "unit": unit}


def _f32(x):
    return np.asarray(x, dtype=np.float32)


class SceneArgumentError(ValueError):
    """Bad n / frames / size passed to a scene."""


def _checked(fn):
    """Validate (rng, n, frames, size) before running a scene, with a one-line message.
    functools.wraps keeps the scene's name and qualified name, so the decorated function can
    be pickled by reference (the CLIs send it to worker processes)."""
    @functools.wraps(fn)
    def wrapper(rng, n, frames, size, **kw):
        if not isinstance(rng, np.random.Generator):
            raise SceneArgumentError(f"{fn.__name__}: rng must be a numpy Generator (np.random.default_rng(seed))")
        if int(n) < 1 or int(frames) < 1:
            raise SceneArgumentError(f"{fn.__name__}: need n >= 1 and frames >= 1, got n={n}, frames={frames}")
        if int(size) < 16:
            raise SceneArgumentError(f"{fn.__name__}: size {size} is too small for the bodies; use --size 16 or more")
        return fn(rng, int(n), int(frames), int(size), **kw)
    return wrapper


POS_DOC = "centre of each drawn body in pixel coordinates (x right, y down, top-left pixel centre = (0,0)), px"
VEL_DOC = "velocity of each body's centre at the frame's instant, px/frame"


# =============================================================================================
# Shared integrators
# =============================================================================================
def _place_discs(rng, radius, size, margin=1.0, gap=1.0, tries=200):
    """Random non-overlapping centres (n, K, 2) for discs of `radius` (n, K) inside the frame:
    every centre at least radius + margin from the image border, every pair at least
    r_i + r_j + gap apart. Rejection sampling, redrawing only the sequences that failed."""
    n, K = radius.shape
    lo = radius - 0.5 + margin
    hi = size - 0.5 - radius - margin
    pos = np.empty((n, K, 2))
    todo = np.arange(n)
    I, J = np.triu_indices(K, 1)
    for _ in range(tries):
        u = rng.random((todo.size, K, 2))
        pos[todo] = lo[todo, :, None] + u * (hi - lo)[todo, :, None]
        d = np.linalg.norm(pos[todo][:, J] - pos[todo][:, I], axis=-1)
        bad = np.any(d < radius[todo][:, I] + radius[todo][:, J] + gap, axis=1)
        todo = todo[bad]
        if todo.size == 0:
            return pos
    raise ValueError("could not place non-overlapping discs; the radii are too large for the frame size")


def _billiards(x, v, radius, mass, g, size, frames, max_events=100):
    """Exact event-driven motion of K discs in the box [-0.5, size - 0.5]^2 under a uniform
    downward acceleration g (px/frame^2, may be 0): elastic wall bounces and elastic disc-disc
    collisions resolved along the line of centres.

    x, v: (n, K, 2) float64 state at frame 0; radius, mass: (n, K).
    Returns pos, vel (n, T, K, 2) float64 and cumulative counts wall_hits, ball_hits (n, T, K).

    Free flight is exact: x(t) = x + v t + (g/2) t^2 e_y. Contact times are roots of:
      wall:  x_k(t) = lo or hi on either axis (linear in x, quadratic in y);
      pair:  |dx + dv t| = r_i + r_j (gravity cancels in relative motion), taken only when
             approaching (dx . dv < 0): t = c / (-b + sqrt(b^2 - a c)) with a = |dv|^2,
             b = dx . dv, c = |dx|^2 - (r_i + r_j)^2 (the stable form of the smaller root).
    A collision of masses m_i, m_j with u = (v_j - v_i) . n (n = unit i->j at contact) gives
    v_i += 2 m_j / (m_i + m_j) u n, v_j -= 2 m_i / (m_i + m_j) u n: momentum and kinetic energy
    are conserved exactly."""
    n, K = radius.shape
    T = frames
    lo = radius - 0.5          # (n, K) allowed range of a centre coordinate on both axes
    hi = size - 0.5 - radius
    I, J = np.triu_indices(K, 1)
    R = radius[:, I] + radius[:, J]                                     # (n, P) contact distances
    gvec = np.array([0.0, g])
    x, v = x.astype(np.float64).copy(), v.astype(np.float64).copy()
    pos = np.empty((n, T, K, 2))
    vel = np.empty((n, T, K, 2))
    wall_hits = np.zeros((n, T, K), np.int32)
    ball_hits = np.zeros((n, T, K), np.int32)
    wcount = np.zeros((n, K), np.int32)
    bcount = np.zeros((n, K), np.int32)
    pos[:, 0], vel[:, 0] = x, v
    inf = np.inf
    for t in range(1, T):
        rem = np.ones(n)
        act = np.arange(n)
        for it in range(max_events + 1):
            xa, va, loa, hia, ra = x[act], v[act], lo[act], hi[act], rem[act]
            m = act.size
            with np.errstate(divide="ignore", invalid="ignore"):
                vx, vy, px, py = va[..., 0], va[..., 1], xa[..., 0], xa[..., 1]
                t_left = np.where(vx < 0, (loa - px) / vx, inf)
                t_right = np.where(vx > 0, (hia - px) / vx, inf)
                # ceiling: smaller root of (g/2) t^2 + vy t + c = 0, c = y - lo >= 0, moving up
                c = np.maximum(py - loa, 0.0)
                disc = vy * vy - 2.0 * g * c
                t_top = np.where((vy < 0) & (disc >= 0), 2.0 * c / (-vy + np.sqrt(np.maximum(disc, 0.0))), inf)
                # floor: positive root of (g/2) t^2 + vy t - d = 0, d = hi - y >= 0
                d = np.maximum(hia - py, 0.0)
                sq = np.sqrt(vy * vy + 2.0 * g * d)
                t_bot = np.where(vy > 0, 2.0 * d / (vy + sq), (-vy + sq) / g if g > 0 else inf)
                cand = [np.stack([t_left, t_right, t_top, t_bot], axis=-1).reshape(m, 4 * K)]
                if I.size:
                    dx = xa[:, J] - xa[:, I]                             # (m, P, 2)
                    dv = va[:, J] - va[:, I]
                    b = np.einsum("mpi,mpi->mp", dx, dv)
                    a = np.einsum("mpi,mpi->mp", dv, dv)
                    cc = np.einsum("mpi,mpi->mp", dx, dx) - R[act] ** 2
                    dd = b * b - a * cc
                    tp = np.where((b < 0) & (dd >= 0), cc / (-b + np.sqrt(np.maximum(dd, 0.0))), inf)
                    cand.append(np.maximum(tp, 0.0))
            cand = np.concatenate(cand, axis=1) if len(cand) > 1 else cand[0]
            ev = np.argmin(cand, axis=1)
            tev = cand[np.arange(m), ev]
            hit = (tev <= ra) & (it < max_events)
            step = np.where(hit, tev, ra)[:, None, None]
            xa = xa + va * step + 0.5 * gvec * step * step
            va = va + gvec * step
            # --- resolve the event of each sequence that has one ---------------------------
            h = np.nonzero(hit)[0]
            e = ev[h]
            w = e < 4 * K
            hw, ew = h[w], e[w]
            k, side = ew // 4, ew % 4
            axis = side // 2                                        # 0: left/right, 1: top/bottom
            wall = np.where(side % 2 == 0, loa[hw, k], hia[hw, k])
            xa[hw, k, axis] = wall                                  # exactly on the wall
            va[hw, k, axis] = -va[hw, k, axis]
            wcount[act[hw], k] += 1
            hp, p = h[~w], e[~w] - 4 * K
            if hp.size:
                i, j = I[p], J[p]
                nrm = xa[hp, j] - xa[hp, i]
                nrm /= np.linalg.norm(nrm, axis=-1, keepdims=True)
                u = np.einsum("pi,pi->p", va[hp, j] - va[hp, i], nrm)   # < 0: approaching
                mi, mj = mass[act[hp], i], mass[act[hp], j]
                va[hp, i] += (2.0 * mj / (mi + mj) * u)[:, None] * nrm
                va[hp, j] -= (2.0 * mi / (mi + mj) * u)[:, None] * nrm
                bcount[act[hp], i] += 1
                bcount[act[hp], j] += 1
            x[act], v[act] = xa, va
            rem[act] = ra - step[:, 0, 0]
            act = act[hit]
            if act.size == 0:
                break
        pos[:, t], vel[:, t] = x, v
        wall_hits[:, t], ball_hits[:, t] = wcount, bcount
    return pos, vel, wall_hits, ball_hits


def _drop(y0, vy0, g, floor, restitution, v_rest, t_release, frames):
    """Exact 1-D motion under gravity g > 0 (downwards, px/frame^2) onto a floor.

    All arguments are (m,) arrays (one entry per body) except g and frames. A body is held at
    y0 until t_release (frames, may be fractional), then flies freely from (y0, vy0):
    y(t) = y + vy t + g t^2 / 2. At the floor (y = floor) vy -> -restitution * vy; once the
    rebound speed is below v_rest the body rests on the floor (vy = 0) for good.
    Returns y, vy (m, T) float64, impacts (m, T) int32 (cumulative floor contacts), at_rest and
    released (m, T) bool."""
    m, T = y0.shape[0], frames
    y, vy = y0.astype(np.float64).copy(), vy0.astype(np.float64).copy()
    rest = np.zeros(m, bool)
    imp = np.zeros(m, np.int32)
    Y, VY = np.empty((m, T)), np.empty((m, T))
    IMP = np.zeros((m, T), np.int32)
    REST = np.zeros((m, T), bool)
    Y[:, 0] = y
    VY[:, 0] = np.where(t_release <= 0, vy, 0.0)
    for t in range(1, T):
        rem = np.clip(t - np.maximum(t - 1.0, t_release), 0.0, 1.0)   # free-flight time in (t-1, t]
        act = np.nonzero((rem > 0) & ~rest)[0]
        for _ in range(64):
            if act.size == 0:
                break
            ya, va, ra, fl = y[act], vy[act], rem[act], floor[act]
            d = np.maximum(fl - ya, 0.0)
            sq = np.sqrt(va * va + 2.0 * g * d)
            with np.errstate(divide="ignore", invalid="ignore"):
                tau = np.where(va > 0, 2.0 * d / (va + sq), (-va + sq) / g)
            hit = tau <= ra
            step = np.where(hit, tau, ra)
            ya = ya + va * step + 0.5 * g * step * step
            va = va + g * step
            ya[hit] = fl[hit]
            va[hit] = -restitution[act][hit] * va[hit]
            stop = hit & (-va < v_rest[act])
            va[stop] = 0.0
            imp[act[hit]] += 1
            rest[act[stop]] = True
            y[act], vy[act] = ya, va
            rem[act] = ra - step
            act = act[hit & ~stop]
        Y[:, t], VY[:, t], IMP[:, t], REST[:, t] = y, np.where(t >= t_release, vy, 0.0), imp, rest
    released = np.arange(T)[None, :] >= t_release[:, None]
    return Y, VY, IMP, REST, released


def _rk4(f, y, h, steps):
    """`steps` classical Runge-Kutta steps of size h for dy/dt = f(y), y a (d, n) array."""
    for _ in range(steps):
        k1 = f(y)
        k2 = f(y + 0.5 * h * k1)
        k3 = f(y + 0.5 * h * k2)
        k4 = f(y + h * k3)
        y = y + (h / 6.0) * (k1 + 2.0 * k2 + 2.0 * k3 + k4)
    return y


# =============================================================================================
# Scenes
# =============================================================================================
@_checked
def bouncing_balls(rng, n, frames, size):
    """3 balls under gravity in a closed box; elastic walls and ball-ball collisions. See SceneData.state_doc for the states."""
    s = size / 64.0
    K = 3
    g = 0.15 * s
    radius = rng.uniform(3.0, 6.0, (n, K)) * s
    mass = (radius / (4.0 * s)) ** 2
    intensity = rng.integers(150, 256, (n, K))
    x = _place_discs(rng, radius, size, margin=1.0 * s)
    v = rng.uniform(-2.0, 2.0, (n, K, 2)) * s
    pos, vel, wh, bh = _billiards(x, v, radius, mass, g, size, frames)
    height = (size - 0.5 - radius)[:, None, :] - pos[..., 1]         # centre above its floor
    energy = np.sum(mass[:, None] * (0.5 * np.sum(vel ** 2, -1) + g * height), axis=-1)
    cv = Canvas(n, frames, size)
    for k in range(K):
        cv.discs(pos[:, :, k], radius[:, None, k], intensity[:, None, k])
    return SceneData(
        frames=cv.frames(),
        states=dict(pos=_f32(pos), vel=_f32(vel), radius=_f32(radius), mass=_f32(mass),
                    intensity=intensity.astype(np.uint8), energy=_f32(energy),
                    wall_hits=wh, ball_hits=bh),
        constants=dict(g=_c(g, "px/frame^2 (downwards, +y)"), num_balls=_c(K, "1"),
                       radius_range=_c([3.0 * s, 6.0 * s], "px"), restitution=_c(1.0, "1"),
                       speed_range=_c([0.0, 2.0 * np.sqrt(2) * s], "px/frame"),
                       mass_unit=_c("mass = (radius / (4 s))^2 with s = size/64 (uniform density)", "1")),
        state_doc=dict(pos=POS_DOC + "; (n, T, 3, 2)", vel=VEL_DOC + "; (n, T, 3, 2)",
                       radius="ball radius (n, 3), px", mass="ball mass (n, 3), mass units (proportional to area)",
                       intensity="grey level of each ball (n, 3), 0..255",
                       energy="total mechanical energy (n, T): sum m (|v|^2/2 + g h), h = height of the centre above "
                              "its lowest possible position (size - 0.5 - radius - y), mass*px^2/frame^2",
                       wall_hits="cumulative wall bounces of each ball up to this frame (n, T, 3), int32",
                       ball_hits="cumulative ball-ball collisions of each ball up to this frame (n, T, 3), int32"),
        notes="3 balls under constant gravity in a closed box; walls (all four, including the floor) and "
              "ball-ball collisions are perfectly elastic (restitution 1.0), collisions resolved exactly along the "
              "line of centres; balls never overlap. Exact event-driven integration: total energy is conserved.",
    )


@_checked
def multi_ball_collision(rng, n, frames, size):
    """4 balls of different radii and densities, no gravity; elastic collisions and walls. See SceneData.state_doc for the states."""
    s = size / 64.0
    K = 4
    radius = rng.uniform(2.5, 6.5, (n, K)) * s
    density = rng.uniform(0.5, 2.0, (n, K))
    mass = density * (radius / (4.0 * s)) ** 2
    intensity = np.rint(100.0 + 155.0 * (density - 0.5) / 1.5).astype(np.int64)
    x = _place_discs(rng, radius, size, margin=1.0 * s)
    speed = rng.uniform(0.6, 2.0, (n, K)) * s
    ang = rng.uniform(0.0, 2 * np.pi, (n, K))
    v = np.stack([speed * np.cos(ang), speed * np.sin(ang)], axis=-1)
    pos, vel, wh, bh = _billiards(x, v, radius, mass, 0.0, size, frames)
    momentum = np.sum(mass[:, None, :, None] * vel, axis=2)
    ke = np.sum(0.5 * mass[:, None] * np.sum(vel ** 2, -1), axis=-1)
    cv = Canvas(n, frames, size)
    for k in range(K):
        cv.discs(pos[:, :, k], radius[:, None, k], intensity[:, None, k])
    return SceneData(
        frames=cv.frames(),
        states=dict(pos=_f32(pos), vel=_f32(vel), radius=_f32(radius), mass=_f32(mass), density=_f32(density),
                    intensity=intensity.astype(np.uint8), momentum=_f32(momentum), kinetic_energy=_f32(ke),
                    wall_hits=wh, ball_hits=bh),
        constants=dict(g=_c(0.0, "px/frame^2"), num_balls=_c(K, "1"), radius_range=_c([2.5 * s, 6.5 * s], "px"),
                       density_range=_c([0.5, 2.0], "mass units per (4 s px)^2 of disc"),
                       speed_range=_c([0.6 * s, 2.0 * s], "px/frame"), restitution=_c(1.0, "1"),
                       intensity_of_density=_c("intensity = round(100 + 155 (density - 0.5) / 1.5)", "grey level")),
        state_doc=dict(pos=POS_DOC + "; (n, T, 4, 2)", vel=VEL_DOC + "; (n, T, 4, 2)",
                       radius="ball radius (n, 4), px", density="ball density (n, 4); drawn as its grey level",
                       mass="ball mass = density * (radius / (4 s))^2, s = size/64 (n, 4), mass units",
                       intensity="grey level of each ball (n, 4), 0..255, increasing with density",
                       momentum="total momentum sum m v (n, T, 2), mass*px/frame (changes only at wall bounces)",
                       kinetic_energy="total kinetic energy sum m |v|^2 / 2 (n, T), mass*px^2/frame^2 (conserved)",
                       wall_hits="cumulative wall bounces of each ball up to this frame (n, T, 4), int32",
                       ball_hits="cumulative ball-ball collisions of each ball up to this frame (n, T, 4), int32"),
        notes="4 balls of different radii and densities (heavier = brighter), no gravity. Ball-ball collisions are "
              "perfectly elastic and resolved exactly along the line of centres (momentum and kinetic energy "
              "conserved); wall bounces are elastic. Exact event-driven integration; balls never overlap.",
    )


@_checked
def projectile(rng, n, frames, size):
    """A ball launched under gravity; floor bounces with restitution < 1, then it slides. See SceneData.state_doc for the states."""
    s = size / 64.0
    g = 0.5 * s
    T = frames
    radius = rng.uniform(2.5, 4.5, n) * s
    intensity = rng.integers(180, 256, n)
    floor = size - 0.5 - radius
    direction = np.where(rng.random(n) < 0.5, 1.0, -1.0)            # +1: launched to the right
    x_near = radius + 1.0 * s + rng.random(n) * (0.35 * size - radius - 1.0 * s)  # distance from launch wall
    # apex height above the floor (top of the ball stays inside the frame), launch height below it
    apex = rng.uniform(0.25, 0.85, n) * (floor - radius - 1.0 * s)
    y0 = floor - rng.uniform(0.0, 0.8, n) * apex
    vy_up = np.sqrt(2.0 * g * (apex - (floor - y0)))
    vx_max = np.minimum(2.5 * s, (size - 1.5 * s - radius - x_near) / max(T - 1, 1))
    vx = direction * rng.uniform(0.3, 1.0, n) * vx_max
    x0 = np.where(direction > 0, x_near, size - 1.0 - x_near)
    e = rng.uniform(0.5, 0.85, n)
    v_rest = np.full(n, 0.3 * s)
    y, vy, imp, rest, _ = _drop(y0, -vy_up, g, floor, e, v_rest, np.zeros(n), T)
    t = np.arange(T)
    x = x0[:, None] + vx[:, None] * t[None, :]
    pos = np.stack([x, y], axis=-1)[:, :, None]                      # (n, T, 1, 2)
    vel = np.stack([np.broadcast_to(vx[:, None], y.shape), vy], axis=-1)[:, :, None]
    cv = Canvas(n, T, size)
    cv.discs(pos[:, :, 0], radius[:, None], intensity[:, None])
    return SceneData(
        frames=cv.frames(),
        states=dict(pos=_f32(pos), vel=_f32(vel), radius=_f32(radius), intensity=intensity.astype(np.uint8),
                    launch_speed=_f32(np.hypot(vx, vy_up)), launch_angle=_f32(np.arctan2(vy_up, np.abs(vx))),
                    restitution=_f32(e), bounces=imp, at_rest=rest),
        constants=dict(g=_c(g, "px/frame^2 (downwards, +y)"), restitution_range=_c([0.5, 0.85], "1"),
                       rest_speed=_c(0.3 * s, "px/frame"), radius_range=_c([2.5 * s, 4.5 * s], "px"),
                       floor=_c("y = size - 0.5 (bottom edge of the image); ball centre rests at size - 0.5 - radius",
                                "px")),
        state_doc=dict(pos=POS_DOC + "; (n, T, 1, 2)", vel=VEL_DOC + "; (n, T, 1, 2)",
                       radius="ball radius (n,), px", intensity="grey level (n,), 0..255",
                       launch_speed="speed at launch (frame 0) (n,), px/frame",
                       launch_angle="elevation of the launch velocity above the horizontal (n,), rad",
                       restitution="floor restitution coefficient of this ball (n,) (vertical speed kept per bounce)",
                       bounces="cumulative floor impacts up to this frame (n, T), int32",
                       at_rest="ball has stopped bouncing and slides on the floor (n, T), bool"),
        notes="A ball launched at frame 0 from a varied position with varied speed and elevation, under constant "
              "gravity. It bounces on the floor (bottom edge) with restitution 0.5-0.85 (vertical velocity reversed "
              "and scaled; horizontal velocity kept: frictionless floor), so energy is lost at each bounce; when the "
              "rebound speed falls below rest_speed it stays on the floor and slides. No walls or ceiling: launches "
              "are chosen so the ball stays inside the frame. Exact event-driven integration.",
    )


@_checked
def falling_objects(rng, n, frames, size):
    """3 shapes released at different times and heights; fall onto the floor, land inelastically. See SceneData.state_doc for the states."""
    s = size / 64.0
    g = 0.5 * s
    K, T = 3, frames
    slot = size / K
    shape = rng.integers(0, 3, (n, K))                                 # 0 disc, 1 box, 2 diamond
    r = rng.uniform(2.5, 5.5, (n, K)) * s
    bw, bh = rng.uniform(2.5, 6.0, (n, K)) * s, rng.uniform(2.5, 6.0, (n, K)) * s
    dg = rng.uniform(3.0, 6.5, (n, K)) * s
    half_w = np.choose(shape, [r, bw, dg])
    half_h = np.choose(shape, [r, bh, dg])
    intensity = rng.integers(150, 256, (n, K))
    slack = np.maximum(slot / 2 - half_w - 1.0 * s, 0.0)
    x = (np.arange(K) + 0.5) * slot - 0.5 + rng.uniform(-1, 1, (n, K)) * slack
    floor = size - 0.5 - half_h
    top = rng.uniform(0.5 * s, 0.4 * size, (n, K))                    # top edge of the object
    y0 = np.minimum(top + half_h - 0.5, floor - 2.0 * s)
    t_rel = rng.uniform(0.0, 0.3 * (T - 1), (n, K))
    e = rng.uniform(0.0, 0.4, (n, K))
    flat = lambda a: np.ascontiguousarray(a).reshape(-1)  # noqa: E731
    y, vy, imp, rest, released = _drop(flat(y0), np.zeros(n * K), g, flat(floor), flat(e),
                                       np.full(n * K, 0.4 * s), flat(t_rel), T)
    resh = lambda a: a.reshape(n, K, T).swapaxes(1, 2)  # noqa: E731  (n*K, T) -> (n, T, K)
    y, vy, imp, rest, released = map(resh, (y, vy, imp, rest, released))
    pos = np.stack([np.broadcast_to(x[:, None], y.shape), y], axis=-1)
    vel = np.stack([np.zeros_like(vy), vy], axis=-1)
    cv = Canvas(n, T, size)
    for k in range(K):
        for code, draw in ((0, "disc"), (1, "box"), (2, "diamond")):
            sel = np.nonzero(shape[:, k] == code)[0]
            if not sel.size:
                continue
            c, val = pos[sel, :, k], intensity[sel, k, None]
            if draw == "disc":
                cv.discs(c, r[sel, k, None], val, seq=sel)
            elif draw == "box":
                cv.boxes(c, bw[sel, k, None], bh[sel, k, None], val, seq=sel)
            else:
                cv.diamonds(c, dg[sel, k, None], val, seq=sel)
    return SceneData(
        frames=cv.frames(),
        states=dict(pos=_f32(pos), vel=_f32(vel), shape=shape.astype(np.int8),
                    half_size=_f32(np.stack([half_w, half_h], axis=-1)), intensity=intensity.astype(np.uint8),
                    release_time=_f32(t_rel), restitution=_f32(e), impacts=imp, at_rest=rest,
                    released=released),
        constants=dict(g=_c(g, "px/frame^2 (downwards, +y)"), num_objects=_c(K, "1"),
                       restitution_range=_c([0.0, 0.4], "1"), rest_speed=_c(0.4 * s, "px/frame"),
                       floor=_c("y = size - 0.5 (bottom edge); an object rests with its centre at "
                                "size - 0.5 - half height", "px")),
        state_doc=dict(pos=POS_DOC + "; (n, T, 3, 2)", vel=VEL_DOC + "; (n, T, 3, 2) (x component always 0)",
                       shape="shape of each object (n, 3): 0 disc, 1 axis-aligned box, 2 diamond (square at 45 deg)",
                       half_size="(half width, half height) of each object (n, 3, 2), px; disc: radius, "
                                 "diamond: half diagonal",
                       intensity="grey level (n, 3), 0..255",
                       release_time="time the object is let go (n, 3), frames (fractional); held still before",
                       restitution="floor restitution coefficient (n, 3)",
                       impacts="cumulative floor impacts up to this frame (n, T, 3), int32",
                       at_rest="object has come to rest on the floor (n, T, 3), bool",
                       released="frame index >= release_time (n, T, 3), bool"),
        notes="3 objects (discs, boxes, diamonds) of different sizes, each in its own third of the frame (so they "
              "never touch each other), held still then released at different times and heights; they fall "
              "under constant gravity onto the floor (bottom edge), landing inelastically (restitution 0-0.4, "
              "energy lost at each impact) and coming to rest once the rebound speed is below rest_speed. "
              "Exact event-driven integration.",
    )


@_checked
def pendulum(rng, n, frames, size, sub_steps=8):
    """Simple pendulum (rigid rod), nonlinear, amplitudes up to ~150 degrees; RK4. See SceneData.state_doc for the states."""
    s = size / 64.0
    g = 1.2 * s
    T = frames
    radius = rng.uniform(2.5, 4.5, n) * s
    amp = rng.uniform(0.15, 2.6, n)                                    # max angle, up to ~150 deg
    m = 1.5 * s                                                        # margin to the image border
    # bob y ranges over [y0 + L cos(amp), y0 + L]; x over x0 +- L sin(min(amp, pi/2))
    L_max_v = (size - 2 * m - 2 * radius - 1.0) / (1.0 - np.minimum(np.cos(amp), 0.0))
    L_max_h = (size - 2 * m - 2 * radius - 1.0) / (2.0 * np.sin(np.minimum(amp, np.pi / 2)))
    L_max = np.minimum(np.minimum(L_max_v, L_max_h), 0.42 * size)
    length = np.minimum(rng.uniform(0.2, 0.42, n) * size, L_max)
    reach_x = length * np.sin(np.minimum(amp, np.pi / 2)) + radius + m
    x0 = reach_x - 0.5 + rng.random(n) * np.maximum(size - 2 * reach_x, 0.0)
    y_lo = np.maximum(m, -length * np.minimum(np.cos(amp), 0.0) + radius + m) - 0.5
    y_hi = size - 0.5 - length - radius - m
    y0 = y_lo + rng.random(n) * np.maximum(y_hi - y_lo, 0.0)
    # random phase on the orbit of energy E = -g L cos(amp) (per unit mass): start anywhere in
    # [-amp, amp] with |omega| = sqrt(2 g / L (cos th - cos amp)) and a random sign
    th0 = amp * rng.uniform(-1.0, 1.0, n)
    w0 = np.where(rng.random(n) < 0.5, 1.0, -1.0) * np.sqrt(np.maximum(2 * g / length * (np.cos(th0) - np.cos(amp)), 0))
    gl = g / length
    f = lambda y: np.stack([y[1], -gl * np.sin(y[0])])  # noqa: E731  theta'' = -(g/L) sin(theta)
    state = np.empty((T, 2, n))
    state[0] = th0, w0
    for t in range(1, T):
        state[t] = _rk4(f, state[t - 1], 1.0 / sub_steps, sub_steps)
    th, om = state[:, 0].T, state[:, 1].T                               # (n, T)
    L = length[:, None]
    pos = np.stack([x0[:, None] + L * np.sin(th), y0[:, None] + L * np.cos(th)], axis=-1)[:, :, None]
    vel = np.stack([L * om * np.cos(th), -L * om * np.sin(th)], axis=-1)[:, :, None]
    energy = 0.5 * L ** 2 * om ** 2 - g * L * np.cos(th)
    pivot = np.stack([x0, y0], axis=-1)
    cv = Canvas(n, T, size)
    piv = np.broadcast_to(pivot[:, None], (n, T, 2))
    cv.segments(piv, pos[:, :, 0], 0.5 * s, 110)
    cv.discs(piv, 1.2 * s, 160)
    cv.discs(pos[:, :, 0], radius[:, None], 255)
    return SceneData(
        frames=cv.frames(),
        states=dict(pos=_f32(pos), vel=_f32(vel), theta=_f32(th), omega=_f32(om), pivot=_f32(pivot),
                    length=_f32(length), radius=_f32(radius), amplitude=_f32(amp), energy=_f32(energy)),
        constants=dict(g=_c(g, "px/frame^2 (downwards, +y)"), length_range=_c([0.2 * size, 0.42 * size], "px"),
                       amplitude_range=_c([0.15, 2.6], "rad"), sub_steps=_c(sub_steps, "RK4 steps per frame"),
                       bob_intensity=_c(255, "grey level"), rod_intensity=_c(110, "grey level"),
                       rod_half_width=_c(0.5 * s, "px")),
        state_doc=dict(pos=POS_DOC + "; the bob (n, T, 1, 2)", vel=VEL_DOC + "; the bob (n, T, 1, 2)",
                       theta="rod angle from the downward vertical (n, T), rad; bob = pivot + L (sin, cos)",
                       omega="angular velocity d theta / dt (n, T), rad/frame", pivot="pivot position (n, 2), px",
                       length="rod length (n,), px (exactly constant)", radius="bob radius (n,), px",
                       amplitude="largest angle of the swing (n,), rad",
                       energy="energy per unit mass L^2 omega^2 / 2 - g L cos(theta) (n, T), px^2/frame^2"),
        notes="Simple pendulum: rigid massless rod, point-mass bob, no friction (energy conserved). "
              "Full nonlinear equation theta'' = -(g/L) sin(theta), amplitudes up to ~150 deg, integrated with RK4. "
              "Drawn: rod (grey), pivot dot, bob (white).",
    )


@_checked
def double_pendulum(rng, n, frames, size, sub_steps=32):
    """Chaotic double pendulum (two rigid rods, point masses); RK4 on the Lagrangian equations. See SceneData.state_doc for the states."""
    s = size / 64.0
    g = 1.2 * s
    T = frames
    m1, m2 = rng.uniform(0.5, 2.0, n), rng.uniform(0.5, 2.0, n)
    r1, r2 = s * (2.0 + 1.2 * m1), s * (2.0 + 1.2 * m2)
    total = rng.uniform(0.3, 1.0, n) * (size / 2 - r2 - 1.5 * s - 0.3 * size) + 0.3 * size
    frac = rng.uniform(0.4, 0.6, n)
    L1, L2 = total * frac, total * (1 - frac)
    pivot = np.full((n, 2), (size - 1) / 2.0) + rng.uniform(-0.5, 0.5, (n, 2))
    # cap the reach so that the lower bob never leaves the frame, whatever the angles
    excess = np.maximum(L1 + L2 + r2 + 1.0 * s - (size / 2 - 1.0), 0.0)
    L1, L2 = L1 - excess * frac, L2 - excess * (1 - frac)
    y = np.stack([rng.uniform(-np.pi, np.pi, n), rng.uniform(-np.pi, np.pi, n),
                  rng.uniform(-0.1, 0.1, n), rng.uniform(-0.1, 0.1, n)])
    M = m1 + m2

    def f(y):
        # Lagrangian equations of two point masses on rigid massless rods, angles from the
        # downward vertical (y down):  with d = th1 - th2, D = 2 m1 + m2 - m2 cos(2 d),
        # th1'' = [-g (2m1+m2) sin th1 - m2 g sin(th1 - 2 th2) - 2 sin d m2 (w2^2 L2 + w1^2 L1 cos d)] / (L1 D)
        # th2'' = [2 sin d (w1^2 L1 M + g M cos th1 + w2^2 L2 m2 cos d)] / (L2 D)
        th1, th2, w1, w2 = y
        d = th1 - th2
        sd, cd = np.sin(d), np.cos(d)
        D = 2 * m1 + m2 - m2 * np.cos(2 * d)
        a1 = (-g * (2 * m1 + m2) * np.sin(th1) - m2 * g * np.sin(th1 - 2 * th2)
              - 2 * sd * m2 * (w2 * w2 * L2 + w1 * w1 * L1 * cd)) / (L1 * D)
        a2 = 2 * sd * (w1 * w1 * L1 * M + g * M * np.cos(th1) + w2 * w2 * L2 * m2 * cd) / (L2 * D)
        return np.stack([w1, w2, a1, a2])

    state = np.empty((T, 4, n))
    state[0] = y
    for t in range(1, T):
        state[t] = _rk4(f, state[t - 1], 1.0 / sub_steps, sub_steps)
    th1, th2, w1, w2 = (state[:, i].T for i in range(4))                # each (n, T)
    A1, A2 = L1[:, None], L2[:, None]
    p0 = pivot[:, None, :]
    b1 = p0 + A1[..., None] * np.stack([np.sin(th1), np.cos(th1)], -1)
    b2 = b1 + A2[..., None] * np.stack([np.sin(th2), np.cos(th2)], -1)
    v1 = A1[..., None] * w1[..., None] * np.stack([np.cos(th1), -np.sin(th1)], -1)
    v2 = v1 + A2[..., None] * w2[..., None] * np.stack([np.cos(th2), -np.sin(th2)], -1)
    mm1, mm2 = m1[:, None], m2[:, None]
    kin = 0.5 * mm1 * np.sum(v1 ** 2, -1) + 0.5 * mm2 * np.sum(v2 ** 2, -1)
    pot = -g * (mm1 * (b1[..., 1] - p0[..., 1]) + mm2 * (b2[..., 1] - p0[..., 1]))
    energy = kin + pot
    cv = Canvas(n, T, size)
    piv = np.broadcast_to(p0, (n, T, 2))
    cv.segments(piv, b1, 0.5 * s, 110)
    cv.segments(b1, b2, 0.5 * s, 110)
    cv.discs(piv, 1.2 * s, 160)
    cv.discs(b1, r1[:, None], 200)
    cv.discs(b2, r2[:, None], 255)
    return SceneData(
        frames=cv.frames(),
        states=dict(pos=_f32(np.stack([b1, b2], axis=2)), vel=_f32(np.stack([v1, v2], axis=2)),
                    theta=_f32(np.stack([th1, th2], -1)), omega=_f32(np.stack([w1, w2], -1)),
                    pivot=_f32(pivot), length=_f32(np.stack([L1, L2], -1)), mass=_f32(np.stack([m1, m2], -1)),
                    radius=_f32(np.stack([r1, r2], -1)), energy=_f32(energy)),
        constants=dict(g=_c(g, "px/frame^2 (downwards, +y)"), sub_steps=_c(sub_steps, "RK4 steps per frame"),
                       mass_range=_c([0.5, 2.0], "mass units"), radius_of_mass=_c("radius = s (2 + 1.2 mass)", "px"),
                       bob_intensity=_c([200, 255], "grey level (upper bob, lower bob)"),
                       rod_intensity=_c(110, "grey level")),
        state_doc=dict(pos=POS_DOC + "; (n, T, 2, 2): [upper bob, lower bob]",
                       vel=VEL_DOC + "; (n, T, 2, 2)",
                       theta="angles of rod 1 (pivot->bob 1) and rod 2 (bob 1->bob 2) from the downward vertical "
                             "(n, T, 2), rad, unwrapped; bob = start + L (sin, cos)",
                       omega="angular velocities (n, T, 2), rad/frame", pivot="pivot position (n, 2), px",
                       length="rod lengths (n, 2), px (exactly constant)", mass="bob masses (n, 2), mass units",
                       radius="bob radii (n, 2), px",
                       energy="total energy (n, T): kinetic + potential -g sum m_i (y_i - y_pivot), "
                              "mass*px^2/frame^2 (conserved)"),
        notes="Double pendulum: two point masses on rigid massless rods, no friction (energy conserved); "
              "Lagrangian equations of motion integrated with RK4; chaotic for the large initial angles used "
              "(both angles uniform in [-pi, pi]). Drawn: rods (grey), pivot dot, upper bob (light grey), "
              "lower bob (white).",
    )


@_checked
def spring_mass(rng, n, frames, size, sub_steps=16):
    """Two vertical Hooke's-law spring-mass oscillators under gravity, undamped; velocity Verlet. See SceneData.state_doc for the states."""
    s = size / 64.0
    g = 0.3 * s
    K, T = 2, frames
    radius = rng.uniform(3.0, 5.5, (n, K)) * s
    mass = (radius / (4.0 * s)) ** 2
    omega = 2 * np.pi / rng.uniform(10.0, 30.0, (n, K))               # natural angular frequency
    k = mass * omega ** 2
    anchor_y = 1.5 * s
    anchor_x = (np.arange(K) + 0.5) * size / K - 0.5 + rng.uniform(-0.08, 0.08, (n, K)) * size
    min_len = 5.0 * s                                                   # shortest drawn spring
    amp_max = (size - 1.5 * s - anchor_y - min_len - 2 * radius) / 2
    amp = np.minimum(rng.uniform(0.08, 0.22, (n, K)) * size, amp_max - 0.5)
    y_lo = anchor_y + min_len + radius + amp
    y_hi = size - 1.5 * s - radius - amp
    y_eq = y_lo + rng.random((n, K)) * np.maximum(y_hi - y_lo, 0.0)
    rest = y_eq - anchor_y - g / omega ** 2                            # so that k (y_eq - a - L0) = m g
    phase = rng.uniform(0.0, 2 * np.pi, (n, K))
    y = y_eq + amp * np.cos(phase)
    v = -amp * omega * np.sin(phase)
    # velocity Verlet on m y'' = m g - k (y - anchor_y - L0)
    acc = lambda y: g - (k / mass) * (y - anchor_y - rest)  # noqa: E731
    h = 1.0 / sub_steps
    Y, V = np.empty((n, T, K)), np.empty((n, T, K))
    Y[:, 0], V[:, 0] = y, v
    a = acc(y)
    for t in range(1, T):
        for _ in range(sub_steps):
            v_half = v + 0.5 * h * a
            y = y + h * v_half
            a = acc(y)
            v = v_half + 0.5 * h * a
        Y[:, t], V[:, t] = y, v
    ext = Y - anchor_y - rest[:, None]
    energy = (0.5 * mass[:, None] * V ** 2 + 0.5 * k[:, None] * ext ** 2 - mass[:, None] * g * (Y - anchor_y))
    pos = np.stack([np.broadcast_to(anchor_x[:, None], Y.shape), Y], axis=-1)
    vel = np.stack([np.zeros_like(V), V], axis=-1)
    intensity = rng.integers(180, 256, (n, K))
    cv = Canvas(n, T, size)
    for j in range(K):
        top = np.stack([np.broadcast_to(anchor_x[:, None, j], (n, T)), np.full((n, T), anchor_y)], -1)
        cv.zigzags(top, Y[:, :, j] - radius[:, None, j] - anchor_y, 2.2 * s, 5, 0.45 * s, 130)
        cv.boxes(top, 3.0 * s, 1.0 * s, 150)
        cv.discs(pos[:, :, j], radius[:, None, j], intensity[:, None, j])
    return SceneData(
        frames=cv.frames(),
        states=dict(pos=_f32(pos), vel=_f32(vel), anchor=_f32(np.stack([anchor_x, np.full_like(anchor_x, anchor_y)], -1)),
                    mass=_f32(mass), spring_k=_f32(k), rest_length=_f32(rest), radius=_f32(radius),
                    amplitude=_f32(amp), intensity=intensity.astype(np.uint8), energy=_f32(energy)),
        constants=dict(g=_c(g, "px/frame^2 (downwards, +y)"), num_oscillators=_c(K, "1"),
                       period_range=_c([10.0, 30.0], "frames (2 pi sqrt(m / k))"),
                       amplitude_range=_c([0.08 * size, 0.22 * size], "px"), damping=_c(0.0, "1/frame"),
                       sub_steps=_c(sub_steps, "velocity Verlet steps per frame"),
                       spring_intensity=_c(130, "grey level")),
        state_doc=dict(pos=POS_DOC + "; the two masses (n, T, 2, 2); x is constant",
                       vel=VEL_DOC + "; (n, T, 2, 2); x component 0",
                       anchor="fixed top end of each spring (n, 2, 2), px",
                       mass="mass of each body (n, 2), mass units = (radius / (4 s))^2",
                       spring_k="spring constant k (n, 2), mass/frame^2", rest_length="natural length L0 (n, 2), px",
                       radius="body radius (n, 2), px", amplitude="oscillation amplitude about equilibrium (n, 2), px",
                       intensity="grey level of each body (n, 2), 0..255",
                       energy="energy of each oscillator (n, T, 2): m v^2/2 + k (y - y_anchor - L0)^2 / 2 "
                              "- m g (y - y_anchor), mass*px^2/frame^2 (conserved)"),
        notes="Two independent vertical spring-mass oscillators side by side, each a mass hanging from a fixed "
              "anchor on a massless Hooke's-law spring F = -k (l - L0), l = y - y_anchor (anchor to mass centre), "
              "under gravity; undamped (no energy loss), integrated with velocity Verlet. The spring is drawn as a "
              "zig-zag from the anchor to the top of the mass.",
    )


@_checked
def orbital_motion(rng, n, frames, size, sub_steps=24):
    """Star fixed at the centre, two planets on nested Kepler orbits; Yoshida-4 symplectic. See SceneData.state_doc for the states."""
    s = size / 64.0
    GM = 150.0 * s ** 3
    T = frames
    centre = (size - 1) / 2.0
    r_star = 4.5 * s
    rp = rng.uniform(1.8, 3.2, (n, 2)) * s                              # planet radii
    a1 = rng.uniform(8.0, 13.0, n) * s
    e1 = rng.uniform(0.0, 0.25, n)
    q2_min = a1 * (1 + e1) + rp[:, 0] + rp[:, 1] + 2.0 * s              # inner aphelion + clearance
    Q2_max = size / 2 - 1.0 * s - rp[:, 1] - 0.5
    Q2 = q2_min + rng.random(n) * np.maximum(Q2_max - q2_min, 0.0)
    e2 = rng.random(n) * np.clip((Q2 - q2_min) / (Q2 + q2_min), 0.0, 0.3)
    a2 = Q2 / (1 + e2)
    a, e = np.stack([a1, a2], -1), np.stack([e1, e2], -1)               # (n, 2)
    spin = np.where(rng.random(n) < 0.5, 1.0, -1.0)[:, None]          # same sense for both planets
    peri = rng.uniform(0, 2 * np.pi, (n, 2))
    nu = rng.uniform(0, 2 * np.pi, (n, 2))                              # initial true anomaly
    p = a * (1 - e ** 2)
    r = p / (1 + e * np.cos(nu))
    vr, vt = np.sqrt(GM / p) * e * np.sin(nu), np.sqrt(GM / p) * (1 + e * np.cos(nu))
    ang = spin * nu + peri
    ur = np.stack([np.cos(ang), np.sin(ang)], -1)
    ut = spin[..., None] * np.stack([-np.sin(ang), np.cos(ang)], -1)
    x = r[..., None] * ur                                               # relative to the star, (n, 2, 2)
    v = vr[..., None] * ur + vt[..., None] * ut

    def accel(x):
        # Newtonian central force of the fixed star: a = -GM x / |x|^3 (planets do not attract)
        r2 = np.sum(x * x, -1, keepdims=True)
        return -GM * x / (r2 * np.sqrt(r2))

    # 4th-order Yoshida composition of the leapfrog (symplectic; conserves angular momentum)
    w1 = 1.0 / (2.0 - 2.0 ** (1.0 / 3.0))
    w0 = 1.0 - 2.0 * w1
    cs, ds = (w1 / 2, (w0 + w1) / 2, (w0 + w1) / 2, w1 / 2), (w1, w0, w1)
    h = 1.0 / sub_steps
    X, V = np.empty((n, T, 2, 2)), np.empty((n, T, 2, 2))
    X[:, 0], V[:, 0] = x, v
    for t in range(1, T):
        for _ in range(sub_steps):
            for i in range(3):
                x = x + cs[i] * h * v
                v = v + ds[i] * h * accel(x)
            x = x + cs[3] * h * v
        X[:, t], V[:, t] = x, v
    rr = np.linalg.norm(X, axis=-1)
    energy = 0.5 * np.sum(V ** 2, -1) - GM / rr
    angmom = X[..., 0] * V[..., 1] - X[..., 1] * V[..., 0]
    pos = np.concatenate([np.zeros((n, T, 1, 2)), X], axis=2) + centre
    vel = np.concatenate([np.zeros((n, T, 1, 2)), V], axis=2)
    radius = np.concatenate([np.full((n, 1), r_star), rp], axis=1)
    intensity = np.concatenate([np.full((n, 1), 255), rng.integers(150, 231, (n, 2))], axis=1)
    cv = Canvas(n, T, size)
    for k in range(3):
        cv.discs(pos[:, :, k], radius[:, None, k], intensity[:, None, k])
    return SceneData(
        frames=cv.frames(),
        states=dict(pos=_f32(pos), vel=_f32(vel), radius=_f32(radius), intensity=intensity.astype(np.uint8),
                    semi_major=_f32(a), eccentricity=_f32(e), energy=_f32(energy), angular_momentum=_f32(angmom)),
        constants=dict(GM=_c(GM, "px^3/frame^2"), star_position=_c([centre, centre], "px"),
                       star_radius=_c(r_star, "px"), sub_steps=_c(sub_steps, "Yoshida-4 steps per frame"),
                       semi_major_inner_range=_c([8.0 * s, 13.0 * s], "px"),
                       eccentricity_range=_c([[0.0, 0.25], [0.0, 0.3]], "1 (inner, outer)")),
        state_doc=dict(pos=POS_DOC + "; (n, T, 3, 2): [star (fixed at the centre), inner planet, outer planet]",
                       vel=VEL_DOC + "; (n, T, 3, 2)", radius="drawn radius (n, 3), px",
                       intensity="grey level (n, 3), 0..255",
                       semi_major="semi-major axis of each planet's initial Kepler orbit (n, 2), px",
                       eccentricity="eccentricity of each planet's orbit (n, 2)",
                       energy="specific orbital energy |v|^2/2 - GM/r of each planet (n, T, 2), px^2/frame^2 "
                              "(conserved)",
                       angular_momentum="specific angular momentum (x - x_star) v_y - (y - y_star) v_x of each "
                                        "planet (n, T, 2), px^2/frame (conserved; sign = sense of rotation in "
                                        "image coordinates)"),
        notes="A star fixed at the frame centre and two planets on nested, non-crossing Kepler orbits (varied "
              "size, eccentricity, orientation, phase; both orbit in the same sense). Newtonian 1/r^2 attraction of "
              "the star only (planets are test bodies: no planet-planet force), no softening (perihelia >= 6 px). "
              "Integrated with a 4th-order symplectic (Yoshida) scheme; energy and angular momentum of each planet "
              "are conserved; orbits stay inside the frame.",
    )


# =============================================================================================
# Waves
# =============================================================================================
_EULER_GAMMA = 0.5772156649015329
_J0_COEF = []
_Y0_COEF = []   # series part of Y0: sum_{m>=1} (-1)^(m+1) H_m (x^2/4)^m / (m!)^2
_fac2, _harm = 1.0, 0.0
for _m in range(34):
    if _m:
        _fac2 *= _m * _m
        _harm += 1.0 / _m
    _J0_COEF.append((-1.0) ** _m / _fac2)
    _Y0_COEF.append(0.0 if _m == 0 else (-1.0) ** (_m + 1) * _harm / _fac2)
_SERIES_MAX = 10.0      # series below, Hankel asymptotic expansion above (both ~1e-10 there)


def bessel_j0_y0(x: np.ndarray):
    """Bessel functions J0(x), Y0(x) for x > 0 (float64), with no SciPy dependency.

    x < 10: power series (Abramowitz & Stegun 9.1.12-9.1.13) in z = x^2 / 4, by Horner:
        J0 = sum (-1)^m z^m / (m!)^2,
        Y0 = (2/pi) [(ln(x/2) + gamma) J0 + sum_{m>=1} (-1)^(m+1) H_m z^m / (m!)^2].
    x >= 10: Hankel's asymptotic expansion (A&S 9.2.5, 9.2.9-9.2.10), chi = x - pi/4:
        J0 = sqrt(2/(pi x)) (P cos chi - Q sin chi),  Y0 = sqrt(2/(pi x)) (P sin chi + Q cos chi),
        with terms t_k = t_{k-1} * (-(2k-1)^2) / (k 8x), P = sum_even (-1)^(k/2) t_k,
        Q = sum_odd (-1)^((k-1)/2) t_k, truncated at k = 20 (error < 1e-9 at x = 10)."""
    x = np.asarray(x, np.float64)
    j, y = np.empty_like(x), np.empty_like(x)
    small = x < _SERIES_MAX
    xs = x[small]
    z = 0.25 * xs * xs
    J = np.zeros_like(z)
    S = np.zeros_like(z)
    for cj, cy in zip(reversed(_J0_COEF), reversed(_Y0_COEF)):
        J = J * z + cj
        S = S * z + cy
    j[small] = J
    y[small] = (2.0 / np.pi) * ((np.log(0.5 * xs) + _EULER_GAMMA) * J + S)
    xl = x[~small]
    P, Q, t = np.ones_like(xl), np.zeros_like(xl), np.ones_like(xl)
    inv8x = 1.0 / (8.0 * xl)
    for k in range(1, 21):
        t = t * (-(2 * k - 1) ** 2) * inv8x / k
        if k % 2 == 0:
            P += (-1) ** (k // 2) * t
        else:
            Q += (-1) ** ((k - 1) // 2) * t
    chi = xl - 0.25 * np.pi
    pref = np.sqrt(2.0 / (np.pi * xl))
    c, sn = np.cos(chi), np.sin(chi)
    j[~small] = pref * (P * c - Q * sn)
    y[~small] = pref * (P * sn + Q * c)
    return j, y


def wave_field(states: dict, size: int, t, x, y, dtype=np.float64) -> np.ndarray:
    """The field u(t, x, y) of wave_motion sequences from their stored parameters (float64).

    states: the wave_motion arrays (at least "kind", "amplitude", "wavenumber", "omega",
    "direction", "source", "phase"), each (m, J, ...) for m sequences;
    t: (m, Tq) times in frames; x, y: (m, P) points in px. Returns u (m, Tq, P); the basis is
    computed in float64, the final sum over components in `dtype`.

    u = sum_j A_j psi_j, each psi_j an exact solution of u_tt = c^2 (u_xx + u_yy) with
    omega_j = c k_j:
      plane wave (kind 0):       psi = cos(k (x cos a + y sin a) - omega t + phi);
      cylindrical wave (kind 1): psi = Re[H0(k r) e^{-i(omega t - phi)}] / |H0(k r_ref)|
                                     = [J0(kr) cos(omega t - phi) + Y0(kr) sin(omega t - phi)] / |H0(k r_ref)|,
        H0 = J0 + i Y0 the outgoing Hankel function, r = distance to the source, r_ref = size / 4
        (so A_j is the amplitude at distance r_ref; it decays like r^-1/2 far from the source).
    Both are written as a(x) cos(omega t) + b(x) sin(omega t), so u = coef(t) @ basis(x)."""
    kind = np.asarray(states["kind"])
    A = np.asarray(states["amplitude"], np.float64)
    kw = np.asarray(states["wavenumber"], np.float64)
    om = np.asarray(states["omega"], np.float64)
    di = np.asarray(states["direction"], np.float64)
    src = np.asarray(states["source"], np.float64)
    ph = np.asarray(states["phase"], np.float64)
    t = np.asarray(t, np.float64)
    x = np.asarray(x, np.float64)
    y = np.asarray(y, np.float64)
    m, J = A.shape
    basis = np.zeros((m, 2 * J, x.shape[1]))
    r_ref = size / 4.0
    for j in range(J):
        plane = np.nonzero((kind[:, j] == 0) & (A[:, j] != 0))[0]
        if plane.size:
            arg = kw[plane, j, None] * (x[plane] * np.cos(di[plane, j, None]) + y[plane] * np.sin(di[plane, j, None]))
            arg += ph[plane, j, None]
            basis[plane, 2 * j] = np.cos(arg)           # cos(arg - wt) = cos(arg) cos(wt) + sin(arg) sin(wt)
            basis[plane, 2 * j + 1] = np.sin(arg)
        cyl = np.nonzero((kind[:, j] == 1) & (A[:, j] != 0))[0]
        if cyl.size:
            rr = np.hypot(x[cyl] - src[cyl, j, 0, None], y[cyl] - src[cyl, j, 1, None])
            kr = kw[cyl, j, None] * np.maximum(rr, 1e-6)
            J0, Y0 = bessel_j0_y0(kr)
            j_ref, y_ref = bessel_j0_y0(kw[cyl, j] * r_ref)
            norm = 1.0 / np.hypot(j_ref, y_ref)[:, None]
            c, sn = np.cos(ph[cyl, j, None]), np.sin(ph[cyl, j, None])
            basis[cyl, 2 * j] = (J0 * c - Y0 * sn) * norm
            basis[cyl, 2 * j + 1] = (J0 * sn + Y0 * c) * norm
    wt = om[:, None, :] * t[:, :, None]                                 # (m, Tq, J)
    coef = np.empty((m, t.shape[1], 2 * J))
    coef[..., 0::2] = A[:, None, :] * np.cos(wt)
    coef[..., 1::2] = A[:, None, :] * np.sin(wt)
    return np.matmul(coef.astype(dtype), basis.astype(dtype))


@_checked
def wave_motion(rng, n, frames, size):
    """Superposed exact solutions of the 2-D wave equation (plane and outgoing cylindrical waves). See SceneData.state_doc for the states."""
    s = size / 64.0
    J, T = 3, frames
    ncomp = rng.integers(1, J + 1, n)
    active = np.arange(J)[None, :] < ncomp[:, None]
    kind = rng.integers(0, 2, (n, J))
    lam = rng.uniform(8.0, 24.0, (n, J)) * s
    lam_min = np.min(np.where(active, lam, np.inf), axis=1)
    c_hi = np.minimum(1.5 * s, lam_min / 5.0)                          # temporal period >= 5 frames
    speed = 0.4 * s + rng.random(n) * (c_hi - 0.4 * s)
    w = rng.uniform(0.5, 1.0, (n, J)) * active
    amp = w / w.sum(axis=1, keepdims=True)
    direction = rng.uniform(0, 2 * np.pi, (n, J))
    source = rng.uniform(-0.25, 1.25, (n, J, 2)) * (size - 1)
    phase = rng.uniform(0, 2 * np.pi, (n, J))
    direction = np.where(kind == 0, direction, 0.0)
    source = np.where((kind == 1)[..., None], source, 0.0)
    k = 2 * np.pi / lam
    lam, k, phase = lam * active, k * active, phase * active           # unused slots all zero
    states = dict(kind=np.where(active, kind, -1).astype(np.int8), amplitude=_f32(amp), wavelength=_f32(lam),
                  wavenumber=_f32(k), omega=_f32(speed[:, None] * k), speed=_f32(speed),
                  direction=_f32(direction), source=_f32(source), phase=_f32(phase),
                  num_components=ncomp.astype(np.int8))
    # the frames are made from the stored float32 parameters, so they reproduce exactly
    yy, xx = np.meshgrid(np.arange(size, dtype=np.float64), np.arange(size, dtype=np.float64), indexing="ij")
    pts_x = np.broadcast_to(xx.reshape(1, -1), (n, size * size))
    pts_y = np.broadcast_to(yy.reshape(1, -1), (n, size * size))
    times = np.broadcast_to(np.arange(T, dtype=np.float64)[None], (n, T))
    u = wave_field(states, size, times, pts_x, pts_y, dtype=np.float32).reshape(n, T, size, size)
    return SceneData(
        frames=field_to_uint8(u),
        states=states,
        constants=dict(speed_range=_c([0.4 * s, 1.5 * s], "px/frame"), wavelength_range=_c([8.0 * s, 24.0 * s], "px"),
                       max_components=_c(J, "1"), reference_distance=_c(size / 4.0, "px"),
                       grey_level=_c("round(127.5 (1 + u)), clipped to 0..255", "grey level")),
        state_doc=dict(kind="type of component j (n, 3): 0 plane wave, 1 cylindrical wave from a point source, "
                            "-1 unused",
                       amplitude="amplitude A_j (n, 3), field units (sum over components = 1; 0 if unused); for a "
                                 "cylindrical wave the amplitude at distance reference_distance from its source",
                       wavelength="wavelength (n, 3), px", wavenumber="k = 2 pi / wavelength (n, 3), rad/px",
                       omega="angular frequency omega = c k (n, 3), rad/frame", speed="wave speed c (n,), px/frame",
                       direction="propagation direction of a plane wave (n, 3), rad from +x towards +y (0 otherwise)",
                       source="point source of a cylindrical wave (n, 3, 2), px, may lie outside the frame "
                              "(0 otherwise)",
                       phase="phase phi_j (n, 3), rad", num_components="number of components used (n,)"),
        notes="Superposition of 1-3 exact solutions of the 2-D wave equation u_tt = c^2 (u_xx + u_yy) with a "
              "single speed c per sequence (non-dispersive, omega = c k): plane waves cos(k.x - omega t + phi) "
              "and outgoing cylindrical waves Re[H0(k r) exp(-i(omega t - phi))] (H0 = J0 + i Y0, amplitude "
              "falling like r^-1/2). No damping. Rendered as grey = 127.5 (1 + u); physics.wave_field(states, "
              "size, t, x, y) recomputes u from the stored parameters.",
    )


SCENES: dict[str, Callable[[np.random.Generator, int, int, int], SceneData]] = {
    "bouncing_balls": bouncing_balls,
    "pendulum": pendulum,
    "spring_mass": spring_mass,
    "multi_ball_collision": multi_ball_collision,
    "projectile": projectile,
    "double_pendulum": double_pendulum,
    "falling_objects": falling_objects,
    "wave_motion": wave_motion,
    "orbital_motion": orbital_motion,
}
