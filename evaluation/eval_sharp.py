"""Rollout evaluation of a trained SharpWorldModelV2 (or of the SimVP baseline,
training/train_baseline.py): per-step curves beside baselines.

    python evaluation/eval_sharp.py                                   # checkpoints/sharp_v2/latest.pt
    python evaluation/eval_sharp.py --checkpoint=checkpoints/RUN/latest.pt --dataset=pendulum
    python evaluation/eval_sharp.py --data=path/to/test.npy --num_sequences=64 --device=cpu
    python evaluation/eval_sharp.py --checkpoint=checkpoints/rl/latest.pt --data=results/rl/test_episodes.npy

The checkpoint's model_config says which model to build ('kind': "simvp" for the baseline,
none for the world model); both are called through the same rollout(context, horizon).
An action-conditioned model (the agent's, training/world_model_rl.py) is evaluated on
recorded episodes: `--data=X.npy` with the actions taken at each frame in X_actions.npy
(N, T, A) beside it, fed to the model at every step.

Feeds `context` ground-truth frames, rolls the model out for `horizon` frames (and for
`long_horizon` frames when the sequences are long enough), and scores every predicted
step with evaluation/metrics.py against the copy-last-frame and all-zeros baselines.
Writes into `out_dir` (default results/<run>/eval/):
    autoregressive_rollout.png   truth / prediction / copy-last / |error| for example sequences
    rollout.gif                  truth | prediction, animated over context + horizon
    per_step_metrics.png         MSE, MAE, SSIM, PSNR, two sharpness ratios (and body-position error) per step
    metrics.json                 settings, per-step arrays and means for model and baselines
and prints a per-step table. Body-position error is added when the data has a
`<split>_states.npz` with `pos` beside it (docs/data.md).
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import utils  # noqa: E402  (import before torch: sets OMP/malloc tuning)

import numpy as np  # noqa: E402
import torch  # noqa: E402

from data_utils.datasets import DatasetError, load_sequences, load_split  # noqa: E402
from evaluation import metrics as M  # noqa: E402
from evaluation.positions import READER, position_error, read_bodies  # noqa: E402
from training.baseline import KIND as BASELINE_KIND, SimVP, SimVPConfig  # noqa: E402
from training.world_model import ModelConfig, SharpWorldModelV2  # noqa: E402

CONFIG = dict(
    checkpoint="",         # default: checkpoints/sharp_v2/latest.pt (what train_sharp_v2.py saves)
    dataset="",            # dataset name under data_root; default: the checkpoint config's 'dataset'
    data_root="",          # folder of the datasets; '' = the checkpoint's own data_root, else <repo>/data
    data="",               # path to any uint8 (N, T, H, W) .npy; overrides `dataset`
    split="test",          # which split of `dataset` to evaluate
    num_sequences=256,     # the first N sequences of the split
    context=10,            # ground-truth frames fed to the model
    horizon=10,            # predicted frames scored in the main evaluation
    long_horizon=30,       # a longer rollout, run only when T >= context + long_horizon (0: off)
    batch_size=32,
    device="auto",         # auto | cpu | cuda | mps
    bf16="auto",           # bf16 autocast: auto = as the checkpoint's run was evaluated (its --bf16) | true | false
    out_dir="",            # default: results/<run>/eval
    json_path="",          # default: <out_dir>/metrics.json
    examples=3,            # sequences shown in the PNG (and the GIF)
    seed=0,                # picks the example sequences
)
DEFAULT_CHECKPOINT = utils.REPO_ROOT / "checkpoints" / "sharp_v2" / "latest.pt"
NAMES = ("model", "copy_last", "blank")


# ----------------------------------------------------------------------------------------
# Loading
# ----------------------------------------------------------------------------------------
def load_model(path: Path, device: torch.device):
    ckpt = utils.load_checkpoint(path)  # SystemExit with one line when missing / corrupt
    if "model_config" not in ckpt or "model" not in ckpt:
        raise SystemExit(f"error: {path} is not a world-model checkpoint (no 'model_config'/'model'); "
                         f"pass --checkpoint=checkpoints/<run>/latest.pt of a training script")
    baseline = isinstance(ckpt["model_config"], dict) and ckpt["model_config"].get("kind") == BASELINE_KIND
    cls, config_cls = (SimVP, SimVPConfig) if baseline else (SharpWorldModelV2, ModelConfig)
    try:
        model = cls(config_cls.from_checkpoint(ckpt["model_config"]))
        model.load_state_dict(ckpt["model"])
    except (TypeError, ValueError, RuntimeError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise SystemExit(f"error: {path} does not match {cls.__name__} ({first}): it was written by another "
                         f"version of this code; pass another --checkpoint or retrain it") from None
    return model.to(device).eval(), ckpt


def load_actions(frames_path: Path, frames, action_dim: int, ckpt_path: Path):
    """The actions beside recorded episodes, <stem>_actions.npy float (N, T, A), or None
    for an action-free model. An action-conditioned model needs them."""
    if not action_dim:
        return None
    path = frames_path.with_name(f"{frames_path.stem}_actions.npy")
    if not path.is_file():
        raise SystemExit(f"error: {ckpt_path} is action-conditioned (action_dim={action_dim}): evaluate it on "
                         f"recorded episodes with their actions, --data=EPISODES.npy with EPISODES_actions.npy "
                         f"beside it (training/world_model_rl.py writes results/<run>/test_episodes.npy)")
    try:
        actions = np.load(path, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise SystemExit(f"error: {path} is not a readable .npy ({type(exc).__name__}); pass the actions "
                         f"file written with the episodes") from None
    want = (*frames.shape[:2], action_dim)
    if actions.shape != want:
        raise SystemExit(f"error: {path} has shape {actions.shape}, but the episodes and the model need {want} "
                         f"(N, T, action_dim); pass the actions recorded with these episodes")
    return actions


def load_frames(cfg: dict, ckpt_config: dict):
    """-> (frames uint8 (N, T, H, W), description, the file they came from)."""
    try:
        if cfg["data"]:
            frames = load_sequences(cfg["data"], fix="pass --data=a uint8 (N, T, H, W) frames .npy, such as "
                                                   "data/<dataset>/test.npy or recorded test_episodes.npy")
            name = cfg["data"]
        else:
            name = cfg["dataset"] or ckpt_config.get("dataset", "")
            if not name:
                raise SystemExit("error: the checkpoint does not name its dataset; pass --dataset=NAME or --data=PATH")
            frames = load_split(name, cfg["split"], cfg["data_root"] or ckpt_config.get("data_root") or None)
    except (DatasetError, FileNotFoundError) as exc:
        msg = " ".join(str(exc).split()) or type(exc).__name__
        if not cfg["data"] and not cfg["data_root"] and ckpt_config.get("data_root"):
            msg += f" (the run's data_root, from the checkpoint); or pass --data_root=FOLDER where the data is now"
        raise SystemExit(f"error: {msg}") from None
    # the memmap knows its file; <split>.npy sits beside <split>_states.npz (docs/data.md)
    return frames, str(name), Path(getattr(frames, "filename", None) or cfg["data"] or ".")


def load_positions(states_path: Path, n: int, T: int):
    """True body centres (n, T, K, 2) from a states .npz, or None when there are none."""
    if states_path is None or not Path(states_path).is_file():
        return None
    try:
        with np.load(states_path, allow_pickle=False) as z:
            if "pos" not in z.files:
                return None
            pos = np.asarray(z["pos"][:n], dtype=np.float32)
    except Exception as exc:
        print(f"note: {states_path} unreadable ({type(exc).__name__}); no position error")
        return None
    if pos.ndim != 4 or pos.shape[0] != n or pos.shape[1] != T or pos.shape[3] != 2 or pos.shape[2] > 6:
        print(f"note: {states_path} 'pos' has shape {pos.shape}; no position error")
        return None
    return pos


# ----------------------------------------------------------------------------------------
# Evaluation
# ----------------------------------------------------------------------------------------
class PositionError:
    """Per-step body-position error (pixels) accumulated over batches. Frames where a
    body could not be found (blank prediction) are skipped, so the blank baseline has
    no value; the mean over found bodies is what is reported."""

    def __init__(self, steps: int, reader: dict):
        self.sum = np.zeros(steps)
        self.count = np.zeros(steps)
        self.reader = reader

    def update(self, pred: torch.Tensor, true_pos: np.ndarray):
        K = true_pos.shape[2]
        est = read_bodies(pred[:, :, 0].float().cpu(), K, **self.reader)   # (B, T, K, 2)
        err = position_error(est, torch.from_numpy(true_pos)).numpy().astype(np.float64)
        ok = np.isfinite(err)
        self.sum += np.where(ok, err, 0).sum(0)
        self.count += ok.sum(0)

    def compute(self):
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(self.count > 0, self.sum / np.maximum(self.count, 1), np.nan)


@torch.no_grad()
def evaluate(model, frames, device, context: int = 10, horizon: int = 10, long_horizon: int = 0,
             positions=None, batch_size: int = 32, example_ids=(), bf16: bool = True, progress: bool = True,
             reader: dict | None = None, actions=None, keep_rollouts: bool = False):
    """The one rollout evaluation (this script, both training scripts): feed `context`
    true frames, roll out, score every predicted step against the truth beside the
    copy-last and blank baselines (evaluation/metrics.py), and the body-position error
    where `positions` (N, T, K, 2) are given (bodies read by evaluation/positions.py with
    the keywords `reader`, e.g. READER[dataset]). An action-conditioned model gets the
    recorded `actions` (N, T, A) of every frame.

    frames uint8 (N, T, H, W) (a memmap is fine). Returns {'short': {name: {metric: per
    step}}, 'long': the same over `long_horizon` steps or None (run when long_horizon >
    horizon and the clips are long enough), 'long_horizon', 'examples': {'truth' (E,
    ctx+hor, H, W), 'pred' (E, hor, H, W)} for `example_ids`}; with keep_rollouts also
    'rollouts': {'pred' float32 (N, horizon, H, W), 'latent' float32 (N, F) the compact
    state after the context}, which evaluation/eval_physics.py reads instead of rolling the
    same clips out again."""
    if keep_rollouts and not hasattr(model, "latent"):
        raise ValueError(f"keep_rollouts needs a world model with a compact state; {type(model).__name__} has "
                         f"none: call evaluate without keep_rollouts")
    n, T = frames.shape[:2]
    ctx, hor = context, horizon
    long_h = long_horizon if long_horizon > hor and T >= ctx + long_horizon else 0
    steps = max(hor, long_h)   # one rollout; the main horizon is its prefix (rollouts are deterministic)
    short = {k: M.StepMetrics() for k in NAMES}
    long = {k: M.StepMetrics() for k in NAMES} if long_h else None
    reader = reader or {}
    pos_short = {k: PositionError(hor, reader) for k in NAMES} if positions is not None else None
    pos_long = {k: PositionError(long_h, reader) for k in NAMES} if positions is not None and long_h else None
    examples = {"truth": [], "pred": []}
    kept = {"pred": [], "latent": []}
    model.eval()
    for start in range(0, n, batch_size):
        idx = np.arange(start, min(start + batch_size, n))
        x = torch.from_numpy(np.array(frames[idx[0]:idx[-1] + 1, :ctx + steps]))  # copy: memmaps are read-only
        x = x.to(device).float().div_(255.0).unsqueeze(2)          # (B, ctx+steps, 1, H, W)
        context_frames, truth = x[:, :ctx], x[:, ctx:]
        acts = None
        if actions is not None:
            acts = torch.from_numpy(np.array(actions[idx[0]:idx[-1] + 1, :ctx + steps], dtype=np.float32)).to(device)
        with utils.autocast(device, bf16):
            if keep_rollouts:   # only the world model has a latent; baselines keep the plain call
                pred, latent = model.rollout(context_frames, steps, acts, with_latent=True)
            else:
                pred = model.rollout(context_frames, steps, acts)
        pred = pred.float().clamp(0, 1)
        if keep_rollouts:
            kept["pred"].append(pred[:, :hor, 0].cpu())
            kept["latent"].append(latent.float().cpu())
        preds = {"model": pred, **M.baselines(context_frames, truth)}
        for name, p in preds.items():
            short[name].update(p[:, :hor], truth[:, :hor])
            if long is not None:
                long[name].update(p, truth)
            if pos_short is not None:
                true_pos = positions[idx[0]:idx[-1] + 1, ctx:ctx + steps]
                pos_short[name].update(p[:, :hor], true_pos[:, :hor])
                if pos_long is not None:
                    pos_long[name].update(p, true_pos)
        keep = [i - start for i in example_ids if start <= i < start + len(idx)]
        if keep:
            examples["truth"].append(x[keep, :ctx + steps, 0].cpu())
            examples["pred"].append(pred[keep, :, 0].cpu())
        if progress:
            print(f"\r  evaluated {idx[-1] + 1}/{n} sequences", end="", flush=True)
    if progress:
        print()

    def gather(acc, pos):
        out = {}
        for name in NAMES:
            per_step = acc[name].compute()
            if pos is not None:
                per_step["position_error"] = pos[name].compute()
            out[name] = per_step
        return out

    ex = {k: torch.cat(v) for k, v in examples.items()} if examples["truth"] else None
    if ex is not None:
        ex = {"truth": ex["truth"][:, :ctx + hor], "pred": ex["pred"][:, :hor],
              "truth_long": ex["truth"], "pred_long": ex["pred"]}
    out = {"short": gather(short, pos_short), "long": gather(long, pos_long) if long is not None else None,
           "long_horizon": long_h, "examples": ex}
    if keep_rollouts:
        out["rollouts"] = {k: torch.cat(v).numpy() for k, v in kept.items()}
    return out


@torch.no_grad()
def tokenizer_quality(model, frames, device, batch_size: int = 32, bf16: bool = True) -> dict:
    """Reconstruction of every frame of `frames` (uint8 (N, T, H, W)) through the codes:
    PSNR (dB, mean over frames) and L1 per pixel."""
    model.eval()
    psnr, l1, count = 0.0, 0.0, 0
    for start in range(0, frames.shape[0], batch_size):
        x = torch.from_numpy(np.array(frames[start:start + batch_size])).to(device).float().div_(255.0)
        x = x.flatten(0, 1).unsqueeze(1)                                           # (B*T, 1, H, W)
        with utils.autocast(device, bf16):
            recon = model.reconstruct(x).float()
        mse = (recon - x).pow(2).mean((1, 2, 3))
        psnr += float((-10 * torch.log10(mse.clamp_min(1e-10))).sum())
        l1 += float((recon - x).abs().mean((1, 2, 3)).sum())
        count += x.shape[0]
    return {"psnr": psnr / count, "l1_per_pixel": l1 / count}


# ----------------------------------------------------------------------------------------
# Outputs
# ----------------------------------------------------------------------------------------
def print_table(results: dict, title: str, per_table: int = 4):
    """Per-step values and their mean, model | copy-last | blank, `per_table` metrics at a time."""
    all_metrics = list(results["model"])
    steps = len(results["model"]["mse"])
    means = {n: M.summarize(results[n]) for n in NAMES}
    print(f"\n{title}")
    for i in range(0, len(all_metrics), per_table):
        names = all_metrics[i:i + per_table]
        print(f"{'step':>5} | " + " | ".join(f"{m:^26}" for m in names))
        print(f"{'':>5} | " + " | ".join(f"{'model':>8} {'copy':>8} {'blank':>8}" for _ in names))
        rows = [(str(t + 1), {m: [results[n][m][t] for n in NAMES] for m in names}) for t in range(steps)]
        rows.append(("mean", {m: [means[n][m] for n in NAMES] for m in names}))
        for label, vals in rows:
            print(f"{label:>5} | " + " | ".join(" ".join(_fmt(v, m) for v in vals[m]) for m in names))
        print()


def _fmt(v: float, metric: str) -> str:
    if not np.isfinite(v):
        return f"{'-':>8}"
    digits = {"mse": 1, "mae": 1, "psnr": 2, "position_error": 2}.get(metric, 3)
    return f"{v:8.{digits}f}"


def plot_rollout(ex: dict, ctx: int, path: Path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    truth, pred = ex["truth"].float().numpy(), ex["pred"].float().numpy()   # (E, ctx+hor, H, W), (E, hor, H, W)
    E, total = truth.shape[:2]
    hor = total - ctx
    rows = ("ground truth", "prediction", "copy last", "|error|")
    fig, axes = plt.subplots(4 * E, total, figsize=(0.75 * total + 1.2, 0.8 * 4 * E + 0.3), squeeze=False)
    for e in range(E):
        future = truth[e, ctx:]
        panels = [truth[e], pred[e], np.repeat(truth[e, ctx - 1:ctx], hor, 0), np.abs(pred[e] - future)]
        for r, (label, imgs) in enumerate(zip(rows, panels)):
            for c in range(total):
                ax = axes[4 * e + r, c]
                ax.set_xticks([])
                ax.set_yticks([])
                for s in ax.spines.values():
                    s.set_visible(False)
                if c < ctx and r > 0:
                    ax.set_facecolor("white")
                    continue
                img = imgs[c] if r == 0 else imgs[c - ctx]
                ax.imshow(img, cmap="magma" if r == 3 else "gray", vmin=0, vmax=1, interpolation="nearest")
                if e == 0 and r == 0:
                    t = c - ctx + 1
                    ax.set_title(f"t{t:+d}" if t < 0 else f"t{t}" if c < ctx else f"t+{t}", fontsize=7,
                                 color="0.6" if c < ctx else "black")
            axes[4 * e + r, 0].set_ylabel(f"#{e + 1} {label}" if r == 0 else label, fontsize=7,
                                          rotation=0, ha="right", va="center")
    fig.suptitle(f"Autoregressive rollout: {ctx} context frames (grey) -> {hor} predicted", fontsize=9)
    fig.subplots_adjust(wspace=0.04, hspace=0.08)
    utils.save_figure(fig, path)


def write_gif(ex: dict, ctx: int, path: Path, scale: int = 2, ms_per_frame: int = 250, vertical: bool = False):
    """truth | prediction side by side per example (examples stacked vertically), or with
    `vertical` truth above prediction (examples side by side), x`scale`. A bar under each
    prediction panel is grey during the context, green once predicting."""
    from PIL import Image

    truth = (ex["truth"].float().numpy() * 255).round().astype(np.uint8)   # (E, ctx+hor, H, W)
    pred = (ex["pred"].float().numpy() * 255).round().astype(np.uint8)     # (E, hor, H, W)
    E, total, H, W = truth.shape
    gap, bar = 2, 3
    images = []
    for t in range(total):
        canvas = np.full((E * (H + bar + gap), 2 * W + gap, 3), 40, np.uint8)
        for e in range(E):
            y = e * (H + bar + gap)
            right = truth[e, t] if t < ctx else pred[e, t - ctx]
            canvas[y:y + H, :W] = truth[e, t][..., None]
            canvas[y:y + H, W + gap:] = right[..., None]
            canvas[y + H:y + H + bar, W + gap:] = (128, 128, 128) if t < ctx else (60, 200, 90)
        if vertical:   # the same panels rearranged: examples left to right, truth on top
            rows = [canvas[e * (H + bar + gap):e * (H + bar + gap) + H + bar] for e in range(E)]
            canvas = np.concatenate([np.concatenate([r[:, :W], r[:, W + gap:]], 0) for r in rows], 1)
        big = canvas.repeat(scale, 0).repeat(scale, 1)
        images.append(Image.fromarray(big))
    with utils.atomic_path(path) as tmp:
        images[0].save(tmp, format="GIF", save_all=True, append_images=images[1:],
                       duration=ms_per_frame, loop=0)


def plot_metrics(results: dict, long_results, path: Path, ctx: int):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    src = long_results or results
    names = list(src["model"])
    labels = {"mse": "MSE (sum over pixels)", "mae": "MAE (sum over pixels)", "ssim": "SSIM",
              "psnr": "PSNR (dB)", "sharpness": "sharpness: mean |grad| pred / truth",
              "sharpness_energy": "sharpness: mean |grad|^2 pred / truth",
              "position_error": "body position error (px)"}
    order = [m for m in ("mse", "mae", "ssim", "psnr", "sharpness", "sharpness_energy", "position_error")
             if m in names]
    styles = {"model": dict(color="C0", marker="o"), "copy_last": dict(color="C1", ls="--"),
              "blank": dict(color="0.5", ls=":")}
    ncol = 3
    nrow = (len(order) + ncol - 1) // ncol
    fig, axes = plt.subplots(nrow, ncol, figsize=(4.2 * ncol, 3.0 * nrow), squeeze=False)
    for ax, m in zip(axes.flat, order):
        for n in NAMES:
            v = np.asarray(src[n][m])
            steps = np.arange(1, len(v) + 1)
            ax.plot(steps, v, label=n.replace("_", "-"), ms=3, lw=1.4, **styles[n])
        if long_results is not None:
            ax.axvline(len(results["model"][m]) + 0.5, color="0.8", lw=0.8)
        if m.startswith("sharpness"):
            ax.axhline(1.0, color="k", lw=0.6, alpha=0.5)
        ax.set_title(labels[m], fontsize=9)
        ax.set_xlabel(f"predicted step (after {ctx} context frames)", fontsize=8)
        ax.grid(alpha=0.3)
        ax.tick_params(labelsize=7)
    for ax in list(axes.flat)[len(order):]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=8)
    fig.suptitle("Per-step metrics: model vs copy-last-frame and all-zeros baselines", fontsize=10)
    fig.tight_layout()
    utils.save_figure(fig, path)


def to_json(results: dict) -> dict:
    """{name: {metric: [...]}} -> the same plus {name: {'mean': {metric: float}}}, NaN -> None."""
    def clean(v):
        return None if not np.isfinite(v) else float(v)
    out = {}
    for n in NAMES:
        out[n] = {m: [clean(x) for x in v] for m, v in results[n].items()}
        out[n]["mean"] = {m: clean(v) for m, v in M.summarize(results[n]).items()}
    return out


def resolve_bf16(value: str, ckpt_config: dict) -> bool:
    """--bf16: 'auto' takes the training run's setting, so this script prints the numbers the
    training script printed (bf16 and float32 rollouts differ in the last digits, and a
    sharp rollout can amplify that); true / false force it."""
    low = value.lower()
    if low == "auto":
        return bool(ckpt_config.get("bf16", True))
    if low in ("1", "true", "yes", "on", "0", "false", "no", "off"):
        return low in ("1", "true", "yes", "on")
    raise SystemExit(f"error: --bf16 expects auto, true or false, got '{value}'")


# ----------------------------------------------------------------------------------------
def main():
    cfg = utils.parse_overrides(CONFIG)
    for key in ("num_sequences", "context", "horizon", "batch_size", "examples"):
        if cfg[key] < 1:
            raise SystemExit(f"error: --{key} must be at least 1 (got {cfg[key]})")
    device = utils.pick_device(cfg["device"])
    utils.seed_everything(cfg["seed"])

    for key in ("out_dir", "json_path"):   # before any work: a folder that cannot be written
        if cfg[key]:
            utils.check_writable(Path(cfg[key]) if key == "out_dir" else Path(cfg[key]).parent, key)
    ckpt_path = Path(cfg["checkpoint"]) if cfg["checkpoint"] else DEFAULT_CHECKPOINT
    model, ckpt = load_model(ckpt_path, device)
    ckpt_config = ckpt.get("config") or {}
    bf16 = resolve_bf16(cfg["bf16"], ckpt_config)
    run = ckpt_config.get("run") or "sharp_v2"
    out_dir = Path(cfg["out_dir"]) if cfg["out_dir"] else utils.REPO_ROOT / "results" / run / "eval"
    json_path = Path(cfg["json_path"]) if cfg["json_path"] else out_dir / "metrics.json"
    utils.check_writable(out_dir, "out_dir")

    frames, data_name, source = load_frames(cfg, ckpt_config)
    states_path = source.with_name(f"{source.stem}_states.npz")
    n_all, T, H, W = frames.shape
    size = model.config.image_size
    if (H, W) != (size, size):
        raise SystemExit(f"error: {data_name} has {H}x{W} frames but the model takes {size}x{size}; "
                         f"regenerate the data with --size {size}")
    ctx, hor = cfg["context"], cfg["horizon"]
    needs = getattr(model.config, "context", 1)   # the baseline reads a fixed number of frames
    if ctx < needs:
        raise SystemExit(f"error: {ckpt_path} reads {needs} context frames; pass --context={needs} or more")
    if T < ctx + hor:
        raise SystemExit(f"error: {data_name} has sequences of {T} frames, fewer than context + horizon = "
                         f"{ctx + hor}; lower --context/--horizon or regenerate with --frames {ctx + hor}")
    n = min(cfg["num_sequences"], n_all)
    actions = load_actions(source, frames, model.config.action_dim, ckpt_path)
    frames = frames[:n]
    positions = load_positions(states_path, n, T)
    if cfg["long_horizon"] > hor and T < ctx + cfg["long_horizon"]:
        print(f"note: long rollout skipped: sequences have {T} frames, it needs context + long_horizon = "
              f"{ctx + cfg['long_horizon']} (generate data with --frames {ctx + cfg['long_horizon']})")
    rng = np.random.default_rng(cfg["seed"])
    example_ids = sorted(rng.choice(n, size=min(cfg["examples"], n), replace=False).tolist())

    print(f"evaluating {ckpt_path} on {data_name} ({n} sequences, {ctx} context -> {hor} predicted)")
    ev = evaluate(model, frames, device, ctx, hor, cfg["long_horizon"], positions, cfg["batch_size"], example_ids,
                  actions=actions, bf16=bf16, reader=READER.get(Path(str(data_name)).parent.name if cfg["data"] else str(data_name), {}))
    results, long_results, long_h, ex = ev["short"], ev["long"], ev["long_horizon"], ev["examples"]

    print_table(results, f"per-step metrics, {ctx} -> {hor} (model | copy-last | blank)")
    if long_results is not None:
        print_table(long_results, f"long rollout, {ctx} -> {long_h}")
    out_dir.mkdir(parents=True, exist_ok=True)
    plot_rollout(ex, ctx, out_dir / "autoregressive_rollout.png")
    write_gif(ex, ctx, out_dir / "rollout.gif")
    plot_metrics(results, long_results, out_dir / "per_step_metrics.png", ctx)

    summary = {
        "config": cfg, "checkpoint": str(ckpt_path), "run": run, "dataset": data_name, "source": str(source),
        "num_sequences": n, "frames_per_sequence": T, "context": ctx, "horizon": hor,
        "device": str(device), "bf16": bf16, "model_config": model.config.to_dict(), "example_sequences": example_ids,
        "position_error": positions is not None,
        **to_json(results),
    }
    if long_results is not None:
        summary["long"] = {"horizon": long_h, **to_json(long_results)}
    utils.save_json(summary, json_path)
    m, c = M.summarize(results["model"]), M.summarize(results["copy_last"])
    print(f"\nmean over {hor} steps: model MSE {m['mse']:.1f} vs copy-last {c['mse']:.1f}, "
          f"SSIM {m['ssim']:.3f} vs {c['ssim']:.3f}, sharpness {m['sharpness']:.2f}")
    print(f"wrote {out_dir}/{{autoregressive_rollout.png, rollout.gif, per_step_metrics.png}} and {json_path}")


if __name__ == "__main__":
    main()
