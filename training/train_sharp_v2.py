"""Train SharpWorldModelV2 on one dataset (Moving MNIST by default).

    python training/train_sharp_v2.py                          # CPU-sized defaults
    python training/train_sharp_v2.py --dataset=bouncing_balls --run=balls
    python training/train_sharp_v2.py --resume                 # carry on after a kill
    python training/train_sharp_v2.py --help                   # list every setting

The phases, resume and DDP are training/loop.py's (shared with train_comprehensive.py):
(1) the VQ-VAE tokenizer on single frames; (2) the codes of the training clips computed
once and cached; (3) the ConvGRU dynamics on the cached codes with the tokenizer frozen,
moving from teacher forcing to free-running rollouts. The evaluation is
evaluation/eval_sharp.evaluate, the one eval_sharp.py runs. Writes
checkpoints/<run>/latest.pt (config, model_config, model, optimiser, phase, step, history) and
results/<run>/: sharp_model_v2_result.png, training_curves.png, metrics.json.
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import utils  # noqa: E402  (first: CPU tuning before torch starts its thread pool)

import numpy as np  # noqa: E402
import torch  # noqa: E402

from data_utils.datasets import DatasetError, dataset_command, load_split  # noqa: E402
from training import layers  # noqa: E402
from training.loop import Run, check_context, plot_history, train_world_model  # noqa: E402
from training.world_model import PREDICT_MODES  # noqa: E402

CONFIG = dict(
    # --- run ---------------------------------------------------------------------------
    run="sharp_v2",            # checkpoints/<run>/ and results/<run>/
    dataset="moving_mnist",    # any of the ten datasets in data/
    data_root="",              # '' = <repo>/data
    device="auto",             # auto | cpu | cuda | mps
    seed=0,
    bf16=True,                 # bf16 autocast on a CPU with AVX512-BF16/AMX and on CUDA
    resume=False,              # continue from checkpoints/<run>/latest.pt
    minutes=25.0,              # a wall-time budget (training/loop.py), so the default run takes the same
                               #   time on any machine: the tokenizer until tok_share of it, then the codes
    tok_share=0.5,             #   and the dynamics; 0 = train for tok_steps / dyn_steps (bit-reproducible)
    # --- model -------------------------------------------------------------------------
    channels=64,               # tokenizer width (32x32 stage; the 16x16 stage has 2x)
    code_dim=64,               # codebook vector size
    num_codes=512,             # codebook size
    hidden=64,                 # ConvGRU channels
    layers=2,                  # stacked ConvGRU cells
    predict="auto",            # particles (every pixel a particle, the core corrects its measured motion,
                               # splat, re-tokenise) | motion (warp a displacement field, re-tokenise)
                               # | layers (move rigid objects, re-tokenise) | auto: layers where the clips are rigid
                               #   bodies (resolve_predict), else motion
    objects=2,                 # predict=layers: rigid layers cut from the last context frame
    # --- tokenizer phase -----------------------------------------------------------------
    init_tokenizer="",         # a checkpoint whose tokenizer to reuse (skips this phase); '' = train one
    tok_steps=1000,            # optimiser steps on random frames (with --minutes=0)
    tok_batch=64,              # frames per step
    tok_lr=2e-3,
    # --- dynamics phase ------------------------------------------------------------------
    dyn_sequences=2000,        # training clips (per dataset) whose codes are cached (0 = all)
    dyn_steps=450,             # optimiser steps (with --minutes=0; 0: keep the untrained dynamics)
    dyn_batch=16,              # clips per step
    dyn_lr=1e-3,
    context=10,                # observed frames; the rest of each clip is predicted
    teacher_forcing_until=0.3,  # fraction of the dynamics phase (steps, or time under minutes) over which teacher forcing fades to 0 (not layers)
    workers=0,                 # DataLoader worker processes (0: load in the training process)
    # --- evaluation and I/O --------------------------------------------------------------
    eval_sequences=256,        # test clips for the final 10 -> 10 numbers
    log_every=25,
    ckpt_every=100,            # steps between checkpoints (each phase)
    out_root="",               # '' = the repo: checkpoints/<run>/ and results/<run>/ go under it
)


def evaluate(cfg, model, test, device):
    """10 -> 10 prediction on the first eval_sequences test clips (eval_sharp.evaluate,
    the same function the evaluation script runs) and the tokenizer's reconstruction of
    the same frames; the first three clips are kept as examples."""
    # Imported here, after training: torchmetrics alone takes seconds to import, which a run
    # that stops with an error (or is killed) before it evaluates should not wait for.
    from evaluation import eval_sharp
    from evaluation.metrics import summarize

    test = test[:min(cfg["eval_sequences"], test.shape[0])]
    ctx = cfg["context"]
    ev = eval_sharp.evaluate(model, test, device, ctx, test.shape[1] - ctx, batch_size=32,
                             example_ids=range(min(3, len(test))), bf16=cfg["bf16"], progress=False)
    result = {"n_sequences": len(test), "context": ctx, "horizon": test.shape[1] - ctx,
              "tokenizer": eval_sharp.tokenizer_quality(model, test, device, bf16=cfg["bf16"]), **ev["short"]}
    result["means"] = {k: summarize(result[k]) for k in eval_sharp.NAMES}
    ex = ev["examples"]
    with torch.no_grad(), torch.autocast(device.type, enabled=False):
        full = ex["truth"].unsqueeze(2).to(device)
        recon = model.reconstruct(full.flatten(0, 1)).view_as(full).cpu()
    return result, (full.cpu(), recon, ex["pred"].unsqueeze(2))


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

    plot_history(history, out_dir / "training_curves.png")


RIGID_CLIPS = 64      # predict=auto: the first training clips its rigidity test reads
RIGID_SHARE = 0.95    # ... layers when the median clip's rigid layers keep at least this share of its ink


def rigidity_clips(dataset: str, data_root: str, context: int) -> torch.Tensor:
    """What predict=auto's test reads: the context frames of the first RIGID_CLIPS training
    clips, (N, context, 1, H, W) in [0, 1]. DatasetError when the dataset is missing."""
    train = load_split(dataset, "train", data_root or None)
    return torch.from_numpy(np.array(train[:RIGID_CLIPS, :context])).float().div(255)[:, :, None]


def resolve_predict(predict: str, context: torch.Tensor, objects: int) -> str:
    """predict="auto" picks the dynamics unit from the clips, not from the dataset's name:
    rigid layers when the scene is rigid bodies, the displacement field otherwise. The
    test: cut the last context frame of each clip into at most `objects` rigid layers
    (training/layers.py) and measure the share of its ink they cover (`layers.ink_kept`);
    rigid when the median clip keeps RIGID_SHARE of it. Ink of a turning rod, a spring, a
    wave or a body beyond the objects-th follows no rigid layer and would be dropped.
    Still a choice between two units, not one general dynamics; which datasets pass, with
    their shares: docs/experiments.md. context (N, T, 1, H, W) in [0, 1]."""
    if predict != "auto":
        return predict
    L, _ = layers.observe_layers(context, objects)
    share = layers.ink_kept(L, context[:, -1, 0]).median().item()
    unit = "layers" if share >= RIGID_SHARE else "motion"
    print(f"predict=auto: {unit} (in the median of {context.shape[0]} training clips, {objects} rigid layers keep "
          f"{share:.2f} of the ink; layers from {RIGID_SHARE:.2f})")
    return unit


def main():
    cfg = utils.parse_overrides(CONFIG)
    try:
        dataset_command(cfg["dataset"])   # checks the name
    except DatasetError as exc:
        raise SystemExit(f"error: {exc}; pass one of them as --dataset=NAME") from None
    check_context(cfg)   # before the rigidity test of predict=auto, which needs two frames
    if cfg["predict"] == "auto":
        try:
            context = rigidity_clips(cfg["dataset"], cfg["data_root"], cfg["context"])
        except DatasetError as exc:
            raise SystemExit(f"error: {exc}") from None
        cfg["predict"] = resolve_predict("auto", context, cfg["objects"])
    if cfg["predict"] not in PREDICT_MODES:
        raise SystemExit(f"error: --predict must be auto or one of {', '.join(PREDICT_MODES)}, "
                         f"got '{cfg['predict']}'")
    run = Run(cfg)
    model, _, times = train_world_model(cfg, run, [cfg["dataset"]])
    if not run.end_training():   # under torchrun, rank 0 alone evaluates and writes
        return
    test = load_split(cfg["dataset"], "test", cfg["data_root"] or None)
    result, examples = evaluate(cfg, model, test, run.device)
    result["wall_seconds_this_invocation"] = times
    result["config"] = cfg
    out_dir = run.out_dir
    utils.save_json(result, out_dir / "metrics.json")
    plot_results(cfg, run.history, result, examples, out_dir)
    m = result["means"]
    print(f"tokenizer: PSNR {result['tokenizer']['psnr']:.2f} dB, L1/pixel {result['tokenizer']['l1_per_pixel']:.4f}")
    print("10 -> 10 prediction, mean per frame:  MSE     SSIM   sharpness")
    for name in ("model", "copy_last", "blank"):
        print(f"  {name:<10} {m[name]['mse']:>24.1f} {m[name]['ssim']:>8.3f} {m[name]['sharpness']:>8.2f}")
    last = {k: result["model"][k][-1] for k in ("mse", "sharpness")}
    print(f"  model at step {result['horizon']}: MSE {last['mse']:.1f}, sharpness {last['sharpness']:.2f} "
          f"(copy-last {result['copy_last']['mse'][-1]:.1f}, blank {result['blank']['mse'][-1]:.1f})")
    print(f"wrote {out_dir}/sharp_model_v2_result.png, training_curves.png, metrics.json; "
          f"checkpoint {run.ckpt_path}")


if __name__ == "__main__":
    main()
