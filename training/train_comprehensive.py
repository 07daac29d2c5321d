"""Train one SharpWorldModelV2 on all ten datasets at once, then evaluate it per dataset.

    python training/train_comprehensive.py                       # CPU-sized defaults (README: wall time)
    python training/train_comprehensive.py --resume              # carry on after a kill
    torchrun --standalone --nproc_per_node=N -- training/train_comprehensive.py   # N processes
                               # (gloo on CPU, nccl on GPUs; the "--" keeps torchrun from
                               # reading --run=NAME as its own --run-path)
    python training/train_comprehensive.py --datasets=pendulum,projectile --run=two

The training is training/loop.py's, the same as train_sharp_v2.py's: tokenizer on frames
drawn evenly over the datasets, codes cached per dataset, dynamics on clips drawn evenly
over the datasets (the sampler's weights balance 9k Moving MNIST clips against 1.8k
orbits). One dynamics for all: no per-dataset switch (`predict` is one setting for the
whole run). Under torchrun every process takes its share of each global batch, DDP
averages the gradients, and rank 0 alone writes and evaluates.

After training, per dataset (test split, first eval_sequences clips): 10 -> 10 per-step
MSE, MAE, PSNR, SSIM, sharpness and body-position error beside copy-last and blank.
Writes results/<run>/:
    per_dataset.md, per_dataset.json     the table and every per-step array
    mse_per_step.png                     MSE against rollout step, a line per dataset
    physics_<dataset>_result.png, physics_<dataset>.gif   truth above prediction over
                                         long_horizon steps, on the clips of long_data_root
                                         (`make data40`: docs/scripts.md)
    physics/physics.md, physics.json, laws_<dataset>.png   evaluation/eval_physics.py's
                                         laws, body positions and state probes
    training_curves.png, config.json; checkpoint checkpoints/<run>/latest.pt
"""
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import utils  # noqa: E402  (first: CPU tuning before torch starts its thread pool)

import numpy as np  # noqa: E402

from data_utils.datasets import DatasetError, load_sequences, load_split, parse_names  # noqa: E402
from training.loop import Run, plot_history, train_world_model  # noqa: E402
from training.world_model import PREDICT_MODES  # noqa: E402

CONFIG = dict(
    # --- run ---------------------------------------------------------------------------
    run="comprehensive",       # checkpoints/<run>/ and results/<run>/
    datasets="all",            # all, or a comma-separated list of dataset names
    data_root="",              # '' = <repo>/data
    long_data_root="",         # 40-frame clips for the 30-step pictures; '' = <data_root>/frames40
    device="auto",             # auto | cpu | cuda | mps (under torchrun: cuda = one GPU per process)
    seed=0,
    bf16=True,                 # bf16 autocast on a CPU with AVX512-BF16/AMX and on CUDA
    resume=False,              # continue from checkpoints/<run>/latest.pt
    minutes=45.0,              # a wall-time budget for training (training/loop.py), so that training and both
                               #   evaluations end within the hour on a 2-core CPU (README) and take the same time
    tok_share=0.3,             #   on any machine: the tokenizer until tok_share of it, then the codes and the
                               #   dynamics; 0 = train for tok_steps / dyn_steps (bit-reproducible)
    # --- model (training/world_model.py ModelConfig) ---------------------------------------
    channels=64,
    code_dim=64,
    num_codes=512,
    hidden=64,
    layers=2,
    predict="motion",          # one dynamics for every dataset: particles | motion | layers
    objects=2,                 # predict=layers only
    # --- tokenizer phase -----------------------------------------------------------------
    init_tokenizer="",         # a checkpoint whose tokenizer to reuse (skips this phase); '' = train one
    tok_steps=1200,            # optimiser steps (with --minutes=0), each on tok_batch frames drawn evenly over the datasets
    tok_batch=64,
    tok_lr=2e-3,
    # --- dynamics phase ------------------------------------------------------------------
    dyn_sequences=400,         # training clips per dataset whose codes are cached (0 = all)
    dyn_steps=1000,            # optimiser steps (with --minutes=0; 0: keep the untrained dynamics)
    dyn_batch=16,              # clips per step (global: split over the processes)
    dyn_lr=1e-3,
    context=10,
    teacher_forcing_until=0.3,  # fraction of the dynamics phase (its steps, or its time under minutes) over which teacher forcing fades to 0
    workers=0,                 # DataLoader worker processes
    # --- evaluation and I/O --------------------------------------------------------------
    eval_sequences=128,        # test clips per dataset for the table (0: train only, no evaluation)
    long_horizon=30,           # predicted frames in the pictures (needs context + this many frames)
    examples=3,                # clips shown per dataset
    physics=True,              # then evaluation/eval_physics.py's laws, positions and probes on the same clips
                               # (their rollouts are the table's, not made again)
    probe_train=300,           # training clips per dataset its state probes are fitted on (0: no probes)
    log_every=25,
    ckpt_every=100,
    out_root="",               # '' = the repo
)


def dataset_names(spec: str) -> list[str]:
    try:
        return parse_names(spec)
    except DatasetError as exc:
        raise SystemExit(f"error: {exc}; --datasets takes the same") from None


# ----------------------------------------------------------------------------------------
# Per-dataset evaluation
# ----------------------------------------------------------------------------------------
def evaluate_all(cfg, model, names, device, keep_rollouts: bool = False):
    """eval_sharp.evaluate on each dataset's test clips -> ({name: {'n_sequences', 'results',
    'means'}}, {name: the rollouts kept for eval_physics} or {})."""
    from evaluation import eval_sharp
    from evaluation import metrics as M
    from evaluation.positions import READER

    out, rollouts = {}, {}
    root = cfg["data_root"] or None
    for name in names:
        test = load_split(name, "test", root)
        n = min(cfg["eval_sequences"], test.shape[0])
        states = Path(test.filename).with_name("test_states.npz")
        positions = eval_sharp.load_positions(states, n, test.shape[1])
        ctx = cfg["context"]
        ev = eval_sharp.evaluate(model, test[:n], device, ctx, test.shape[1] - ctx, positions=positions,
                                 reader=READER.get(name, {}), bf16=cfg["bf16"], progress=False,
                                 keep_rollouts=keep_rollouts)
        if keep_rollouts:
            rollouts[name] = ev["rollouts"]
        out[name] = {"n_sequences": n, "results": ev["short"],
                     "means": {k: M.summarize(ev["short"][k]) for k in eval_sharp.NAMES}}
        m = out[name]["means"]
        print(f"  {name:<22} MSE {m['model']['mse']:7.1f} (copy-last {m['copy_last']['mse']:7.1f}, blank "
              f"{m['blank']['mse']:7.1f}), sharpness at step {ev['short']['model']['sharpness'].size}: "
              f"{ev['short']['model']['sharpness'][-1]:.2f}")
    return out, rollouts


def long_examples(cfg, model, name, device):
    """The first `examples` clips of <long_data_root>/<name>/test.npy rolled out for
    long_horizon steps, or, without those files, of the 20-frame test split."""
    from evaluation import eval_sharp

    root = Path(cfg["long_data_root"]) if cfg["long_data_root"] else \
        (Path(cfg["data_root"]) if cfg["data_root"] else utils.REPO_ROOT / "data") / "frames40"
    ctx, want = cfg["context"], cfg["long_horizon"]
    try:
        clips = load_sequences(root / name / "test.npy")
    except DatasetError:
        clips = load_split(name, "test", cfg["data_root"] or None)
    horizon = min(want, clips.shape[1] - ctx)
    clips = clips[:cfg["examples"]]
    ev = eval_sharp.evaluate(model, clips, device, ctx, horizon, example_ids=range(len(clips)), bf16=cfg["bf16"],
                             progress=False)
    return ev["examples"], horizon


def plot_long(ex, ctx, name, path, stride=2):
    """Truth above prediction per example: the last context frame, then every `stride`-th
    predicted frame."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    truth, pred = ex["truth"].numpy(), ex["pred"].numpy()   # (E, ctx+hor, H, W), (E, hor, H, W)
    E, hor = pred.shape[:2]
    cols = [ctx - 1] + list(range(ctx + stride - 1, ctx + hor, stride))
    fig, axes = plt.subplots(2 * E, len(cols), figsize=(0.7 * len(cols) + 1, 1.45 * E + 0.4), squeeze=False)
    for e in range(E):
        for c, t in enumerate(cols):
            for r, img in enumerate((truth[e, t], truth[e, t] if t < ctx else pred[e, t - ctx])):
                ax = axes[2 * e + r, c]
                ax.imshow(img, cmap="gray", vmin=0, vmax=1, interpolation="nearest")
                ax.set_xticks([]), ax.set_yticks([])
                if e == 0 and r == 0:
                    ax.set_title("ctx" if t < ctx else f"t+{t - ctx + 1}", fontsize=6)
            axes[2 * e, 0].set_ylabel("truth", fontsize=6)
            axes[2 * e + 1, 0].set_ylabel("model", fontsize=6)
    fig.suptitle(f"{name}: {ctx} context frames -> {hor} predicted (truth above model)", fontsize=8)
    fig.subplots_adjust(wspace=0.03, hspace=0.06)
    utils.save_figure(fig, path)


def plot_mse(per, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.2))
    for i, (name, r) in enumerate(per.items()):
        mse = np.asarray(r["results"]["model"]["mse"])
        best = np.minimum(r["results"]["copy_last"]["mse"], r["results"]["blank"]["mse"])
        steps = np.arange(1, len(mse) + 1)
        axes[0].plot(steps, mse, marker="o", ms=3, color=f"C{i}", label=name)
        axes[1].plot(steps, mse / best, marker="o", ms=3, color=f"C{i}", label=name)
    axes[0].set(title="model MSE per frame (sum over pixels)", xlabel="predicted step", yscale="log")
    axes[1].axhline(1.0, color="k", lw=0.8)
    axes[1].set(title="model MSE / better baseline (copy-last or blank); < 1 beats both", xlabel="predicted step")
    axes[1].legend(fontsize=7, ncol=2)
    for ax in axes:
        ax.grid(alpha=0.3)
    fig.tight_layout()
    utils.save_figure(fig, path)


def table(per, horizon) -> str:
    """Markdown: one row per dataset, means over the predicted steps and the last step."""
    head = ("| dataset | clips | MSE model | copy-last | blank | beats both at every step | MAE | PSNR | SSIM "
            f"| sharpness @{horizon} | position error @{horizon} (px): model / copy-last |\n"
            "|---|---|---|---|---|---|---|---|---|---|---|\n")
    rows = []
    for name, r in per.items():
        m, res = r["means"], r["results"]
        beats = np.asarray(res["model"]["mse"]) < np.minimum(res["copy_last"]["mse"], res["blank"]["mse"])
        pos = res["model"].get("position_error")
        pos_text = f"{pos[-1]:.2f} / {res['copy_last']['position_error'][-1]:.2f}" if pos is not None else "-"
        rows.append(f"| {name} | {r['n_sequences']} | {m['model']['mse']:.1f} | {m['copy_last']['mse']:.1f} | "
                    f"{m['blank']['mse']:.1f} | {'yes' if beats.all() else f'no ({beats.sum()}/{beats.size})'} | "
                    f"{m['model']['mae']:.1f} | {m['model']['psnr']:.2f} | {m['model']['ssim']:.3f} | "
                    f"{res['model']['sharpness'][-1]:.2f} | {pos_text} |")
    return head + "\n".join(rows) + "\n"


def main():
    cfg = utils.parse_overrides(CONFIG)
    names = dataset_names(cfg["datasets"])
    if cfg["predict"] not in PREDICT_MODES:
        raise SystemExit(f"error: --predict must be one of {', '.join(PREDICT_MODES)}, got '{cfg['predict']}'")
    run = Run(cfg)
    model, _, times = train_world_model(cfg, run, names)
    if not run.end_training():   # under torchrun, rank 0 alone evaluates and writes
        return
    plot_history(run.history, run.out_dir / "training_curves.png")
    if cfg["eval_sequences"] == 0:
        return
    # Imported only now: torchmetrics alone takes seconds to import, which a run that stops
    # with an error (or is killed) before it evaluates should not wait for.
    from evaluation import eval_physics, eval_sharp

    t0 = time.time()
    print(f"evaluating on {len(names)} datasets ({cfg['context']} -> rest of the clip, "
          f"up to {cfg['eval_sequences']} test clips each)")
    per, rollouts = evaluate_all(cfg, model, names, run.device, keep_rollouts=cfg["physics"])
    out = run.out_dir
    for name in names:
        ex, hor = long_examples(cfg, model, name, run.device)
        plot_long(ex, cfg["context"], name, out / f"physics_{name}_result.png")
        eval_sharp.write_gif(ex, cfg["context"], out / f"physics_{name}.gif", vertical=True)
    horizon = len(next(iter(per.values()))["results"]["model"]["mse"])
    md = table(per, horizon)
    with utils.atomic_path(out / "per_dataset.md") as tmp:
        tmp.write_text(f"# {cfg['run']}: {cfg['context']} -> {horizon}, per dataset\n\n" + md)
    times["evaluation_s"] = time.time() - t0
    utils.save_json({"config": cfg, "model_config": model.config.to_dict(), "processes": run.world,
                     "wall_seconds_this_invocation": times,
                     "datasets": {n: {"n_sequences": r["n_sequences"], **eval_sharp.to_json(r["results"])}
                                  for n, r in per.items()}}, out / "per_dataset.json")
    plot_mse(per, out / "mse_per_step.png")
    print("\n" + md)
    if cfg["physics"]:
        t1 = time.time()
        print(f"physics: laws, positions and probes (evaluation/eval_physics.py) on {len(names)} datasets")
        pcfg = dict(eval_physics.CONFIG, data_root=cfg["data_root"], num_sequences=cfg["eval_sequences"],
                    probe_train=cfg["probe_train"], context=cfg["context"], bf16=cfg["bf16"], seed=cfg["seed"],
                    horizon=min(len(r["results"]["model"]["mse"]) for r in per.values()))
        physics = eval_physics.evaluate_physics(model, names, pcfg, run.device, rollouts)
        eval_physics.write_outputs(physics, out / "physics", f"{cfg['run']}: laws, positions and probes",
                                   {"config": pcfg, "checkpoint": str(run.ckpt_path)})
        print(f"physics evaluation: {time.time() - t1:.0f} s")
    print(f"wrote {out}/per_dataset.md, per_dataset.json, mse_per_step.png, training_curves.png, "
          f"physics_<dataset>_result.png and .gif, physics/; checkpoint {run.ckpt_path}")


if __name__ == "__main__":
    main()
