"""Speed and quality benchmarks: each section prints a table and writes
results/benchmark/<section>.json (plus its charts).

    python evaluation/benchmark.py --section data              # generate all 40k sequences, timed
    python evaluation/benchmark.py --section data --scale 0.1  # a 4k-sequence quick run
    python evaluation/benchmark.py --section model             # tokenizer / dynamics training speed
    python evaluation/benchmark.py --section budget --minutes 5 10 25 60   # quality per training budget
    python evaluation/benchmark.py --section layers            # untrained rigid layers on each dataset
    python evaluation/benchmark.py --section all               # every section but budget (hours)

Sections register themselves in SECTIONS with @section("name"); a section function takes the
parsed arguments and returns a JSON-able dict whose "rows" (a list of flat dicts) is printed
as the table. Add a model section by writing one such function.
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import utils  # noqa: E402  (import before torch: sets OMP/malloc tuning)

import argparse  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import platform  # noqa: E402
import shlex  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

SECTIONS = {}
LONG = set()      # sections that `--section all` leaves out: they train for hours
DEFAULT_OUT = utils.REPO_ROOT / "results" / "benchmark"


def section(name, long: bool = False):
    """Register a benchmark section: fn(args) -> {"rows": [...], ...}; long: not in `all`."""
    def register(fn):
        SECTIONS[name] = fn
        if long:
            LONG.add(name)
        return fn
    return register


def machine_info() -> dict:
    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info = {"cpu_count": os.cpu_count(), "cpu_model": model, "platform": platform.platform(),
            "python": platform.python_version(), "numpy": np.__version__, "torch": torch.__version__}
    if hasattr(os, "getloadavg"):
        info["load_average_1m_5m_15m"] = [round(x, 2) for x in os.getloadavg()]  # other jobs sharing the CPUs
    return info


def print_table(rows: list[dict]) -> None:
    if not rows:
        return
    cols = list(dict.fromkeys(k for r in rows for k in r))
    text = [[_fmt(r.get(c, "")) for c in cols] for r in rows]
    widths = [max(len(c), *(len(t[i]) for t in text)) for i, c in enumerate(cols)]
    print("  ".join(c.ljust(w) for c, w in zip(cols, widths)))
    print("  ".join("-" * w for w in widths))
    for t in text:
        print("  ".join(v.rjust(w) if _numeric(v) else v.ljust(w) for v, w in zip(t, widths)))


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.4g}" if abs(v) < 1000 else f"{v:.0f}"
    return str(v)


def _numeric(s: str) -> bool:
    try:
        float(s)
        return True
    except ValueError:
        return False


# --- data: dataset generation throughput ---------------------------------------------------------
@section("data")
def bench_data(args) -> dict:
    """Run the CLIs' generation function for all ten datasets into a temporary folder."""
    from data_utils import generate

    names = list(generate.DATASET_NAMES)
    scale = float(args.scale)
    workers = args.workers or generate.default_workers()
    nums = {n: None if scale == 1.0 else max(2, int(round(generate.FULL_COUNTS[n] * scale))) for n in names}
    # Digits as the real CLI finds them (default data/mnist_raw), so both runs do the same work.
    options = {"mnist_root": args.mnist_root or str(generate.DEFAULT_OUT / "mnist_raw")}
    machine = machine_info()  # before the run: the load average then is other jobs' alone
    with tempfile.TemporaryDirectory(prefix="vpwm-bench-data-") as tmp:
        t0 = time.perf_counter()
        stats = _generate_all(generate, names, nums, workers, Path(tmp), options, args)
        total_s = time.perf_counter() - t0
        disk_mb = sum(p.stat().st_size for p in Path(tmp).rglob("*") if p.is_file()) / 2**20
    rows = [{"dataset": s["name"], "sequences": s["sequences"], "seconds": s["seconds"],
             "seq_per_s": s["seq_per_s"], "workers": s["workers"]} for s in stats]
    total_n = sum(s["sequences"] for s in stats)
    rows.append({"dataset": "TOTAL", "sequences": total_n, "seconds": round(total_s, 2),
                 "seq_per_s": round(total_n / total_s, 1), "workers": workers})
    result = {
        "section": "data",
        "what": "wall time of data_utils.generate.generate_datasets for all ten datasets (simulate, render, "
                "write .npy/.npz/meta.json, previews), into a temporary folder; excludes interpreter start-up",
        "scale": scale, "frames": args.frames, "size": args.size, "workers": workers,
        "total_sequences": total_n, "total_seconds": round(total_s, 2), "disk_MiB": round(disk_mb, 1),
        "target_seconds_full_40k": 60,
        "digit_source": next((s.get("digit_source") for s in stats if "digit_source" in s), None),
        "rows": rows, "machine": machine, "command": "python " + " ".join(map(shlex.quote, sys.argv)),
    }
    _throughput_chart(rows[:-1], result, Path(args.out) / "data_throughput.png")
    return result


def _generate_all(generate, names, nums, workers, tmp, options, args):
    """generate.generate_datasets, but with a count per dataset (one pool for the whole run, like the CLIs)."""
    import multiprocessing as mp

    pool = mp.get_context().Pool(workers) if workers > 1 else None
    out = []
    try:
        for name in names:
            s = generate.generate_dataset(name, num=nums[name], frames=args.frames, size=args.size, seed=0,
                                          out=tmp, pool=pool, workers=workers, options=options)
            print(f"{name}: {s['sequences']} sequences in {s['seconds']:.2f} s = {s['seq_per_s']:.0f} seq/s",
                  flush=True)
            out.append(s)
    finally:
        if pool is not None:
            pool.close()
            pool.join()
    return out


def _throughput_chart(rows: list[dict], result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4))
    names = [r["dataset"] for r in rows]
    ax.barh(names[::-1], [r["seq_per_s"] for r in rows][::-1], color="tab:blue")
    ax.set_xlabel("sequences / s")
    m = result["machine"]
    ax.set_title(f"dataset generation: {result['total_sequences']} sequences in {result['total_seconds']:.1f} s "
                 f"({result['workers']} workers, {m['cpu_count']} CPUs)", fontsize=9)
    utils.save_figure(fig, path)


# --- model: world-model training throughput ---------------------------------------------------
@section("model")
def bench_model(args) -> dict:
    """Time optimiser steps of the tokenizer and of the dynamics at the default sizes of
    train_sharp_v2.py, in float32 and (where the device supports it) bf16 autocast, and
    report the quality a finished run reached for its wall time (results/<run>/metrics.json)."""
    from data_utils.datasets import DatasetError
    from training import layers
    from training.train_sharp_v2 import CONFIG as TRAIN
    from training.train_sharp_v2 import resolve_predict, rigidity_clips
    from training.world_model import ModelConfig, SharpWorldModelV2, tokenizer_loss

    device = utils.pick_device(args.device)
    torch.manual_seed(0)
    tok_batch, dyn_batch = args.tok_batch or TRAIN["tok_batch"], args.dyn_batch or TRAIN["dyn_batch"]
    frames = _bench_frames(args.model_dataset, tok_batch, dyn_batch)  # (N, T, 1, 64, 64)
    predict = TRAIN["predict"]
    if predict == "auto":   # as training decides it, on the training clips
        try:
            predict = resolve_predict(predict, rigidity_clips(args.model_dataset, "", TRAIN["context"]), TRAIN["objects"])
        except DatasetError:
            predict = "motion"
            print(f"(no data/{args.model_dataset}: predict=auto cannot test its clips; timing predict=motion)")
    model_cfg = ModelConfig.from_dict({**TRAIN, "predict": predict})
    machine = machine_info()
    precisions = [False, True] if (device.type == "cuda" or (device.type == "cpu" and utils.cpu_supports_bf16())) \
        else [False]
    rows = []
    for bf16 in precisions:
        model = SharpWorldModelV2(model_cfg).to(device)
        # Tokenizer: tok_batch random frames per step, channels_last as in training.
        x = frames.flatten(0, 1)[:tok_batch].to(device).contiguous(memory_format=torch.channels_last)
        opt = torch.optim.AdamW(model.tokenizer.parameters(), lr=1e-4)

        def tok_step():
            with utils.autocast(device, bf16):
                loss, _ = tokenizer_loss(model.tokenizer, x)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

        s = _time_steps(tok_step, args.steps, device)
        rows.append({"phase": "tokenizer", "precision": "bf16" if bf16 else "fp32", "batch": x.shape[0],
                     "s_per_step": round(s, 4), "frames_per_s": round(x.shape[0] / s, 1)})
        # Dynamics: dyn_batch clips, unrolled over T frames, tokenizer frozen, free-running after context.
        clips = frames[:dyn_batch].to(device)
        with torch.no_grad():
            batch = {"frames": clips, "codes": model.encode_clip(clips)}
        model.tokenizer.requires_grad_(False)
        dopt = torch.optim.AdamW(model.dynamics.parameters(), lr=1e-4)

        ctx = TRAIN["context"]
        if model_cfg.predict == "layers":   # the layers are cut once per run (cached), as in training
            batch.update(zip(("L", "velocity", "positions", "score"), layers.cut(clips, model_cfg.objects, ctx)))

        def dyn_step():
            with utils.autocast(device, bf16):
                loss, _ = model(batch, ctx)
            dopt.zero_grad(set_to_none=True)
            loss.backward()
            dopt.step()

        s = _time_steps(dyn_step, max(2, args.steps // 3), device)
        # frames the loss predicts per clip: every step after the first (motion, particles)
        # or the frames after the context (layers)
        n_frames = clips.shape[0] * (clips.shape[1] - (ctx if model_cfg.predict == "layers" else 1))
        rows.append({"phase": "dynamics", "precision": "bf16" if bf16 else "fp32", "batch": clips.shape[0],
                     "s_per_step": round(s, 4), "frames_per_s": round(n_frames / s, 1)})
    result = {"section": "model", "device": str(device), "model_config": model_cfg.to_dict(),
              "what": "median seconds per optimiser step (forward, backward, AdamW) after 2 warm-up steps; "
                      "dynamics frames = clips x predicted frames (T-1 for motion/particles, T-context "
                      "for layers), free-running after the context",
              "rows": rows, "machine": machine, "command": "python " + " ".join(map(shlex.quote, sys.argv))}
    run_metrics = utils.REPO_ROOT / "results" / args.run / "metrics.json"
    if run_metrics.exists():
        m = json.loads(run_metrics.read_text())
        result["quality_for_budget"] = {
            "run": args.run, "dataset": m.get("config", {}).get("dataset"),
            "wall_seconds": m.get("wall_seconds_this_invocation"),
            "tokenizer_psnr_db": m.get("tokenizer", {}).get("psnr"),
            "mse_per_frame": {k: v.get("mse") for k, v in m.get("means", {}).items()}}
        print(f"quality for budget ({run_metrics}): {result['quality_for_budget']}")
    return result


# --- ddp: samples per second with 1..N processes ------------------------------------------
@section("ddp")
def bench_ddp(args) -> dict:
    """Train train_comprehensive.py's default model on all ten datasets for a few dynamics
    steps under torchrun with 1, 2, ... processes (threads split evenly over the cores),
    and read the dynamics' global clips per second off the run's history (median over
    the logged steps after the first). Needs the datasets in data/."""
    import subprocess

    cores = os.cpu_count() or 1
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for n in args.procs:
            env = dict(os.environ, OMP_NUM_THREADS=str(max(1, cores // n)), VPWM_DEVICE=args.device)
            cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={n}", "--",
                   str(utils.REPO_ROOT / "training" / "train_comprehensive.py"), f"--run=ddp{n}", f"--out_root={tmp}",
                   "--minutes=0", "--tok_steps=2", "--dyn_sequences=16", f"--dyn_steps={args.steps}", "--log_every=1",
                   "--eval_sequences=0"]
            t0 = time.time()
            proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
            if proc.returncode != 0:
                said = [ln for ln in (proc.stdout + proc.stderr).splitlines() if ln.startswith("error:")]
                raise SystemExit(f"error: torchrun with {n} processes failed: "
                                 + (said[0] if said else proc.stderr[-1500:]))
            hist = torch.load(Path(tmp) / "checkpoints" / f"ddp{n}" / "latest.pt", weights_only=True)["history"]
            rates = [h["samples_per_s"] for h in hist["dynamics"][1:]]
            rows.append({"processes": n, "threads_each": max(1, cores // n), "dyn_batch": 16,
                         "clips_per_s": round(float(np.median(rates)), 2), "wall_s": round(time.time() - t0, 1)})
    return {"section": "ddp", "rows": rows, "machine": machine_info(),
            "what": "dynamics phase of train_comprehensive.py (default model, global batch 16 clips of 20 frames), "
                    "median global clips per second over the logged steps after the first",
            "command": "python " + " ".join(map(shlex.quote, sys.argv))}


# --- layers: the rigid-layer assumption, untrained, on each dataset ---------------------------
@section("layers")
def bench_layers(args) -> dict:
    """How much of each dataset rigid layers explain with nothing learned: the last context
    frame cut into up to --objects layers (training/layers.py), each moved on at its
    observed velocity (`constant_velocity`: no bounces, no tokenizer), against copy-last and
    blank, on the first --clips test clips (first half of each clip in, second half
    predicted). Also ink_kept, mean and median over the clips (`layers.ink_kept`): the
    share of the last frame's ink pixels the layers cover (ink that no layer follows is
    dropped). predict=auto of train_sharp_v2.py tests the median, on training clips with
    its own `objects` (2). Needs the datasets in --data-root."""
    from data_utils.datasets import DatasetError, load_split, parse_names
    from training import layers
    from training.train_sharp_v2 import RIGID_SHARE

    rows = []
    try:
        clips = {n: load_split(n, "test", args.data_root or None)[:args.clips] for n in parse_names(args.datasets)}
    except DatasetError as exc:
        raise SystemExit(f"error: {exc}") from None
    for name, x in clips.items():
        x = torch.from_numpy(np.array(x))                                     # a copy: the split is read-only
        x = x.float().div(255)[:, :, None]                                    # (N, T, 1, H, W)
        ctx, fut = x[:, :x.shape[1] // 2], x[:, x.shape[1] // 2:]
        L, v = layers.observe_layers(ctx, args.objects)
        pred = layers.constant_velocity(L, v, fut.shape[1])
        mse = lambda p: (p - fut).pow(2).flatten(2).sum(-1).mean(0)           # noqa: E731  (T_pred,) per frame
        ours, copy, blank = mse(pred), mse(ctx[:, -1:].expand_as(fut)), mse(torch.zeros_like(fut))
        kept = layers.ink_kept(L, ctx[:, -1, 0])
        rows.append({"dataset": name, "layers_mse": round(ours.mean().item(), 1),
                     "first": round(ours[0].item(), 1), "last": round(ours[-1].item(), 1),
                     "copy_last": round(copy.mean().item(), 1), "blank": round(blank.mean().item(), 1),
                     "steps_below_both": int(((ours < copy) & (ours < blank)).sum()),
                     "ink_kept": round(kept.mean().item(), 2), "ink_kept_median": round(kept.median().item(), 2)})
    return {"section": "layers", "rows": rows, "objects": args.objects, "clips": args.clips,
            "machine": machine_info(), "command": "python " + " ".join(map(shlex.quote, sys.argv)),
            "what": "untrained rigid layers at constant velocity, pixel space: mean MSE per predicted frame "
                    "(summed over pixels), first and last step, beside copy-last and blank; the share of the "
                    "last context frame's ink the layers keep, mean and median over clips (predict=auto of "
                    f"train_sharp_v2.py picks layers where the median over its training clips, with its "
                    f"own objects, is at least {RIGID_SHARE})"}


# --- budget: quality for a wall-time budget, world model against the learned baseline ------------
BUDGET_MODELS = {"world model": ("train_sharp_v2.py", "sharp_v2"), "baseline": ("train_baseline.py", "baseline")}


@section("budget", long=True)
def bench_budget(args) -> dict:
    """Train the world model and the SimVP-style baseline for each wall-time budget in
    --minutes, one after the other (two trainings at once would halve each one's CPU), and
    read the 10 -> 10 quality off each run's metrics.json: mean MSE per frame, SSIM, and MSE
    and sharpness at the last step. A budget already run (<root>/results/<run>_<m>min/
    metrics.json) is read, not trained again, and one killed midway resumes, so re-running
    the command carries on. Writes budget.png: MSE and sharpness against minutes."""
    import subprocess

    root = Path(args.root)
    extra = shlex.split(args.train_args)
    if any(a.startswith(("--run=", "--dataset=", "--minutes=", "--out_root=")) for a in extra):
        raise SystemExit("error: --train-args must not set --run, --dataset, --minutes or --out_root; the budget "
                         "section sets them (use --model-dataset, --minutes and --root)")
    rows, references = [], {}
    for minutes in args.minutes:
        for label, (script, prefix) in BUDGET_MODELS.items():
            run = f"{prefix}_{minutes:g}min"
            path = root / "results" / run / "metrics.json"
            if not path.exists():
                cmd = [sys.executable, str(utils.REPO_ROOT / "training" / script), f"--minutes={minutes:g}",
                       f"--run={run}", f"--dataset={args.model_dataset}", f"--out_root={root}",
                       *extra]
                if (root / "checkpoints" / run / "latest.pt").exists():
                    cmd.append("--resume")
                print(" ".join(map(shlex.quote, cmd[1:])), flush=True)
                if subprocess.run(cmd).returncode != 0:
                    raise SystemExit(f"error: {script} failed for {minutes:g} minutes; its output is above")
            m = json.loads(path.read_text())
            if m["config"]["dataset"] != args.model_dataset:
                raise SystemExit(f"error: {path.parent} was trained on {m['config']['dataset']}, not "
                                 f"{args.model_dataset}; pass another --root or move that run away")
            model = m["model"]
            rows.append({"model": label, "minutes": minutes, "mse": round(m["means"]["model"]["mse"], 1),
                         "ssim": round(m["means"]["model"]["ssim"], 3), "mse_last": round(model["mse"][-1], 1),
                         "sharpness_last": round(model["sharpness"][-1], 2), "run": run})
            references = {k: round(m["means"][k]["mse"], 1) for k in ("copy_last", "blank")}
    result = {"section": "budget", "dataset": args.model_dataset, "rows": rows, "references_mse": references,
              "machine": machine_info(), "command": "python " + " ".join(map(shlex.quote, sys.argv)),
              "what": "10 -> 10 on the first eval_sequences test clips of each run: mean MSE per frame (summed "
                      "over pixels), mean SSIM, and MSE and sharpness at the last predicted step"}
    _budget_chart(rows, references, Path(args.out) / "budget.png")
    return result


def _budget_chart(rows: list[dict], references: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_mse, ax_sharp) = plt.subplots(1, 2, figsize=(10, 3.8))
    for label in BUDGET_MODELS:
        mine = sorted((r for r in rows if r["model"] == label), key=lambda r: r["minutes"])
        x = [r["minutes"] for r in mine]
        ax_mse.plot(x, [r["mse"] for r in mine], "o-", label=label)
        ax_sharp.plot(x, [r["sharpness_last"] for r in mine], "o-", label=label)
    for (name, value), style in zip(references.items(), (":", "--")):
        ax_mse.axhline(value, color="grey", ls=style, lw=1, label=name.replace("_", "-"))
    ax_sharp.axhline(1.0, color="grey", ls=":", lw=1, label="as sharp as the truth")
    ax_mse.set(xlabel="training budget (minutes of wall time)", ylabel="mean MSE per frame", title="10 -> 10 MSE")
    ax_sharp.set(xlabel="training budget (minutes of wall time)", ylabel="sharpness at the last step",
                 title="sharpness (1 = as sharp as the truth)",
                 ylim=(0, max(1.2, 0.1 + max(r["sharpness_last"] for r in rows))))
    for ax in (ax_mse, ax_sharp):
        ax.set_xscale("log")
        ax.set_xticks(sorted({r["minutes"] for r in rows}), [f"{r:g}" for r in sorted({r["minutes"] for r in rows})])
        ax.minorticks_off()
        ax.legend(fontsize=8)
    utils.save_figure(fig, path)


def _bench_frames(name: str, n_frames: int, n_clips: int) -> torch.Tensor:
    """Real training clips when the dataset exists (so codebook and motion are realistic),
    else random moving squares of the same shape. Returns float (N, T, 1, 64, 64) in [0, 1]."""
    from data_utils.datasets import DatasetError, load_split

    n = max(n_clips, -(-n_frames // 20))
    try:
        clips = np.array(load_split(name, "train")[:n])  # a copy: the memmap is read-only
        return torch.from_numpy(clips).float().div(255).unsqueeze(2)
    except DatasetError:
        print(f"(no data/{name}: timing on synthetic moving squares)")
        x = torch.zeros(n, 20, 1, 64, 64)
        for t in range(20):   # the same square moving 2 px/frame in every clip
            x[:, t, 0, 20:30, 5 + 2 * t:15 + 2 * t] = 1.0
        return x


def _time_steps(fn, steps: int, device) -> float:
    for _ in range(2):
        fn()
    times = []
    for _ in range(steps):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


# --- driver ----------------------------------------------------------------------------------------
def main(argv=None):
    parser = argparse.ArgumentParser(prog="python evaluation/benchmark.py", description=__doc__.splitlines()[0])
    parser.add_argument("--section", default="all", help=f"one of {', '.join(SECTIONS)}, or all")
    parser.add_argument("--out", default=str(DEFAULT_OUT), help="folder for <section>.json and charts")
    parser.add_argument("--scale", type=float, default=1.0, help="data: fraction of the full dataset sizes")
    parser.add_argument("--workers", type=int, default=None, help="data: worker processes (default min(2, cpus))")
    parser.add_argument("--mnist-root", default=None, help="data: MNIST folder (default data/mnist_raw)")
    parser.add_argument("--frames", type=int, default=20, help="data: frames per sequence")
    parser.add_argument("--size", type=int, default=64, help="data: frame size")
    parser.add_argument("--device", default="auto", help="model: auto | cpu | cuda | mps")
    parser.add_argument("--steps", type=int, default=10, help="model: timed optimiser steps (dynamics: a third)")
    parser.add_argument("--tok-batch", type=int, default=0, help="model: frames per tokenizer step (0: training default)")
    parser.add_argument("--dyn-batch", type=int, default=0, help="model: clips per dynamics step (0: training default)")
    parser.add_argument("--model-dataset", default="moving_mnist", help="model: clips to time on; budget: the dataset to train on")
    parser.add_argument("--procs", type=int, nargs="+", default=[1, 2], help="ddp: process counts to time")
    parser.add_argument("--run", default="sharp_v2", help="model: run whose metrics.json gives quality for budget")
    parser.add_argument("--minutes", type=float, nargs="+", default=[5, 10, 25, 60],
                        help="budget: wall-time budgets to train both models for")
    parser.add_argument("--root", default=str(utils.REPO_ROOT),
                        help="budget: folder holding the runs' checkpoints/ and results/")
    parser.add_argument("--datasets", default="all", help="layers: all, or a comma-separated list")
    parser.add_argument("--data-root", default="", help="layers: the datasets' folder ('' = data/)")
    parser.add_argument("--clips", type=int, default=64, help="layers: test clips per dataset")
    parser.add_argument("--objects", type=int, default=4, help="layers: most layers cut per clip")
    parser.add_argument("--train-args", default="",
                        help="budget: settings passed to both training scripts, e.g. '--data_root=data/font'")
    args = parser.parse_args(argv)
    if args.section != "all" and args.section not in SECTIONS:
        raise SystemExit(f"error: unknown section '{args.section}'; valid: {', '.join(SECTIONS)}, all")
    if not 0 < args.scale <= 1:
        raise SystemExit(f"error: --scale must be in (0, 1], got {args.scale}")
    todo = [s for s in SECTIONS if s not in LONG] if args.section == "all" else [args.section]
    results = {}
    for name in todo:
        print(f"== benchmark section: {name}", flush=True)
        res = SECTIONS[name](args)
        print_table(res.get("rows", []))
        path = Path(args.out) / f"{name}.json"
        utils.save_json(res, path)
        print(f"wrote {path}")
        results[name] = res
    return results


if __name__ == "__main__":
    main()
