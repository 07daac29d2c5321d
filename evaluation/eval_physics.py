"""Has the model learned the physics? Laws read off its rollouts, and linear state probes.

    python evaluation/eval_physics.py                                    # the comprehensive model, all ten
    python evaluation/eval_physics.py --checkpoint=checkpoints/RUN/latest.pt --dataset=pendulum
    python evaluation/eval_physics.py --all --num_sequences=64           # every dataset, fewer clips

For each dataset: the model sees `context` true test frames and predicts `horizon` more.
  * Positions: the bodies are read off the true, the predicted and the copy-last frames
    (evaluation/positions.py); the error against the true states per step, for the model,
    copy-last and the reader itself on true frames.
  * Laws (evaluation/laws.py): each scene's law checked per rollout step on the positions
    read off the predicted frames, beside the same check on the true frames (the reader's
    error shows there) and on the exact states (the finite differences' own error).
  * Probes (evaluation/probes.py): a ridge regression from the model's state after the
    context (model.latent, what the agent reads) to the true state of the last context
    frame, fitted on training clips and scored (R^2) on test clips, beside the same probe on
    an untrained model of the same configuration and on the last two context frames' pixels.
Writes into `out_dir` (default results/<run>/physics/): physics.md (tables), physics.json
(every per-step array), laws_<dataset>.png (each law's error and the position error against
rollout step). train_comprehensive.py calls `evaluate_physics` and `write_outputs` at its end.
"""
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import utils  # noqa: E402  (import before torch: sets OMP/malloc tuning)

import numpy as np  # noqa: E402
import torch  # noqa: E402

from data_utils.datasets import DatasetError, load_meta, load_split, load_states, parse_names  # noqa: E402
from evaluation import laws as L  # noqa: E402
from evaluation.eval_sharp import load_model, resolve_bf16  # noqa: E402
from evaluation.positions import READER, match_bodies, read_bodies  # noqa: E402
from evaluation.probes import probe, probe_targets  # noqa: E402
from training.world_model import SharpWorldModelV2  # noqa: E402

CONFIG = dict(
    checkpoint="",         # default: checkpoints/comprehensive/latest.pt
    dataset="",            # a dataset name, a comma-separated list or 'all'; default: the checkpoint's own
    all=False,             # every one of the ten datasets (same as --dataset=all)
    data_root="",          # folder of the datasets; '' = the checkpoint's own data_root, else <repo>/data
    num_sequences=128,     # test clips rolled out per dataset (positions, laws, probe test set)
    probe_train=400,       # training clips the probes are fitted on (0: no probes)
    context=10,            # true frames fed to the model
    horizon=10,            # predicted frames (the clips must have context + horizon frames)
    batch_size=32,
    device="auto",         # auto | cpu | cuda | mps
    bf16="auto",           # bf16 autocast: auto = the checkpoint's training setting (its --bf16) | true | false
    seed=0,                # the untrained model's initialisation
    out_dir="",            # default: results/<run>/physics
)
DEFAULT_CHECKPOINT = utils.REPO_ROOT / "checkpoints" / "comprehensive" / "latest.pt"
REPORT_STEPS = (1, 5, 10)


# ----------------------------------------------------------------------------------------
# Model passes
# ----------------------------------------------------------------------------------------
@torch.no_grad()
def run_model(model, frames, device, context: int, horizon: int, batch_size: int = 32, bf16: bool = True):
    """frames uint8 (N, T, H, W) -> (predicted frames float32 (N, horizon, H, W) in [0, 1] or
    None when horizon is 0, latent state after the context (N, F) float32)."""
    model.eval()
    preds, latents = [], []
    for start in range(0, frames.shape[0], batch_size):
        x = torch.from_numpy(np.array(frames[start:start + batch_size, :context]))
        x = x.to(device).float().div_(255.0).unsqueeze(2)                  # (B, ctx, 1, H, W)
        with utils.autocast(device, bf16):
            if horizon:
                pred, latent = model.rollout(x, horizon, with_latent=True)
                preds.append(pred.float().clamp(0, 1)[:, :, 0].cpu())
            else:
                latent = model.latent(model.observe(x))
            latents.append(latent.float().cpu())
    return (torch.cat(preds).numpy() if preds else None), torch.cat(latents).numpy()


def untrained_like(model, seed: int):
    """A freshly initialised model of the same configuration (the probes' control)."""
    torch.manual_seed(seed)
    return SharpWorldModelV2(model.config).to(next(model.parameters()).device).eval()


# ----------------------------------------------------------------------------------------
# One dataset
# ----------------------------------------------------------------------------------------
def _read(frames: np.ndarray, name: str, true_pos: np.ndarray) -> np.ndarray:
    """Bodies read off frames (N, T, H, W) in [0, 1], in the states' order -> (N, T, K, 2)."""
    K = true_pos.shape[2]
    read = read_bodies(torch.from_numpy(frames).float(), K, **READER.get(name, {}))
    return match_bodies(read, torch.from_numpy(true_pos)).numpy().astype(np.float64)


def _step_error(read: np.ndarray, true: np.ndarray) -> np.ndarray:
    """Mean distance (px) per frame over clips and bodies, (N, T, K, 2) -> (T,)."""
    d = np.linalg.norm(read - true, axis=-1)                       # (N, T, K)
    with np.errstate(invalid="ignore"):
        return np.nanmean(d, axis=(0, 2))


def evaluate_dataset(model, untrained, name: str, cfg: dict, device, rollouts: dict | None = None) -> dict:
    """Positions, laws and probes of one dataset. `rollouts`: eval_sharp.evaluate's
    (keep_rollouts=True) on the same first num_sequences test clips with the same context
    and at least this horizon, used instead of rolling them out again (train_comprehensive.py)."""
    root = cfg.get("data_root") or None
    ctx, hor = cfg["context"], cfg["horizon"]
    test = load_split(name, "test", root)
    if test.shape[1] < ctx + hor:
        raise SystemExit(f"error: {name} clips have {test.shape[1]} frames, fewer than context + horizon = "
                         f"{ctx + hor}; lower --horizon or regenerate the data with --frames {ctx + hor}")
    n = min(cfg["num_sequences"], test.shape[0])
    T = ctx + hor
    frames = np.array(test[:n, :T]).astype(np.float32) / 255.0              # (n, T, H, W)
    states = {k: v[:n] for k, v in load_states(name, "test", root).items()}
    states_T = {k: (v[:, :T] if v.ndim >= 2 and v.shape[1] == test.shape[1] else v) for k, v in states.items()}
    constants = load_meta(name, root).get("constants", {})
    if rollouts is None:
        pred, latent_test = run_model(model, test[:n], device, ctx, hor, cfg["batch_size"], cfg["bf16"])
    else:
        pred, latent_test = rollouts["pred"][:, :hor], rollouts["latent"]   # a rollout's prefix is the shorter one
        if pred.shape[:2] != (n, hor):
            raise ValueError(f"rollouts of {name} have shape {pred.shape[:2]}, need ({n}, >= {hor}) "
                             "(num_sequences, horizon)")
    model_frames = np.concatenate([frames[:, :ctx], pred], 1)
    copy_frames = np.concatenate([frames[:, :ctx], np.repeat(frames[:, ctx - 1:ctx], hor, 1)], 1)
    out = {"n_sequences": n, "steps": list(range(1, hor + 1))}
    after = slice(ctx, T)                    # frame index of rollout step s is ctx + s - 1

    if "pos" in states:                      # a scene of bodies
        true_pos = states_T["pos"].astype(np.float64)
        read = {"truth": _read(frames, name, true_pos), "model": _read(model_frames, name, true_pos),
                "copy_last": _read(copy_frames, name, true_pos)}
        out["position_error"] = {k: _step_error(v, true_pos)[after] for k, v in read.items()}
        if name in L.LAWS:
            checks = {"states": L.check(name, true_pos, states_T, constants),
                      "truth": L.check(name, read["truth"], states_T, constants),
                      "model": L.check(name, read["model"], states_T, constants)}
            out["laws"] = {law: {src: checks[src][law][after] for src in checks} for law in L.LAWS[name]}
    elif name == "wave_motion":
        checks = {"truth": L.wave_laws(frames, states_T), "model": L.wave_laws(model_frames, states_T)}
        out["laws"] = {law: {src: checks[src][law][after] for src in checks} for law in L.LAWS[name]}

    if cfg["probe_train"] > 0:
        train = load_split(name, "train", root)
        m = min(cfg["probe_train"], train.shape[0])
        train_states = {k: v[:m] for k, v in load_states(name, "train", root).items()}
        _, latent_train = run_model(model, train[:m], device, ctx, 0, cfg["batch_size"], cfg["bf16"])
        raw_train = np.array(train[:m, ctx - 2:ctx]).reshape(m, -1).astype(np.float32) / 255.0
        raw_test = frames[:, ctx - 2:ctx].reshape(n, -1)
        _, u_train = run_model(untrained, train[:m], device, ctx, 0, cfg["batch_size"], cfg["bf16"])
        _, u_test = run_model(untrained, test[:n], device, ctx, 0, cfg["batch_size"], cfg["bf16"])
        y_train = probe_targets(name, train_states, ctx - 1)
        y_test = probe_targets(name, states, ctx - 1)
        feats = {"model": (latent_train, latent_test), "untrained": (u_train, u_test), "pixels": (raw_train, raw_test)}
        out["probe"] = {"train_clips": m, "test_clips": n, "r2": {
            group: {src: float(np.nanmean(probe(a, y_train[group], b, y_test[group]))) for src, (a, b) in feats.items()}
            for group in y_train}}
    return out


def evaluate_physics(model, names, cfg: dict, device, rollouts: dict | None = None) -> dict:
    """{dataset: evaluate_dataset(...)} with the wall time of each; `rollouts` {dataset:
    eval_sharp.evaluate's kept rollouts} where they exist already."""
    untrained = untrained_like(model, cfg["seed"]) if cfg["probe_train"] > 0 else None
    results = {}
    for name in names:
        t0 = time.time()
        results[name] = evaluate_dataset(model, untrained, name, cfg, device, (rollouts or {}).get(name))
        results[name]["seconds"] = time.time() - t0
        print(f"  {name:<22} {summary_line(results[name])} ({results[name]['seconds']:.0f} s)")
    return results


# ----------------------------------------------------------------------------------------
# Outputs
# ----------------------------------------------------------------------------------------
def _at(v, step: int) -> float:
    v = np.asarray(v, dtype=np.float64)
    return float(v[step - 1]) if step <= len(v) else float("nan")


def _f(x: float, digits: int = 2) -> str:
    return f"{x:.{digits}f}" if np.isfinite(x) else "-"


def summary_line(r: dict) -> str:
    parts = []
    last = len(r["steps"])
    if "position_error" in r:
        p = r["position_error"]
        parts.append(f"position @{last}: model {_f(_at(p['model'], last))} px, copy-last "
                     f"{_f(_at(p['copy_last'], last))}, reader {_f(_at(p['truth'], last))}")
    for law, v in r.get("laws", {}).items():
        parts.append(f"{law} @{last}: model {_f(_at(v['model'], last), 3)}, truth {_f(_at(v['truth'], last), 3)}")
    if "probe" in r:
        parts.append("probe R^2 " + ", ".join(f"{g} {_f(v['model'])}/{_f(v['untrained'])}"
                                               for g, v in r["probe"]["r2"].items()))
    return "; ".join(parts)


def tables(results: dict, title: str) -> str:
    """Markdown: positions, laws and probes, one table each."""
    steps = [s for s in REPORT_STEPS if any(s <= len(r["steps"]) for r in results.values())]
    lines = [f"# {title}\n"]
    pos = {n: r["position_error"] for n, r in results.items() if "position_error" in r}
    if pos:
        head = " | ".join(f"@{s} model / copy-last / reader" for s in steps)
        lines += ["## Body-position error (px) against the true states\n",
                  f"| dataset | clips | {head} |", "|---|---|" + "---|" * len(steps)]
        for n, p in pos.items():
            cells = " | ".join(f"{_f(_at(p['model'], s))} / {_f(_at(p['copy_last'], s))} / {_f(_at(p['truth'], s))}"
                               for s in steps)
            lines.append(f"| {n} | {results[n]['n_sequences']} | {cells} |")
        lines.append("")
    rows = [(n, law, v) for n, r in results.items() for law, v in r.get("laws", {}).items()]
    if rows:
        head = " | ".join(f"@{s} model / truth / states" for s in steps)
        lines += ["## Laws: relative error per rollout step (0 = the law holds)\n",
                  "model: positions read off the predicted frames; truth: read off the true frames; "
                  "states: the exact simulated positions (finite differences only).\n",
                  f"| dataset | law | {head} |", "|---|---|" + "---|" * len(steps)]
        for n, law, v in rows:
            cells = " | ".join(f"{_f(_at(v['model'], s), 3)} / {_f(_at(v['truth'], s), 3)} / "
                               f"{_f(_at(v['states'], s), 3) if 'states' in v else '-'}" for s in steps)
            lines.append(f"| {n} | {L.TITLES[law]} | {cells} |")
        lines.append("")
    probes = {n: r["probe"] for n, r in results.items() if "probe" in r}
    if probes:
        lines += ["## Linear probes: R^2 on test clips of the state at the last context frame\n",
                  "model / untrained model / last two context frames' pixels; ridge fitted on training clips.\n",
                  "| dataset | train / test clips | variable: model / untrained / pixels |", "|---|---|---|"]
        for n, p in probes.items():
            cells = "; ".join(f"{g}: {_f(v['model'])} / {_f(v['untrained'])} / {_f(v['pixels'])}"
                              for g, v in p["r2"].items())
            lines.append(f"| {n} | {p['train_clips']} / {p['test_clips']} | {cells} |")
        lines.append("")
    return "\n".join(lines)


def plot_dataset(name: str, r: dict, path: Path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = ([("position_error", r["position_error"])] if "position_error" in r else []) + \
        list(r.get("laws", {}).items())
    if not panels:
        return
    styles = {"model": dict(color="C0", marker="o", ms=3), "truth": dict(color="C2", ls="--"),
              "states": dict(color="0.5", ls=":"), "copy_last": dict(color="C1", ls="--")}
    labels = {"model": "model", "truth": "true frames (read)", "states": "exact states", "copy_last": "copy-last"}
    fig, axes = plt.subplots(1, len(panels), figsize=(4.0 * len(panels), 3.2), squeeze=False)
    for ax, (key, curves) in zip(axes[0], panels):
        for src, v in curves.items():
            label = "reader on true frames" if key == "position_error" and src == "truth" else labels[src]
            ax.plot(r["steps"], v, label=label, **styles[src])
        ax.set(title="body position error (px)" if key == "position_error" else f"{L.TITLES[key]}: relative error",
               xlabel="rollout step")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(name, fontsize=9)
    fig.tight_layout()
    utils.save_figure(fig, path)


def _jsonable(r):
    if isinstance(r, dict):
        return {k: _jsonable(v) for k, v in r.items()}
    if isinstance(r, (np.ndarray, list, tuple)):
        return [None if not np.isfinite(x) else float(x) for x in np.asarray(r, dtype=np.float64).ravel()]
    return r


def write_outputs(results: dict, out_dir: Path, title: str, extra: dict | None = None) -> str:
    out_dir.mkdir(parents=True, exist_ok=True)
    md = tables(results, title)
    with utils.atomic_path(out_dir / "physics.md") as tmp:
        tmp.write_text(md)
    utils.save_json({**(extra or {}), "datasets": _jsonable(results)}, out_dir / "physics.json")
    for name, r in results.items():
        plot_dataset(name, r, out_dir / f"laws_{name}.png")
    return md


def main():
    cfg = utils.parse_overrides(CONFIG)
    for key in ("num_sequences", "context", "horizon", "batch_size"):
        if cfg[key] < 1:
            raise SystemExit(f"error: --{key} must be at least 1 (got {cfg[key]})")
    if cfg["context"] < 2:
        raise SystemExit("error: --context must be at least 2 (the laws need two frames before the first prediction)")
    def names_of(spec):
        try:
            return parse_names(spec)
        except DatasetError as exc:
            raise SystemExit(f"error: {exc}") from None
    names = names_of("all" if cfg["all"] else cfg["dataset"]) if cfg["all"] or cfg["dataset"] else None
    device = utils.pick_device(cfg["device"])
    ckpt_path = Path(cfg["checkpoint"]) if cfg["checkpoint"] else DEFAULT_CHECKPOINT
    model, ckpt = load_model(ckpt_path, device)
    if not isinstance(model, SharpWorldModelV2):
        raise SystemExit(f"error: {ckpt_path} is not a world model (the baseline has no latent state to probe); "
                         f"pass --checkpoint=checkpoints/<run>/latest.pt of train_sharp_v2.py or "
                         f"train_comprehensive.py, or use python evaluation/eval_sharp.py for the baseline")
    ckpt_config = ckpt.get("config") or {}
    cfg["bf16"] = resolve_bf16(str(cfg["bf16"]), ckpt_config)
    cfg["data_root"] = cfg["data_root"] or ckpt_config.get("data_root") or ""
    if names is None and not (ckpt_config.get("dataset") or ckpt_config.get("datasets")):
        raise SystemExit(f"error: {ckpt_path} names no dataset; pass --dataset=NAME, a comma-separated list or all")
    names = names or names_of(ckpt_config.get("dataset") or ckpt_config.get("datasets", ""))
    run = ckpt_config.get("run") or ckpt_path.parent.name
    out_dir = Path(cfg["out_dir"]) if cfg["out_dir"] else utils.REPO_ROOT / "results" / run / "physics"
    print(f"physics of {ckpt_path} on {len(names)} dataset(s), {cfg['context']} -> {cfg['horizon']}")
    t0 = time.time()
    results = evaluate_physics(model, names, cfg, device)
    md = write_outputs(results, out_dir, f"{run}: laws, positions and probes ({cfg['context']} -> {cfg['horizon']})",
                       {"config": cfg, "checkpoint": str(ckpt_path), "seconds": time.time() - t0})
    print("\n" + md)
    print(f"wrote {out_dir}/physics.md, physics.json, laws_<dataset>.png ({time.time() - t0:.0f} s)")


if __name__ == "__main__":
    main()
