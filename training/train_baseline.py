"""Train the learned baseline, a SimVP-style CNN (training/baseline.py), on one dataset.

    python training/train_baseline.py                            # Moving MNIST, 25 minutes of training
    python training/train_baseline.py --minutes=5 --run=baseline_5min
    python training/train_baseline.py --minutes=0 --steps=1500   # a step count instead of a time
    python training/train_baseline.py --resume                   # carry on after a kill
    python training/train_baseline.py --help                     # list every setting

The context frames in, all predicted frames out in one pass, pixel MSE: the field's standard
non-autoregressive reference, trained on the same data as the world model by the same loop
(training/loop.py: Run, StepBatches, optimise, save_state; one phase, "train") so that the two
compare at equal wall time (`minutes`, the same setting train_sharp_v2.py takes). Evaluated by
evaluation/eval_sharp.evaluate, the function eval_sharp.py runs, on the first eval_sequences
test clips beside copy-last and blank. Writes checkpoints/<run>/latest.pt (config,
model_config, model, optimiser, phase, step, history, elapsed_s) and results/<run>/:
baseline_result.png, training_curves.png, metrics.json, config.json.
"""
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import utils  # noqa: E402  (first: CPU tuning before torch starts its thread pool)

import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch.utils.data import DataLoader  # noqa: E402

from data_utils.datasets import DatasetError, dataset_command, load_split  # noqa: E402
from training.baseline import SimVP, SimVPConfig, count_parameters, prediction_loss  # noqa: E402
from training.loop import (Run, StepBatches, check_in_sync, ddp, open_windows, optimise,  # noqa: E402
                           restore_weights, save_state)

CONFIG = dict(
    # --- run ---------------------------------------------------------------------------
    run="baseline",            # checkpoints/<run>/ and results/<run>/
    dataset="moving_mnist",    # any of the ten datasets in data/
    data_root="",              # '' = <repo>/data
    device="auto",             # auto | cpu | cuda | mps
    seed=0,
    bf16=True,                 # bf16 autocast on a CPU with AVX512-BF16/AMX and on CUDA
    resume=False,              # continue from checkpoints/<run>/latest.pt
    # --- model (training/baseline.py SimVPConfig) ---------------------------------------------
    hid_s=16,                  # encoder / decoder channels
    hid_t=256,                 # translator channels
    n_s=4,                     # encoder (and decoder) conv blocks; every second halves the size
    n_t=4,                     # translator blocks
    mlp_ratio=4,               # translator mlp width / hid_t
    context=10,                # observed frames; the rest of each clip is predicted in one pass
    # --- training ------------------------------------------------------------------------
    minutes=25.0,              # wall-time budget of training (one-cycle over the time); 0: train `steps` steps
    steps=1500,                # optimiser steps when minutes=0
    batch=16,                  # clips per step
    lr=1e-3,                   # peak of the one-cycle schedule (Adam)
    workers=0,                 # DataLoader worker processes (0: load in the training process)
    # --- evaluation and I/O --------------------------------------------------------------
    eval_sequences=256,        # test clips for the final numbers (0: train only)
    log_every=25,
    ckpt_every=100,            # steps between checkpoints
    out_root="",               # '' = the repo: checkpoints/<run>/ and results/<run>/ go under it
)
PHASES = ("train", "done")


def check_settings(cfg):
    try:
        dataset_command(cfg["dataset"])   # checks the name
    except DatasetError as exc:
        raise SystemExit(f"error: {exc}; pass one of them as --dataset=NAME") from None
    for key in ("hid_s", "hid_t", "n_s", "n_t", "mlp_ratio", "context", "batch", "log_every", "ckpt_every"):
        if cfg[key] < 1:
            raise SystemExit(f"error: --{key} must be at least 1 (got {cfg[key]})")
    if cfg["minutes"] == 0 and cfg["steps"] < 1:
        raise SystemExit(f"error: --steps must be at least 1 when --minutes=0 (got {cfg['steps']})")
    if cfg["hid_s"] % 2:
        raise SystemExit(f"error: --hid_s must be even (got {cfg['hid_s']})")


def build_model(cfg, windows, run) -> SimVP:
    size = windows.frame_shape[-1]
    try:
        model = SimVP(SimVPConfig.from_dict({**cfg, "horizon": windows.target, "image_size": size}))
    except ValueError as exc:
        raise SystemExit(f"error: {exc}; change --n_s or the data's --size") from None
    restore_weights(run, model)
    return model.to(run.device)


def train(cfg, run, model, windows) -> int:
    """The one phase: pixel MSE of the predicted frames, clips drawn by StepBatches, optimised by
    loop.optimise (Adam, one-cycle over `steps` or over `minutes`). Returns the steps done."""
    model.train()
    wrapped = ddp(model, run)
    weights = windows.weights()

    def loader_for(start, steps):
        sampler = StepBatches(weights, cfg["batch"], steps, cfg["seed"], run.rank, run.world, start)
        return DataLoader(windows, batch_sampler=sampler, num_workers=cfg["workers"])

    def loss_fn(batch, step, progress):
        return prediction_loss(wrapped, batch["frames"])

    def postfix(logs):
        future = logs["rollout_mse"]
        return dict(loss=f"{logs['loss']:.4f}", mse_first=f"{future[0]:.0f}", mse_last=f"{future[-1]:.0f}")

    return optimise(cfg, run, model, "train", model.parameters(), cfg["lr"], cfg["steps"], loader_for, loss_fn,
                    postfix, until_s=run.budget_s, lr_flag="--lr")


def evaluate(cfg, model, test, device):
    """10 -> 10 prediction on the first eval_sequences test clips by eval_sharp.evaluate (the
    function eval_sharp.py runs, beside copy-last and blank); three example clips kept."""
    from evaluation import eval_sharp      # after training: torchmetrics takes seconds to import
    from evaluation.metrics import summarize

    test = test[:min(cfg["eval_sequences"], test.shape[0])]
    ctx = cfg["context"]
    ev = eval_sharp.evaluate(model, test, device, ctx, test.shape[1] - ctx, batch_size=32,
                             example_ids=range(min(3, len(test))), bf16=cfg["bf16"], progress=False)
    result = {"n_sequences": len(test), "context": ctx, "horizon": test.shape[1] - ctx, **ev["short"]}
    result["means"] = {k: summarize(result[k]) for k in eval_sharp.NAMES}
    return result, ev["examples"]


def plot_history(history, path):
    """training_curves.png: the loss, and the per-step error of the training batch at a few points."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8), layout="constrained")
    if history:
        axes[0].plot([h["step"] for h in history], [h["loss"] for h in history])
        steps = np.arange(1, len(history[-1]["rollout_mse"]) + 1)
        shown = history[:: max(1, len(history) // 5)]
        for h in shown + ([history[-1]] if shown[-1] is not history[-1] else []):
            axes[1].plot(steps, h["rollout_mse"], label=f"step {h['step']}")
        axes[1].legend(fontsize=7)
    axes[0].set(title="pixel MSE (train batch)", xlabel="step", yscale="log")
    axes[1].set(title="train MSE per predicted frame", xlabel="predicted step", ylabel="MSE (sum over pixels)")
    utils.save_figure(fig, path)


def main():
    cfg = utils.parse_overrides(CONFIG)
    check_settings(cfg)
    run = Run(cfg, phases=PHASES, what="baseline")
    utils.seed_everything(cfg["seed"])
    windows = open_windows(cfg, [cfg["dataset"]])
    model = build_model(cfg, windows, run)
    phase = run.state["phase"] if run.state else "train"
    if run.state is not None and run.main:
        print(f"resuming from {run.ckpt_path}: phase {phase}, step {run.state['step']}")
    if run.main:
        budget = f"{cfg['minutes']:g} minutes" if run.budget_s else f"{cfg['steps']} steps"
        print(f"SimVP baseline: {count_parameters(model):,} parameters; {cfg['context']} -> {windows.target} "
              f"frames; {budget} of batch {cfg['batch']}")
    t0 = time.time()
    if phase == "train":
        steps_done = train(cfg, run, model, windows)
        save_state(run, cfg, model, None, "done", steps_done, run.history)
        train_s = run.elapsed()
    else:   # resumed after the end of training: evaluate again
        steps_done, train_s = run.state["step"], float(run.state.get("elapsed_s", 0.0))
    check_in_sync(model, run)
    model.eval()
    if not run.end_training():   # under torchrun, rank 0 alone evaluates and writes
        return
    out_dir = run.out_dir
    plot_history(run.history["train"], out_dir / "training_curves.png")
    print(f"trained {steps_done} steps in {train_s / 60:.1f} min of training time "
          f"({time.time() - t0:.0f} s in this invocation)")
    if cfg["eval_sequences"] == 0:
        return
    from evaluation import eval_sharp

    test = load_split(cfg["dataset"], "test", cfg["data_root"] or None)
    result, examples = evaluate(cfg, model, test, run.device)
    result.update(steps=steps_done, train_seconds=train_s, parameters=count_parameters(model),
                  model_config=model.config.to_dict(), config=cfg)
    utils.save_json(result, out_dir / "metrics.json")
    eval_sharp.plot_rollout(examples, cfg["context"], out_dir / "baseline_result.png")
    m = result["means"]
    print(f"{cfg['context']} -> {result['horizon']} prediction, mean per frame:  MSE     SSIM   sharpness")
    for name in ("model", "copy_last", "blank"):
        print(f"  {name:<10} {m[name]['mse']:>30.1f} {m[name]['ssim']:>8.3f} {m[name]['sharpness']:>8.2f}")
    last = {k: result["model"][k][-1] for k in ("mse", "sharpness")}
    print(f"  model at step {result['horizon']}: MSE {last['mse']:.1f}, sharpness {last['sharpness']:.2f}")
    print(f"wrote {out_dir}/baseline_result.png, training_curves.png, metrics.json; checkpoint {run.ckpt_path}")


if __name__ == "__main__":
    main()
