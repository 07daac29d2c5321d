"""training/layers.py and predict="layers": velocity fits, segmentation into moving
objects, template tracking, the untrained constant-velocity rollout, and a tiny model
that learns a wall bounce from tracked positions."""
import pytest
import torch

from training.layers import composite, fit_velocity, observe_layers, segment, shift, track
from training.world_model import SharpWorldModelV2

TINY = dict(channels=16, code_dim=8, num_codes=32, hidden=16, layers=1, predict="layers")


def _square(frame, x0, y0, size=8):
    """A textured (not flat) square: template matching needs structure to lock onto."""
    frame[y0:y0 + size, x0:x0 + size] = torch.linspace(0.3, 1.0, size)[None, :] * torch.linspace(0.6, 1.0, size)[:, None]


def _two_squares(T=6):
    """Square A moves (+3, 0) px/frame from (6, 8); square B moves (0, -2) from (44, 44)."""
    x = torch.zeros(1, T, 1, 64, 64)
    for t in range(T):
        _square(x[0, t, 0], 6 + 3 * t, 8)
        _square(x[0, t, 0], 44, 44 - 2 * t)
    return x


def test_fit_velocity_recovers_subpixel_speed_and_restarts_after_a_bounce():
    t = torch.arange(9, dtype=torch.float32)
    px = torch.round(0.3 + 2.6 * t)                          # drawn at whole pixels
    py = torch.tensor([0, 3, 6, 9, 12, 9, 6, 3, 0], dtype=torch.float32)   # turns at frame 4
    v = fit_velocity(torch.stack([px, py], -1).long())
    assert abs(v[0] - 2.6) < 0.1 and abs(v[1] + 3.0) < 1e-4


def test_shift_moves_by_whole_pixels():
    x = torch.zeros(1, 8, 8)
    x[0, 2, 3] = 1.0
    y = shift(x, torch.tensor([[2, -1]]))
    assert y[0, 1, 5] == 1.0 and y.sum() == 1.0


def test_segmentation_separates_objects_by_motion_and_tracking_follows_them():
    x = _two_squares()
    L, v = observe_layers(x[:, :5], objects=2)
    last = x[0, 4, 0]
    # Each square lands whole in one layer, and the two layers together are the frame.
    a = L[0, :, 8:16, 18:26].sum((1, 2))
    b = L[0, :, 36:44, 44:52].sum((1, 2))
    assert a.max() == a.sum() and b.max() == b.sum() and a.argmax() != b.argmax()
    assert torch.allclose(L[0].sum(0), last)
    assert torch.allclose(v[0, a.argmax()], torch.tensor([3.0, 0.0]), atol=0.05)
    assert torch.allclose(v[0, b.argmax()], torch.tensor([0.0, -2.0]), atol=0.05)
    P, score = track(x, L, 4, 5)                               # one frame on
    assert P[0, a.argmax(), 5].tolist() == [3, 0] and P[0, b.argmax(), 5].tolist() == [0, -2]
    assert score[0, :, 5].min() > 0.99


def test_fit_velocity_reverses_when_the_bounce_is_on_the_last_frame():
    """The newest displacement alone breaks the run (the folded one of a wall bounce):
    the velocity is the run before's, reversed, not the folded displacement."""
    t = torch.arange(9, dtype=torch.float32)
    px = torch.cat([torch.round(0.2 + 3.2 * t[:8]), torch.tensor([24.0])])   # ..., 19, 22, 23 (folded +1)
    py = torch.zeros(9)
    v = fit_velocity(torch.stack([px, py], -1).long())
    assert abs(v[0] + 3.2) < 0.1 and v[1] == 0


def _overlapping_squares(T=8):
    """Square A moves (+3, 0) px/frame, square B (-3, +1); they overlap in the last frame,
    combined by their maximum as Moving MNIST draws digits. Returns the clip and each
    square alone in the last frame."""
    x = torch.zeros(1, T, 1, 64, 64)
    for t in range(T):
        a, b = torch.zeros(64, 64), torch.zeros(64, 64)
        _square(a, 4 + 3 * t, 20, size=10)
        _square(b, 46 - 3 * t, 16 + t, size=10)
        b[16 + t:26 + t, 46 - 3 * t:56 - 3 * t] = b[16 + t:26 + t, 46 - 3 * t:56 - 3 * t].flip(1)  # its own texture
        x[0, t, 0] = torch.maximum(a, b)
    return x, a, b


def test_cut_by_dominant_motions_and_templates_from_all_context_frames():
    """The cut gives each square the pixels its own motion explains; where the squares
    overlap in the last frame, the templates, read from the frames in which they stand
    apart, are each whole square alone, and the velocities are each square's."""
    x, a, b = _overlapping_squares()
    assert (a > 0).logical_and(b > 0).sum() > 10                  # they overlap
    cut = segment(x, 2)
    assert torch.allclose(cut[0].sum(0), x[0, -1, 0])             # the cut partitions the last frame
    L, v = observe_layers(x, 2)
    ka = int((L[0] * a).sum((1, 2)).argmax())
    assert torch.allclose(L[0, ka], a, atol=1e-6) and torch.allclose(L[0, 1 - ka], b, atol=1e-6)
    assert torch.allclose(v[0, ka], torch.tensor([3.0, 0.0]), atol=0.05)
    assert torch.allclose(v[0, 1 - ka], torch.tensor([-3.0, 1.0]), atol=0.05)


def test_a_single_moving_object_leaves_the_other_layers_empty():
    x = _two_squares()
    x[:, :, :, 30:, :] = 0                                        # only square A is left
    L, v = observe_layers(x[:, :5], objects=3)
    filled = L[0].flatten(1).amax(1) > 0
    assert filled.sum() == 1 and torch.allclose(L[0].sum(0), x[0, 4, 0])
    assert (v[0, ~filled] == 0).all()


def test_untrained_layer_model_moves_objects_at_their_velocity():
    torch.manual_seed(0)
    model = SharpWorldModelV2(**TINY).eval()
    x = _two_squares(T=8)
    with torch.no_grad():
        state = model.observe(x[:, :5])
        out = model.imagine(state, 3)
    assert out["frames"].shape == (1, 3, 1, 64, 64) and out["codes"].shape == (1, 3, 16, 16)
    assert out["frames"].min() >= 0 and out["frames"].max() <= 1
    # The head starts at zero: the layers keep their observed velocity (constant velocity),
    # so the overlay before re-tokenising is the true future frame.
    moved = composite(state["layers"], 3 * state["velocity"])
    assert (moved[0, 0] - x[0, 7, 0]).abs().max() < 0.05


def test_layer_loss_teaches_a_wall_bounce():
    """A square moving +3 px/frame turns back at x = 40 in the predicted frames; the
    constant-velocity start misses the turn, training on tracked positions learns it."""
    torch.manual_seed(0)
    xs = [16, 19, 22, 25, 28, 31, 34, 37, 40, 37, 34, 31]
    frames = torch.zeros(1, len(xs), 1, 64, 64)
    for t, x0 in enumerate(xs):
        _square(frames[0, t, 0], x0, 20)
    context = 6
    model = SharpWorldModelV2(**TINY, objects=1)
    model.tokenizer.requires_grad_(False)
    L, v = observe_layers(frames[:, :context], 1)
    P, S = track(frames, L, context - 1, len(xs) - 1)
    batch = {"frames": frames, "codes": model.encode_clip(frames), "L": L, "velocity": v, "positions": P, "score": S}
    assert P[0, 0, context:, 0].tolist() == [3, 6, 9, 6, 3, 0]      # the targets see the turn
    opt = torch.optim.Adam(model.dynamics.parameters(), 1e-2)

    def error():
        return model(batch, context)[1]["track_px"]
    before = error()
    for _ in range(80):
        loss, logs = model(batch, context)
        opt.zero_grad(); loss.backward(); opt.step()
    after = error()
    assert before[-1] == 9.0 and after[-1] < 0.3 * before[-1]   # mean over x and y: 18 px off in x


def test_layers_takes_actions_but_has_no_reward_head():
    """The layers unit's compact state (each layer's offset and velocity) has nothing a
    reward head reads: a config asking for one is refused with the fix named; actions are
    taken (tests/test_world_model.py checks where they act)."""
    with pytest.raises(ValueError, match="predict=motion"):
        SharpWorldModelV2(**TINY, reward_head=True)
    assert SharpWorldModelV2(**TINY, action_dim=2).dynamics.action_dim == 2


def test_benchmark_layers_section_scores_each_dataset(tmp_path):
    """`benchmark.py --section layers`: untrained rigid layers beside copy-last and blank,
    one row per dataset; on squares moving at constant velocity they beat copy-last and
    keep all the ink; a missing dataset is a one-line error."""
    import numpy as np

    from evaluation import benchmark

    folder = tmp_path / "moving_mnist"
    folder.mkdir()
    x = torch.zeros(3, 8, 64, 64)
    for t in range(8):
        x[:, t, 10:18, 5 + 3 * t:13 + 3 * t] = 1.0
        x[:, t, 40:48, 50 - 2 * t:58 - 2 * t] = 0.8
    np.save(folder / "test.npy", (x * 255).to(torch.uint8).numpy())
    (folder / "meta.json").write_text("{}")   # what marks a dataset folder; the section reads only the frames
    res = benchmark.main(["--section", "layers", "--datasets", "moving_mnist", "--data-root", str(tmp_path),
                          "--out", str(tmp_path / "bench"), "--clips", "2"])["layers"]
    (row,) = res["rows"]
    assert row["dataset"] == "moving_mnist" and row["ink_kept"] == row["ink_kept_median"] == 1.0
    assert row["layers_mse"] < 0.05 * row["copy_last"] and row["steps_below_both"] == 4
    assert (tmp_path / "bench" / "layers.json").exists()
    with pytest.raises(SystemExit, match="error:"):
        benchmark.main(["--section", "layers", "--datasets", "pendulum", "--data-root", str(tmp_path),
                        "--out", str(tmp_path / "bench")])


def _turning_rod(T=6):
    """A rod 28 px long and 3 px wide turning 0.2 rad a frame about a pivot at (32, 8)."""
    ys, xs = torch.meshgrid(torch.arange(64.0), torch.arange(64.0), indexing="ij")
    x = torch.zeros(1, T, 1, 64, 64)
    for t in range(T):
        a = torch.tensor(0.4 + 0.2 * t)
        u = (xs - 32) * torch.sin(a) + (ys - 8) * torch.cos(a)          # along the rod
        w = (xs - 32) * torch.cos(a) - (ys - 8) * torch.sin(a)          # across it
        x[0, t, 0] = ((u >= 0) & (u <= 28) & (w.abs() <= 1.5)).float() * (0.5 + u.clamp(0, 28) / 56)
    return x


def test_auto_picks_layers_from_the_clips_not_the_name():
    """predict=auto reads the clips: bodies that move rigidly keep all their ink in the
    layers (layers), a turning rod loses most of it (motion); a named unit is kept."""
    from training.layers import ink_kept
    from training.train_sharp_v2 import RIGID_SHARE, resolve_predict

    squares, rod = _two_squares().repeat(3, 1, 1, 1, 1), _turning_rod().repeat(3, 1, 1, 1, 1)
    L, _ = observe_layers(squares, 2)
    assert torch.allclose(ink_kept(L, squares[:, -1, 0]), torch.ones(3))
    L, _ = observe_layers(rod, 2)
    assert (ink_kept(L, rod[:, -1, 0]) < RIGID_SHARE).all()
    assert resolve_predict("auto", squares, 2) == "layers"
    assert resolve_predict("auto", rod, 2) == "motion"
    assert resolve_predict("particles", squares, 2) == "particles"


def test_auto_reads_the_training_clips_as_training_does(tmp_path):
    """The clips predict=auto tests come from the dataset's training split (as main() reads
    them): Moving MNIST's digits are rigid (layers), a pendulum's turning rod is not (motion)."""
    from data_utils import generate
    from training.train_sharp_v2 import CONFIG, resolve_predict, rigidity_clips

    generate.generate_datasets(["moving_mnist", "pendulum"], workers=1, verbose=False, num=24, frames=12, size=64,
                               out=tmp_path, preview=False, progress=False, options={"digits": "font", "download": False})
    mnist = rigidity_clips("moving_mnist", str(tmp_path), CONFIG["context"])
    assert mnist.shape[1:] == (CONFIG["context"], 1, 64, 64) and 0 < mnist.max() <= 1
    assert resolve_predict("auto", mnist, CONFIG["objects"]) == "layers"
    pendulum = rigidity_clips("pendulum", str(tmp_path), CONFIG["context"])
    assert resolve_predict("auto", pendulum, CONFIG["objects"]) == "motion"
