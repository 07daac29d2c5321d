"""Train SharpWorldModelV2 on one dataset (Moving MNIST by default).

    python training/train_sharp_v2.py                          # CPU-sized defaults
    python training/train_sharp_v2.py --dataset=bouncing_balls --run=balls
    python training/train_sharp_v2.py --resume                 # carry on after a kill
    python training/train_sharp_v2.py --help                   # list every setting

Phases: (1) the VQ-VAE tokenizer on single frames; (2) the codes of the training clips
are computed once and cached; (3) the ConvGRU dynamics on the cached codes with the
tokenizer frozen, moving from teacher forcing to free-running rollouts. Writes
checkpoints/<run>/latest.pt (config, model, optimiser, step, RNG state, history) and
results/<run>/: sharp_model_v2_result.png, training_curves.png, metrics.json.
"""
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import utils  # noqa: E402  (first: CPU tuning before torch starts its thread pool)

import math  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402
from tqdm import tqdm  # noqa: E402

from data_utils.datasets import DatasetError, load_split  # noqa: E402
from training import layers  # noqa: E402
from training.world_model import (PREDICT_MODES, SharpWorldModelV2, dynamics_loss,  # noqa: E402
                                  layer_dynamics_loss, tokenizer_loss)

CONFIG = dict(
    # --- run ---------------------------------------------------------------------------
    run="sharp_v2",            # checkpoints/<run>/ and results/<run>/
    dataset="moving_mnist",    # any of the ten datasets in data/
    data_root="",              # '' = <repo>/data
    device="auto",             # auto | cpu | cuda | mps
    seed=0,
    bf16=True,                 # bf16 autocast on a CPU with AVX512-BF16/AMX and on CUDA
    resume=False,              # continue from checkpoints/<run>/latest.pt
    # --- model -------------------------------------------------------------------------
    channels=64,               # tokenizer width (32x32 stage; the 16x16 stage has 2x)
    code_dim=64,               # codebook vector size
    num_codes=512,             # codebook size
    hidden=64,                 # ConvGRU channels
    layers=2,                  # stacked ConvGRU cells
    predict="auto",            # motion (warp a displacement field, re-tokenise) | embedding (regress next codes)
                               # | layers (move rigid objects, re-tokenise) | auto: layers on moving_mnist, else motion
    objects=2,                 # predict=layers: rigid layers cut from the last context frame
    motion_radius=0,           # > 0: correlation of consecutive frames (+-r px) as input, velocity prior, flow-target loss (experimental)
    # --- tokenizer phase -----------------------------------------------------------------
    tok_steps=1000,            # optimiser steps on random frames
    tok_batch=64,              # frames per step
    tok_lr=2e-3,
    # --- dynamics phase ------------------------------------------------------------------
    dyn_sequences=2000,        # training clips whose codes are cached (0 = all)
    dyn_steps=450,             # optimiser steps (0: keep the untrained dynamics, e.g. the velocity prior alone)
    dyn_batch=16,              # clips per step
    dyn_lr=1e-3,
    context=10,                # observed frames; the rest of each clip is predicted
    teacher_forcing_until=0.3,  # fraction of dyn_steps over which teacher forcing fades to 0 (not layers)
    # --- evaluation and I/O --------------------------------------------------------------
    eval_sequences=256,        # test clips for the final 10 -> 10 numbers
    log_every=25,
    ckpt_every=100,            # steps between checkpoints (each phase)
    out_root="",               # '' = the repo: checkpoints/<run>/ and results/<run>/ go under it
    stop_after=0,              # > 0: stop after this many optimiser steps, as a kill would (tests resume)
)


class Interrupted(Exception):
    """Raised by --stop_after to imitate a killed run."""


def count_step(cfg, counter):
    counter[0] += 1
    if cfg["stop_after"] and counter[0] >= cfg["stop_after"]:
        raise Interrupted


def to_float(batch_u8: np.ndarray, device) -> torch.Tensor:
    """uint8 (..., H, W) -> float (..., 1, H, W) in [0, 1]."""
    return torch.from_numpy(np.array(batch_u8)).to(device).float().div_(255).unsqueeze(-3)  # copy: memmaps are read-only


def save_state(path, cfg, model, opt, phase, step, history):
    utils.save_checkpoint({"config": cfg, "model_config": model.config, "model": model.state_dict(),
                           "optimizer": opt.state_dict() if opt is not None else {}, "phase": phase,
                           "step": step, "history": history, "rng": utils.rng_state()}, path)


def check_finite(loss, phase, step, ckpt_path):
    if not math.isfinite(loss):
        raise SystemExit(f"error: {phase} loss became {loss} at step {step}; the last good checkpoint is "
                         f"{ckpt_path} - lower the learning rate (--tok_lr / --dyn_lr) and rerun with --resume")


def resume_optimizer(state, phase, opt, sched) -> int:
    """Restore optimiser and LR schedule when the checkpoint stopped inside `phase`;
    returns the step to start from (0 for a fresh phase)."""
    if state is None or state["phase"] != phase:
        return 0
    opt.load_state_dict(state["optimizer"])
    for _ in range(state["step"]):
        sched.step()
    return state["step"]


def train_tokenizer(cfg, model, train, device, ckpt_path, state, counter):
    """Phase 1: reconstruct random single frames."""
    opt = torch.optim.AdamW(model.tokenizer.parameters(), lr=cfg["tok_lr"], weight_decay=0.0)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, cfg["tok_lr"], total_steps=cfg["tok_steps"], pct_start=0.05)
    start = resume_optimizer(state, "tokenizer", opt, sched)
    history = state["history"] if state is not None else {"tokenizer": [], "dynamics": []}
    N, T = train.shape[:2]
    model.train()
    bar = tqdm(range(start, cfg["tok_steps"]), desc="tokenizer", initial=start, total=cfg["tok_steps"])
    for step in bar:
        idx_n = np.random.randint(0, N, cfg["tok_batch"])
        idx_t = np.random.randint(0, T, cfg["tok_batch"])
        x = to_float(train[np.sort(idx_n)][np.arange(cfg["tok_batch"]), idx_t], device)
        x = x.contiguous(memory_format=torch.channels_last)
        with utils.autocast(device, cfg["bf16"]):
            loss, logs = tokenizer_loss(model, x)
        check_finite(logs["loss"], "tokenizer", step, ckpt_path)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.tokenizer.parameters(), 1.0)
        opt.step()
        sched.step()
        if step % cfg["log_every"] == 0 or step == cfg["tok_steps"] - 1:
            history["tokenizer"].append({"step": step, **logs})
            bar.set_postfix(psnr=f"{logs['psnr']:.1f}", ppl=f"{logs['perplexity']:.0f}",
                            usage=f"{logs['usage']:.2f}")
        if (step + 1) % cfg["ckpt_every"] == 0:
            save_state(ckpt_path, cfg, model, opt, "tokenizer", step + 1, history)
        count_step(cfg, counter)
    save_state(ckpt_path, cfg, model, None, "codes", 0, history)
    return history


@torch.no_grad()
def cache_codes(cfg, model, clips, device, path):
    """Phase 2: tokens of every training clip, computed once: (N, T, h, w) int16."""
    if path.exists():
        codes = np.load(path)
        if codes.shape[:2] == clips.shape[:2]:
            return codes
    model.eval()
    N, T = clips.shape[:2]
    codes = np.empty((N, T, model.grid, model.grid), dtype=np.int16)
    step = max(1, 256 // T)
    for i in tqdm(range(0, N, step), desc="caching codes"):
        x = to_float(clips[i:i + step], device).flatten(0, 1)
        with utils.autocast(device, cfg["bf16"]):
            c = model.encode(x.contiguous(memory_format=torch.channels_last))
        codes[i:i + step] = c.view(-1, T, model.grid, model.grid).cpu().numpy()
    with utils.atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            np.save(f, codes)
    return codes


def cache_layers(cfg, clips, device, path):
    """predict="layers": each training clip's last context frame cut into rigid layers,
    their velocities over the context, and where each layer is in the later true
    frames (the regression targets), computed once like the codes."""
    N, T, H, W = clips.shape
    K, ctx = cfg["objects"], cfg["context"]
    if path.exists():
        with np.load(path) as f:
            cached = {k: f[k] for k in f.files}
        if (cached["L"].shape[:2] == (N, K) and cached["positions"].shape[2] == T
                and int(cached.get("context", -1)) == ctx):
            return cached
    out = {"L": np.empty((N, K, H, W), np.float16), "velocity": np.empty((N, K, 2), np.float32),
           "positions": np.empty((N, K, T, 2), np.int16), "score": np.empty((N, K, T), np.float16),
           "context": np.array(ctx)}   # the cut is of frame context-1: a new --context needs a new cut
    for i in tqdm(range(0, N, 64), desc="cutting layers"):
        x = to_float(clips[i:i + 64], device)
        for key, val in zip(("L", "velocity", "positions", "score"), layers.cut(x, K, ctx)):
            out[key][i:i + 64] = val.cpu().numpy()
    with utils.atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            np.savez(f, **out)
    return out


def train_dynamics(cfg, model, clips, codes, device, ckpt_path, state, history, counter, cut=None):
    """Phase 3: unrolled dynamics training on cached codes (and, for predict="layers",
    the cached layers `cut`), tokenizer frozen."""
    if cfg["dyn_steps"] == 0:
        save_state(ckpt_path, cfg, model, None, "done", 0, history)
        return history
    model.tokenizer.requires_grad_(False)
    model.tokenizer.eval()
    model.dynamics.train()
    opt = torch.optim.AdamW(model.dynamics.parameters(), lr=cfg["dyn_lr"], weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, cfg["dyn_lr"], total_steps=cfg["dyn_steps"], pct_start=0.05)
    start = resume_optimizer(state, "dynamics", opt, sched)
    N = clips.shape[0]
    anneal = max(1, int(cfg["teacher_forcing_until"] * cfg["dyn_steps"]))
    bar = tqdm(range(start, cfg["dyn_steps"]), desc="dynamics", initial=start, total=cfg["dyn_steps"])
    for step in bar:
        idx = np.sort(np.random.randint(0, N, cfg["dyn_batch"]))
        x = to_float(clips[idx], device)
        c = torch.from_numpy(codes[idx].astype(np.int64)).to(device)
        teacher = max(0.0, 1.0 - step / anneal)
        with utils.autocast(device, cfg["bf16"]):
            if cut is not None:
                batch = [torch.from_numpy(cut[k][idx]).to(device).float() for k in ("L", "velocity", "positions", "score")]
                loss, logs = layer_dynamics_loss(model, x, c, cfg["context"], *batch)
            else:
                loss, logs = dynamics_loss(model, x, c, cfg["context"], teacher)
        check_finite(logs["loss"], "dynamics", step, ckpt_path)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.dynamics.parameters(), 1.0)
        opt.step()
        sched.step()
        if step % cfg["log_every"] == 0 or step == cfg["dyn_steps"] - 1:
            future = logs["rollout_mse"]
            entry = {"step": step, "loss": logs["loss"], "teacher": teacher, "rollout_mse": future}
            extra = {}
            if "flow_px" in logs:   # motion error (px) against the flow target, over the predicted steps
                entry["flow_px"] = logs["flow_px"][cfg["context"] - 1:]
                extra["flow_px"] = f"{np.mean(entry['flow_px']):.2f}"
            if "track_px" in logs:   # layer position error (px) against template matching, per predicted step
                entry["track_px"] = logs["track_px"]
                extra["track_px"] = f"{np.mean(logs['track_px']):.2f}"
            history["dynamics"].append(entry)
            bar.set_postfix(loss=f"{logs['loss']:.4f}", tf=f"{teacher:.2f}",
                            mse_first=f"{future[0]:.0f}", mse_last=f"{future[-1]:.0f}", **extra)
        if (step + 1) % cfg["ckpt_every"] == 0:
            save_state(ckpt_path, cfg, model, opt, "dynamics", step + 1, history)
        count_step(cfg, counter)
    save_state(ckpt_path, cfg, model, None, "done", cfg["dyn_steps"], history)
    return history


@torch.no_grad()
def evaluate(cfg, model, test, device):
    """10 -> 10 prediction on test clips beside the copy-last and blank baselines, and
    tokenizer reconstruction quality on the same frames."""
    from evaluation.metrics import baselines, per_step_metrics, summarize

    model.eval()
    n = min(cfg["eval_sequences"], test.shape[0])
    ctx = cfg["context"]
    horizon = test.shape[1] - ctx
    preds, truths, ctxs, recons = [], [], [], []
    for i in range(0, n, 32):
        x = to_float(test[i:min(n, i + 32)], device)
        with utils.autocast(device, cfg["bf16"]):
            preds.append(model.rollout(x[:, :ctx], horizon).float().cpu())
            recons.append(model.reconstruct(x.flatten(0, 1)).float().view_as(x).cpu())
        truths.append(x[:, ctx:].cpu())
        ctxs.append(x[:, :ctx].cpu())
    pred, truth, context, recon = (torch.cat(v) for v in (preds, truths, ctxs, recons))
    full = torch.cat([context, truth], 1)
    rec_mse = (recon - full).pow(2).mean(dim=(2, 3, 4))
    result = {"n_sequences": n, "context": ctx, "horizon": horizon,
              "tokenizer": {"psnr": float((-10 * torch.log10(rec_mse.clamp_min(1e-10))).mean()),
                            "l1_per_pixel": float((recon - full).abs().mean())},
              "model": per_step_metrics(pred, truth)}
    for name, b in baselines(context, truth).items():
        result[name] = per_step_metrics(b, truth)
    result["means"] = {k: summarize(result[k]) for k in ("model", "copy_last", "blank")}
    return result, (full, recon, pred)


def plot_results(cfg, history, result, examples, out_dir):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    full, recon, pred = examples
    ctx, T = cfg["context"], full.shape[1]
    k = min(3, full.shape[0])
    fig, axes = plt.subplots(3 * k, T, figsize=(T * 0.9, 3 * k * 0.95))
    for s in range(k):
        rows = [("truth", full[s]), ("recon", recon[s]),
                ("pred", torch.cat([full[s, :ctx] * 0.35, pred[s]]))]
        for r, (name, seq) in enumerate(rows):
            for t in range(T):
                ax = axes[3 * s + r, t]
                ax.imshow(seq[t, 0].numpy(), cmap="gray", vmin=0, vmax=1)
                ax.set_xticks([]), ax.set_yticks([])
                if t == 0:
                    ax.set_ylabel(name, fontsize=7)
                if s == 0 and r == 0:
                    ax.set_title(f"t={t}" + (" (ctx)" if t < ctx else ""), fontsize=6)
    m = result["means"]
    fig.suptitle(f"{cfg['dataset']}: truth / tokenizer reconstruction ({result['tokenizer']['psnr']:.1f} dB) / "
                 f"prediction (context dimmed); MSE/frame model {m['model']['mse']:.0f}, "
                 f"copy-last {m['copy_last']['mse']:.0f}, blank {m['blank']['mse']:.0f}", fontsize=8)
    utils.save_figure(fig, out_dir / "sharp_model_v2_result.png")

    fig, axes = plt.subplots(1, 3, figsize=(15, 3.8), layout="constrained")
    tok = history["tokenizer"]
    if tok:
        axes[0].plot([h["step"] for h in tok], [h["psnr"] for h in tok])
        axes[0].set(title="tokenizer PSNR (train batch)", xlabel="step", ylabel="dB")
        ax2 = axes[0].twinx()
        ax2.plot([h["step"] for h in tok], [h["perplexity"] for h in tok], color="tab:orange", alpha=0.6)
        ax2.set_ylabel("codebook perplexity", color="tab:orange")
    dyn = history["dynamics"]
    if dyn:
        axes[1].plot([h["step"] for h in dyn], [h["loss"] for h in dyn])
        axes[1].set(title="dynamics loss", xlabel="step", yscale="log")
        if "track_px" not in dyn[-1]:   # layers mode runs free from the start: no teacher forcing
            axes[1].plot([h["step"] for h in dyn], [h["teacher"] * max(h["loss"] for h in dyn) for h in dyn],
                         "--", alpha=0.5, label="teacher forcing (scaled)")
            axes[1].legend(fontsize=7)
        for key, label in (("flow_px", "motion error vs flow target (px)"),
                           ("track_px", "layer position error vs tracked (px)")):
            if key in dyn[-1]:
                ax2 = axes[1].twinx()
                ax2.plot([h["step"] for h in dyn], [np.mean(h[key]) for h in dyn], color="tab:green", alpha=0.7)
                ax2.set_ylabel(label, color="tab:green")
        steps = np.arange(1, len(dyn[-1]["rollout_mse"]) + 1)
        shown = dyn[:: max(1, len(dyn) // 5)]
        for h in shown + ([dyn[-1]] if shown[-1] is not dyn[-1] else []):
            axes[2].plot(steps, h["rollout_mse"], label=f"step {h['step']}")
        axes[2].set(title="train rollout MSE per predicted frame", xlabel="predicted step",
                    ylabel="MSE (sum over pixels)")
        axes[2].legend(fontsize=7)
    utils.save_figure(fig, out_dir / "training_curves.png")


def resolve_predict(predict: str, dataset: str) -> str:
    """predict="auto": rigid layers on Moving MNIST (two large digits that overlap), the
    displacement field elsewhere. Measured (README): on Moving MNIST the default run with
    layers has a mean MSE of 151.1 against 255.3 with the displacement field; on bouncing
    balls the cut into layers is poor (small, slow bodies; 15 against 5.5 at step 1)."""
    if predict != "auto":
        return predict
    return "layers" if dataset == "moving_mnist" else "motion"


def main():
    cfg = utils.parse_overrides(CONFIG)
    cfg["predict"] = resolve_predict(cfg["predict"], cfg["dataset"])
    if cfg["predict"] not in PREDICT_MODES:
        raise SystemExit(f"error: --predict must be auto or one of {', '.join(PREDICT_MODES)}, "
                         f"got '{cfg['predict']}'")
    utils.seed_everything(cfg["seed"])
    device = utils.pick_device(cfg["device"])
    base = Path(cfg["out_root"]) if cfg["out_root"] else utils.REPO_ROOT
    ckpt_dir, out_dir = base / "checkpoints" / cfg["run"], base / "results" / cfg["run"]
    ckpt_path = ckpt_dir / "latest.pt"
    root = cfg["data_root"] or None
    try:
        train = load_split(cfg["dataset"], "train", root)
        test = load_split(cfg["dataset"], "test", root)
    except DatasetError as exc:
        raise SystemExit(f"error: {exc}") from None
    if train.shape[1] <= cfg["context"]:
        raise SystemExit(f"error: clips have {train.shape[1]} frames; --context must be smaller")

    model = SharpWorldModelV2(channels=cfg["channels"], code_dim=cfg["code_dim"], num_codes=cfg["num_codes"],
                              hidden=cfg["hidden"], layers=cfg["layers"], predict=cfg["predict"],
                              motion_radius=cfg["motion_radius"], objects=cfg["objects"],
                              image_size=train.shape[-1]).to(device)
    model.tokenizer.to(memory_format=torch.channels_last)
    state = None
    if cfg["resume"]:
        if not ckpt_path.exists():
            raise SystemExit(f"error: --resume given but {ckpt_path} does not exist; drop --resume to start fresh")
        state = utils.load_checkpoint(ckpt_path, map_location=device)
        model.load_state_dict(state["model"])
        utils.set_rng_state(state["rng"])
        print(f"resuming from {ckpt_path}: phase {state['phase']}, step {state['step']}")
    elif ckpt_path.exists():
        raise SystemExit(f"error: {ckpt_path} exists; pass --resume to continue it or --run=NAME for a new run")
    utils.save_json(cfg, out_dir / "config.json")

    t0 = time.time()
    times = {}
    phase = state["phase"] if state else "tokenizer"
    history = state["history"] if state else {"tokenizer": [], "dynamics": []}
    counter = [0]
    try:
        if phase == "tokenizer":
            history = train_tokenizer(cfg, model, train, device, ckpt_path, state, counter)
            state, phase = None, "codes"
        times["tokenizer_s"] = time.time() - t0

        n = cfg["dyn_sequences"] or train.shape[0]
        clips = np.asarray(train[:n])
        codes = cache_codes(cfg, model, clips, device, ckpt_dir / "codes.npy")
        cut = cache_layers(cfg, clips, device, ckpt_dir / "layers.npz") if cfg["predict"] == "layers" else None
        times["codes_s"] = time.time() - t0 - times["tokenizer_s"]
        if phase in ("codes", "dynamics"):
            history = train_dynamics(cfg, model, clips, codes, device, ckpt_path,
                                     state if phase == "dynamics" else None, history, counter, cut)
        times["dynamics_s"] = time.time() - t0 - times["tokenizer_s"] - times["codes_s"]
    except Interrupted:
        print(f"stopped after {counter[0]} steps (--stop_after); continue with --resume")
        return

    result, examples = evaluate(cfg, model, test, device)
    result["wall_seconds_this_invocation"] = times
    result["config"] = cfg
    utils.save_json(result, out_dir / "metrics.json")
    plot_results(cfg, history, result, examples, out_dir)
    m = result["means"]
    print(f"tokenizer: PSNR {result['tokenizer']['psnr']:.2f} dB, L1/pixel {result['tokenizer']['l1_per_pixel']:.4f}")
    print("10 -> 10 prediction, mean per frame:  MSE     SSIM   sharpness")
    for name in ("model", "copy_last", "blank"):
        print(f"  {name:<10} {m[name]['mse']:>24.1f} {m[name]['ssim']:>8.3f} {m[name]['sharpness']:>8.2f}")
    last = {k: result["model"][k][-1] for k in ("mse", "sharpness")}
    print(f"  model at step {result['horizon']}: MSE {last['mse']:.1f}, sharpness {last['sharpness']:.2f} "
          f"(copy-last {result['copy_last']['mse'][-1]:.1f}, blank {result['blank']['mse'][-1]:.1f})")
    print(f"wrote {out_dir}/sharp_model_v2_result.png, training_curves.png, metrics.json; "
          f"checkpoint {ckpt_path}")


if __name__ == "__main__":
    main()
