"""Tests of the physics simulators and the rasteriser (data_utils/physics.py, render.py).

    .venv/bin/python -m pytest tests/test_physics.py -q

Everything is checked from the stored states (float32), as a user of the datasets would:
conservation laws, constant gravity between impacts, rigid rods, collisions without overlap,
agreement between the states and the drawn frames, shapes, determinism and the wave equation.
"""
import numpy as np
import pytest

from data_utils import physics, render

N, T, S = 24, 20, 64
NAMES = list(physics.SCENES)
BODY_SCENES = [n for n in NAMES if n != "wave_motion"]


@pytest.fixture(scope="module")
def data():
    """One batch per scene, made once for the whole module."""
    return {name: physics.SCENES[name](np.random.default_rng(1234 + i), N, T, S) for i, name in enumerate(NAMES)}


def _g(d):
    return d.constants["g"]["value"]


# --- contract: shapes, dtypes, documentation, determinism ---------------------------------------
@pytest.mark.parametrize("name", NAMES)
def test_shapes_dtypes_and_docs(data, name):
    d = data[name]
    assert isinstance(d, physics.SceneData)
    assert d.frames.dtype == np.uint8 and d.frames.shape == (N, T, S, S)
    assert d.frames.max() > 0
    for key, arr in d.states.items():
        assert arr.shape[0] == N, key
        assert arr.dtype != np.float64, key
        assert np.all(np.isfinite(arr)), key
        assert key in d.state_doc and d.state_doc[key], key
    assert set(d.state_doc) == set(d.states)
    for key, c in d.constants.items():
        assert set(c) == {"value", "unit"}, key
    assert isinstance(d.notes, str) and d.notes
    if name in BODY_SCENES:
        K = d.states["pos"].shape[2]
        for key in ("pos", "vel"):
            assert d.states[key].shape == (N, T, K, 2) and d.states[key].dtype == np.float32


@pytest.mark.parametrize("name", NAMES)
def test_size_and_frames_arguments(name):
    d = physics.SCENES[name](np.random.default_rng(7), 5, 8, 32)
    assert d.frames.shape == (5, 8, 32, 32) and d.frames.dtype == np.uint8
    for key, arr in d.states.items():
        assert arr.shape[0] == 5, key
    if name in BODY_SCENES:
        pos = d.states["pos"]
        assert pos.shape[:2] == (5, 8)
        assert np.all((pos > -0.5) & (pos < 31.5))


@pytest.mark.parametrize("name", NAMES)
def test_deterministic(name):
    f = physics.SCENES[name]
    a, b = f(np.random.default_rng(5), 6, 10, 48), f(np.random.default_rng(5), 6, 10, 48)
    c = f(np.random.default_rng(6), 6, 10, 48)
    assert a.frames.tobytes() == b.frames.tobytes()
    for key in a.states:
        assert a.states[key].tobytes() == b.states[key].tobytes(), key
    assert a.frames.tobytes() != c.frames.tobytes()


@pytest.mark.parametrize("name", BODY_SCENES)
def test_bodies_stay_in_frame(data, name):
    d = data[name]
    pos = d.states["pos"]
    if "half_size" in d.states:
        ext = d.states["half_size"][:, None]                       # (N, 1, K, 2)
    else:
        r = d.states["radius"].reshape(N, 1, -1, 1)
        ext = np.broadcast_to(r, (N, 1, pos.shape[2], 2))
    assert np.all(pos - ext >= -0.5 - 1e-3) and np.all(pos + ext <= S - 0.5 + 1e-3)


# --- states agree with the frames -----------------------------------------------------------------
@pytest.mark.parametrize("name", BODY_SCENES)
def test_drawn_centroid_matches_pos(data, name):
    """Intensity-weighted centroid of the pixels within (extent + 1) of each isolated body's
    stored centre lies within a fraction of a pixel of it."""
    d = data[name]
    pos = d.states["pos"].astype(np.float64)                        # (N, T, K, 2)
    K = pos.shape[2]
    if "half_size" in d.states:
        ext = np.broadcast_to(d.states["half_size"][:, None], pos.shape).astype(np.float64)
        circular = False
    else:
        ext = np.broadcast_to(d.states["radius"].reshape(N, 1, K, 1), pos.shape).astype(np.float64)
        circular = True
    yy, xx = np.mgrid[0:S, 0:S]
    errs = []
    for i in range(N):
        for t in range(T):
            for k in range(K):
                c, e = pos[i, t, k], ext[i, t, k]
                if np.any(c - e < 2) or np.any(c + e > S - 3):
                    continue                                      # touching the border: clipped
                others = [j for j in range(K) if j != k]
                if any(np.max(np.abs(pos[i, t, j] - c) - ext[i, t, j] - e) < 3 for j in others):
                    continue                                      # another body too close
                if circular:
                    win = np.hypot(xx - c[0], yy - c[1]) <= e[0] + 1.0
                else:
                    win = (np.abs(xx - c[0]) <= e[0] + 1.0) & (np.abs(yy - c[1]) <= e[1] + 1.0)
                w = d.frames[i, t].astype(np.float64) * win
                if w.sum() == 0:
                    errs.append(np.inf)
                    continue
                cen = np.array([(w * xx).sum(), (w * yy).sum()]) / w.sum()
                errs.append(np.hypot(*(cen - c)))
    errs = np.array(errs)
    assert errs.size > N * T // 4, "too few isolated bodies to check"
    assert errs.mean() < 0.15 and errs.max() < 0.5, (errs.mean(), errs.max())


# --- conservation laws ----------------------------------------------------------------------------
def test_pendulum_rod_rigid_and_energy(data):
    d = data["pendulum"]
    st = d.states
    p = st["pos"][:, :, 0].astype(np.float64)
    v = st["vel"][:, :, 0].astype(np.float64)
    piv = st["pivot"][:, None].astype(np.float64)
    L = st["length"][:, None].astype(np.float64)
    assert np.max(np.abs(np.linalg.norm(p - piv, axis=-1) - L)) < 1e-4
    g = _g(d)
    # energy per unit mass from positions and velocities: |v|^2/2 - g (y - y_pivot)
    E = 0.5 * np.sum(v ** 2, -1) - g * (p[..., 1] - piv[..., 1])
    assert np.max(np.abs(E - E[:, :1]) / (g * L)) < 1e-5
    assert np.allclose(E, st["energy"], atol=1e-3 * g * L.max())
    # velocity is tangent to the circle (rigid rod)
    assert np.max(np.abs(np.sum((p - piv) * v, -1)) / L) < 1e-4
    assert st["amplitude"].max() > 2.0                               # large, nonlinear swings occur


def test_double_pendulum_rods_and_energy(data):
    d = data["double_pendulum"]
    st = d.states
    p = st["pos"].astype(np.float64)
    v = st["vel"].astype(np.float64)
    piv = st["pivot"][:, None].astype(np.float64)
    L = st["length"].astype(np.float64)
    m = st["mass"].astype(np.float64)
    assert np.max(np.abs(np.linalg.norm(p[:, :, 0] - piv, axis=-1) - L[:, :1])) < 1e-4
    assert np.max(np.abs(np.linalg.norm(p[:, :, 1] - p[:, :, 0], axis=-1) - L[:, 1:])) < 1e-4
    g = _g(d)
    E = (0.5 * np.sum(m[:, None] * np.sum(v ** 2, -1), -1)
         - g * np.sum(m[:, None] * (p[..., 1] - piv[..., 1:2]), -1))
    scale = g * m.sum(1) * L.sum(1)                                   # potential energy range / 2
    drift = np.max(np.abs(E - E[:, :1]), axis=1) / scale
    assert drift.max() < 1e-4, drift.max()
    # chaotic: some sequences reach high angular speed / flip over
    assert np.abs(st["theta"][..., 1]).max() > np.pi / 2


def test_spring_mass_hooke_and_energy(data):
    d = data["spring_mass"]
    st = d.states
    y = st["pos"][..., 1].astype(np.float64)                          # (N, T, K)
    vy = st["vel"][..., 1].astype(np.float64)
    m, k, L0 = (st[key][:, None].astype(np.float64) for key in ("mass", "spring_k", "rest_length"))
    ya = st["anchor"][:, None, :, 1].astype(np.float64)
    g = _g(d)
    E = 0.5 * m * vy ** 2 + 0.5 * k * (y - ya - L0) ** 2 - m * g * (y - ya)
    osc = 0.5 * k * st["amplitude"][:, None].astype(np.float64) ** 2  # energy of the oscillation
    assert np.max(np.abs(E - E[:, :1]) / osc) < 2e-3
    # Hooke's law with gravity: the acceleration (second difference) is g - k/m (y - ya - L0)
    acc = y[:, 2:] - 2 * y[:, 1:-1] + y[:, :-2]
    pred = g - k / m * (y[:, 1:-1] - ya - L0)
    # second difference of a harmonic motion = a * (2 - 2 cos w) / w^2 ~ a (1 - w^2/12)
    w2 = (k / m)
    assert np.max(np.abs(acc - pred * (2 - 2 * np.cos(np.sqrt(w2))) / w2)) < 2e-3 * S / 64


def test_orbits_conserve_energy_and_angular_momentum(data):
    d = data["orbital_motion"]
    st = d.states
    GM = d.constants["GM"]["value"]
    star = np.asarray(d.constants["star_position"]["value"])
    rel = st["pos"][:, :, 1:].astype(np.float64) - star
    v = st["vel"][:, :, 1:].astype(np.float64)
    assert np.all(st["pos"][:, :, 0] == star.astype(np.float32))
    E = 0.5 * np.sum(v ** 2, -1) - GM / np.linalg.norm(rel, axis=-1)
    Lz = rel[..., 0] * v[..., 1] - rel[..., 1] * v[..., 0]
    assert np.max(np.abs(E / E[:, :1] - 1)) < 1e-4
    assert np.max(np.abs(Lz / Lz[:, :1] - 1)) < 1e-5
    assert np.all(E < 0)                                                   # bound orbits
    # each planet moves a good part of its orbit: the angle swept is visible
    ang = np.unwrap(np.arctan2(rel[..., 1], rel[..., 0]), axis=1)
    assert np.median(np.abs(ang[:, -1] - ang[:, 0])[:, 0]) > 1.0


def test_multi_ball_collisions(data):
    d = data["multi_ball_collision"]
    st = d.states
    p, v, r, m = (st[k].astype(np.float64) for k in ("pos", "vel", "radius", "mass"))
    K = p.shape[2]
    i, j = np.triu_indices(K, 1)
    dist = np.linalg.norm(p[:, :, i] - p[:, :, j], axis=-1)
    assert np.all(dist >= (r[:, i] + r[:, j])[:, None] - 1e-3)       # never interpenetrate
    ke = 0.5 * np.sum(m[:, None] * np.sum(v ** 2, -1), -1)
    assert np.max(np.abs(ke / ke[:, :1] - 1)) < 1e-5
    # momentum: unchanged over every frame interval without a wall bounce, even across collisions
    P = np.sum(m[:, None, :, None] * v, axis=2)                        # (N, T, 2)
    no_wall = np.all(st["wall_hits"][:, 1:] == st["wall_hits"][:, :-1], axis=-1)
    with_coll = np.any(st["ball_hits"][:, 1:] != st["ball_hits"][:, :-1], axis=-1)
    dP = np.linalg.norm(P[:, 1:] - P[:, :-1], axis=-1)
    scale = np.sum(m * np.linalg.norm(v[:, 0], axis=-1), axis=1)[:, None]
    assert np.any(no_wall & with_coll), "no collision to check"
    assert np.max((dP / scale)[no_wall]) < 1e-5
    # and the velocity really changes in those collisions
    dv = np.abs(v[:, 1:] - v[:, :-1]).max(axis=(-1, -2))
    assert np.min(dv[no_wall & with_coll]) > 1e-3
    assert np.allclose(st["momentum"], P, atol=1e-4)


def test_bouncing_balls_energy_gravity_overlap(data):
    d = data["bouncing_balls"]
    st = d.states
    p, v, r, m = (st[k].astype(np.float64) for k in ("pos", "vel", "radius", "mass"))
    g = _g(d)
    h = (S - 0.5 - r)[:, None] - p[..., 1]
    E = np.sum(m[:, None] * (0.5 * np.sum(v ** 2, -1) + g * h), -1)
    assert np.max(np.abs(E / E[:, :1] - 1)) < 1e-5
    K = p.shape[2]
    i, j = np.triu_indices(K, 1)
    dist = np.linalg.norm(p[:, :, i] - p[:, :, j], axis=-1)
    assert np.all(dist >= (r[:, i] + r[:, j])[:, None] - 1e-3)
    assert (st["wall_hits"][:, -1].sum() > 0) and (st["ball_hits"][:, -1].sum() > 0)
    # between impacts: y'' = g, x'' = 0 (second differences over frames t-1, t, t+1)
    hits = st["wall_hits"] + st["ball_hits"]
    free = hits[:, 2:] == hits[:, :-2]                                  # (N, T-2, K)
    acc = p[:, 2:] - 2 * p[:, 1:-1] + p[:, :-2]
    assert free.sum() > N * T
    assert np.max(np.abs(acc[..., 1][free] - g)) < 1e-4
    assert np.max(np.abs(acc[..., 0][free])) < 1e-4


def test_projectile_gravity_and_bounces(data):
    d = data["projectile"]
    st = d.states
    y = st["pos"][:, :, 0, 1].astype(np.float64)
    x = st["pos"][:, :, 0, 0].astype(np.float64)
    g = _g(d)
    b = st["bounces"]
    free = (b[:, 2:] == b[:, :-2]) & ~st["at_rest"][:, 2:]
    acc = y[:, 2:] - 2 * y[:, 1:-1] + y[:, :-2]
    assert free.sum() > N * T // 2
    assert np.max(np.abs(acc[free] - g)) < 1e-4
    assert np.max(np.abs(x[:, 2:] - 2 * x[:, 1:-1] + x[:, :-2])) < 1e-4   # no horizontal force
    # velocity state is the derivative of the position: central difference = v at the middle frame
    vy = st["vel"][:, :, 0, 1].astype(np.float64)
    assert np.max(np.abs(((y[:, 2:] - y[:, :-2]) / 2 - vy[:, 1:-1])[free])) < 1e-4
    # energy of the vertical motion, vy^2/2 - g y: constant in flight, lost at each bounce (e < 1)
    E = 0.5 * vy ** 2 - g * y
    dE = E[:, 1:] - E[:, :-1]
    bounced = (b[:, 1:] > b[:, :-1]) & ~st["at_rest"][:, 1:]
    assert bounced.any()
    assert np.all(dE[bounced] < -1e-3)
    flight = (b[:, 1:] == b[:, :-1]) & ~st["at_rest"][:, 1:]
    assert np.max(np.abs(dE[flight])) < 1e-3


def test_falling_objects_gravity_and_floor(data):
    d = data["falling_objects"]
    st = d.states
    y = st["pos"][..., 1].astype(np.float64)                           # (N, T, K)
    g = _g(d)
    imp, rest, rel = st["impacts"], st["at_rest"], st["released"]
    free = rel[:, :-2] & (imp[:, 2:] == imp[:, :-2]) & ~rest[:, 2:]
    acc = y[:, 2:] - 2 * y[:, 1:-1] + y[:, :-2]
    assert free.sum() > N * T // 2
    assert np.max(np.abs(acc[free] - g)) < 1e-4
    # held still before release, never below the floor, resting objects stay put
    assert np.all(np.diff(y, axis=1)[~rel[:, 1:]] == 0)
    floor = S - 0.5 - st["half_size"][:, None, :, 1]
    assert np.all(y <= floor + 1e-4)
    assert np.all(np.abs(y - floor)[rest] < 1e-4)
    assert rest.any() and (imp[:, -1] > 0).any()
    # the objects never touch each other: their x extents are disjoint
    x = st["pos"][:, 0, :, 0]
    hw = st["half_size"][..., 0]
    assert np.all(x[:, 1:] - hw[:, 1:] > x[:, :-1] + hw[:, :-1])


# --- waves ----------------------------------------------------------------------------------------
def test_bessel_values():
    x = np.array([1.0, 5.0, 10.0, 20.0])
    j0, y0 = physics.bessel_j0_y0(x)
    # reference values (Abramowitz & Stegun, table 9.1)
    assert np.allclose(j0, [0.7651976866, -0.1775967713, -0.2459357645, 0.1670246643], atol=1e-9)
    assert np.allclose(y0, [0.0882569642, -0.3085176252, 0.0556711673, 0.0626405968], atol=1e-9)


def test_wave_frames_reproduce_from_parameters(data):
    d = data["wave_motion"]
    st = d.states
    yy, xx = np.mgrid[0:S, 0:S].astype(np.float64)
    u = physics.wave_field(st, S, np.broadcast_to(np.arange(T, dtype=float), (N, T)),
                           np.broadcast_to(xx.ravel(), (N, S * S)), np.broadcast_to(yy.ravel(), (N, S * S)))
    img = render.field_to_uint8(u.reshape(N, T, S, S))
    assert np.abs(img.astype(int) - d.frames).max() <= 1
    assert np.allclose(st["omega"], st["speed"][:, None] * st["wavenumber"], rtol=1e-6)
    assert set(np.unique(st["kind"])) <= {-1, 0, 1} and (st["kind"] == 1).any() and (st["kind"] == 0).any()


def test_wave_field_satisfies_wave_equation(data):
    """Finite differences on the analytic field: u_tt = c^2 (u_xx + u_yy) to O(h^2)."""
    st = data["wave_motion"].states
    rng = np.random.default_rng(0)
    h = 0.01
    x = rng.uniform(0, S - 1, (N, 40))
    y = rng.uniform(0, S - 1, (N, 40))
    t0 = rng.uniform(0, T - 1, (N, 1))
    src = st["source"].astype(np.float64)
    near = np.zeros_like(x, bool)
    for j in range(src.shape[1]):
        near |= (st["kind"][:, j, None] == 1) & (np.hypot(x - src[:, j, None, 0], y - src[:, j, None, 1]) < 3)
    pts_x = np.concatenate([x, x + h, x - h, x, x], axis=1)
    pts_y = np.concatenate([y, y, y, y + h, y - h], axis=1)
    u = physics.wave_field(st, S, np.concatenate([t0 - h, t0, t0 + h], axis=1), pts_x, pts_y)
    P = x.shape[1]
    uc = u[:, 1, :P]
    u_tt = (u[:, 0, :P] - 2 * uc + u[:, 2, :P]) / h ** 2
    lap = (u[:, 1, P:2 * P] + u[:, 1, 2 * P:3 * P] + u[:, 1, 3 * P:4 * P] + u[:, 1, 4 * P:] - 4 * uc) / h ** 2
    c2 = st["speed"].astype(np.float64)[:, None] ** 2
    scale = np.max(np.abs(u_tt[~near]))
    res = np.abs(u_tt - c2 * lap)[~near]
    assert scale > 1e-3 and res.max() < 1e-3 * scale, (res.max(), scale)


# --- rasteriser -----------------------------------------------------------------------------------
def test_render_disc_coverage_and_max_combine():
    cv = render.Canvas(1, 2, 16)
    c = np.array([[[7.3, 8.6], [-1.0, 5.0]]], np.float32)               # second frame: partly outside
    cv.discs(c, 3.0, 200)
    cv.discs(c + np.float32([1.0, 0.0]), 2.0, 100)                     # dimmer disc inside: max keeps 200
    f = cv.frames()
    assert f.shape == (1, 2, 16, 16)
    area = f[0, 0].astype(float).sum() / 200
    assert abs(area - np.pi * 9) < 0.3                                # anti-aliased area = pi r^2
    yy, xx = np.mgrid[0:16, 0:16]
    w = f[0, 0].astype(float)
    assert abs((w * xx).sum() / w.sum() - 7.3) < 0.05 and abs((w * yy).sum() / w.sum() - 8.6) < 0.05
    assert f[0, 0].max() == 200 and f[0, 1, 5, 0] == 200 and f[0, 1, :, 4:].max() == 0
    # axis-aligned box: exact area
    cv = render.Canvas(1, 1, 16)
    cv.boxes(np.array([[[7.2, 7.7]]], np.float32), 3.0, 2.0, 255)
    assert abs(cv.frames().astype(float).sum() / 255 - 24.0) < 0.05


def test_bad_arguments_raise_one_line_errors():
    with pytest.raises(ValueError, match="size"):
        physics.SCENES["pendulum"](np.random.default_rng(0), 2, 5, 8)
    with pytest.raises(ValueError, match="n >= 1"):
        physics.SCENES["wave_motion"](np.random.default_rng(0), 0, 5, 64)


def test_scenes_pickle_by_reference():
    """The CLIs send scene functions to worker processes."""
    import pickle

    for name, f in physics.SCENES.items():
        assert pickle.loads(pickle.dumps(f)) is f, name
