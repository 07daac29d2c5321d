"""The one training loop of the world model, shared by training/train_sharp_v2.py (one
dataset) and training/train_comprehensive.py (all ten), on SequenceWindows and a
DataLoader, in one process or under torchrun with DistributedDataParallel.

    run = Run(cfg)                                           # folders, device, ranks, resume rules
    model, windows, times = train_world_model(cfg, run, names)   # tokenizer -> codes -> dynamics

Phases: (1) the VQ-VAE tokenizer on single frames; (2) the tokens of the training clips
computed once and cached (checkpoints/<run>/codes_<dataset>.npy; and the rigid-layer cut
for predict=layers); (3) the dynamics on the cached tokens, tokenizer frozen, moving from
teacher forcing to free-running rollouts.

Determinism: each optimiser step draws its clips from a generator seeded by (seed, step)
and its frames and teacher-forcing choices from one seeded by (seed, phase, step). So a
run resumed from a checkpoint (saved
atomically every ckpt_every steps) continues exactly as an uninterrupted one, and N
processes that each take their 1/N of every global batch take the same batches one
process would. DDP averages gradients; the tokenizer's EMA codebook statistics are summed
across ranks in the quantizer; only rank 0 writes files. The logged losses and rollout
errors are rank 0's share of each batch. (The layers loss normalises by each rank's own
count of layers found, so under DDP its gradient is close to, not equal to, one process's.)

Wall-time budget (`minutes` > 0, for comparisons at equal CPU time): each phase trains until
its deadline instead of for a number of steps (the tokenizer until tok_share of the budget,
the dynamics until the whole budget), with the one-cycle schedule stretched over the phase's
time instead of its steps. The budget counts from the start of the run (Run()) to the end of
training, caching the codes included and the final evaluation not; a resumed run continues
the clock saved in its checkpoint. Caching the codes may take CACHE_SHARE of the time left
when it starts; it stops there and the dynamics draws from the clips cached. The batches are
still those of (seed, step), but where a budgeted run stops and its learning rate at each step
depend on the machine's speed, so it is not bit-reproducible. Under torchrun every rank follows rank 0's clock.

The same pieces train models without a tokenizer (training/train_baseline.py: one phase,
"train"): Run(cfg, phases=...), StepBatches, optimise, save_state.
"""
from __future__ import annotations

import math
import os
import time
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

import utils
from data_utils.datasets import DatasetError, SequenceWindows, load_split
from training import layers
from training.world_model import ModelConfig, SharpWorldModelV2, tokenizer_loss

PHASES = ("tokenizer", "codes", "dynamics", "done")
# Under a wall-time budget, caching the codes may take at most this share of the time left
# when it starts (the rest trains the dynamics): the default 2,000 clips fit within it at 25
# minutes but not at 5 (docs/experiments.md, 2026-12-06, "caching sized to the budget").
CACHE_SHARE = 0.25
UNBOUNDED = 10 ** 12   # the step count of a phase that ends at a wall-time deadline


# ----------------------------------------------------------------------------------------
# Processes, folders, resume
# ----------------------------------------------------------------------------------------
class Run:
    """Where a run lives and which process this is.

    Under torchrun (RANK / WORLD_SIZE / LOCAL_RANK set) it joins the process group: gloo
    on the CPU, nccl on CUDA (one GPU per local rank). checkpoints/<run>/latest.pt and
    results/<run>/ are written by rank 0 only. `phases`: those a checkpoint of this kind of
    run may be in (`what` names the kind in errors). Its clock (elapsed()) is the run's
    training time, carried over by a resume; budget_s = 60 * cfg['minutes'] (0: no budget)."""

    def __init__(self, cfg: dict, phases: tuple = PHASES, what: str = "world-model"):
        self._t0 = time.perf_counter()
        self.phases, self.what = phases, what
        self.budget_s = 60.0 * float(cfg.get("minutes", 0) or 0)
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        device = utils.pick_device(cfg["device"], verbose=self.rank == 0)
        if self.world > 1:
            local = int(os.environ.get("LOCAL_RANK", "0"))
            if device.type == "cuda":
                device = torch.device("cuda", local)
                torch.cuda.set_device(device)
            if not dist.is_initialized():
                dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
        self.device = device
        self.main = self.rank == 0
        base = Path(cfg["out_root"]) if cfg["out_root"] else utils.REPO_ROOT
        self.ckpt_dir, self.out_dir = base / "checkpoints" / cfg["run"], base / "results" / cfg["run"]
        self.ckpt_path = self.ckpt_dir / "latest.pt"
        self.state = None
        self.history = {p: [] for p in phases if p not in ("codes", "done")}
        self._elapsed0, self.phase_begin = 0.0, 0.0
        failure = None
        try:
            self._prepare(cfg)
        except SystemExit as exc:
            failure = exc
        if self.world > 1:
            # Every rank checks the run folder before any rank writes to it, and all stop
            # together when one cannot go on (a rank left waiting in a collective would hang).
            failed = torch.tensor([0.0 if failure is None else 1.0], device=self.device)
            dist.all_reduce(failed, op=dist.ReduceOp.MAX)
            if failed.item() and failure is None:
                failure = SystemExit("error: another process stopped; its message says why")
        if failure is not None:
            self.close()
            raise failure
        if self.state is not None:
            self.history = self.state["history"]
            self._elapsed0 = float(self.state.get("elapsed_s", 0.0))
            self.phase_begin = float(self.state.get("phase_begin_s", 0.0))

    def elapsed(self) -> float:
        """Seconds of training so far, this process's clock (before a resume included)."""
        return self._elapsed0 + time.perf_counter() - self._t0

    def clock(self) -> float:
        """elapsed(), the same on every rank (rank 0's): a budgeted phase stops at the same
        step everywhere and every rank sets the same learning rate."""
        if self.world == 1:
            return self.elapsed()
        t = torch.tensor([self.elapsed()], dtype=torch.float64, device=self.device)
        dist.broadcast(t, 0)
        return float(t.item())

    def _prepare(self, cfg):
        if self.budget_s < 0:
            raise SystemExit(f"error: --minutes must be 0 (no budget: train for the step counts) or more, "
                             f"got {cfg['minutes']}")
        if not 0 <= cfg.get("tok_share", 0.5) < 1:
            raise SystemExit(f"error: --tok_share is the fraction of --minutes for the tokenizer, from 0 to "
                             f"below 1; got {cfg['tok_share']}")
        check_batches(cfg, self.world)   # now, not when the phase that uses the batch starts
        check_context(cfg)
        if cfg["resume"]:
            if not self.ckpt_path.exists():
                raise SystemExit(f"error: --resume given but {self.ckpt_path} does not exist; "
                                 f"drop --resume to start fresh")
            self.state = utils.load_checkpoint(self.ckpt_path, map_location="cpu", fix="start a new --run=NAME")
            if self.state.get("phase") not in self.phases or "model" not in self.state:
                raise SystemExit(f"error: {self.ckpt_path} is not a {self.what} training checkpoint; "
                                 f"use another --run")
            check_same_model(cfg, self.state, self.ckpt_path)
        elif self.ckpt_path.exists():
            raise SystemExit(f"error: {self.ckpt_path} exists; pass --resume to continue it or --run=NAME "
                             f"for a new run")
        if self.main:
            try:
                self.out_dir.mkdir(parents=True, exist_ok=True)
                self.ckpt_dir.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise SystemExit(f"error: cannot write {self.out_dir} or {self.ckpt_dir} ({exc.strerror}); "
                                 f"pass a writable --out_root") from None
            utils.remove_stale_temps(self.ckpt_dir)   # left by a run killed while writing a file
            utils.save_json(cfg, self.out_dir / "config.json")

    def barrier(self):
        if self.world > 1:
            dist.barrier()

    def close(self):
        """Leave the process group, all ranks together: a rank that exits while another still
        talks to it can abort in gloo's teardown (seen in CI as SIGABRT, "terminate called
        without an active exception")."""
        if self.world > 1 and dist.is_initialized():
            dist.barrier()
            dist.destroy_process_group()

    def end_training(self) -> bool:
        """After the last collective (check_in_sync): every rank leaves the group together,
        and only rank 0 goes on to evaluate and write. Returns whether this process goes on."""
        self.close()
        return self.main


def check_same_model(cfg: dict, state: dict, path: Path):
    """A run resumes with the model settings it was trained with: otherwise one line naming
    them, before anything (results/<run>/config.json included) is written."""
    theirs = state.get("model_config") or {}
    differ = [k for k in theirs if k != "image_size" and k in cfg and cfg[k] != theirs[k]]
    if differ:
        raise SystemExit(f"error: {path} was trained with " + " ".join(f"--{k}={theirs[k]}" for k in differ)
                         + ", not " + " ".join(f"--{k}={cfg[k]}" for k in differ)
                         + "; resume with its settings or start a new --run=NAME")


def save_state(run: Run, cfg, model, opt, phase, step, history):
    """The checkpoint: settings, model_config (the model's own config.to_dict()), weights,
    optimiser, phase and step, history, and the run's clock (elapsed_s; phase_begin_s: when
    the current phase started, for a budgeted schedule)."""
    if run.main:
        utils.save_checkpoint({"config": cfg, "model_config": model.config.to_dict(), "model": model.state_dict(),
                               "optimizer": opt.state_dict() if opt is not None else {}, "phase": phase,
                               "step": step, "history": history, "elapsed_s": run.elapsed(),
                               "phase_begin_s": run.phase_begin}, run.ckpt_path)


# ----------------------------------------------------------------------------------------
# Data
# ----------------------------------------------------------------------------------------
def check_batches(cfg: dict, world: int) -> None:
    """Each batch setting is the batch of all processes together, split evenly among them."""
    for key in ("tok_batch", "dyn_batch", "batch"):
        if key in cfg and cfg[key] % world:
            raise SystemExit(f"error: --{key}={cfg[key]} is the batch of all {world} processes together and "
                             f"must be divisible by their number; pass a multiple of {world}")


def check_context(cfg: dict) -> None:
    """The rigid layers (and predict=auto, which tries them) read each body's motion
    between the last two context frames."""
    if cfg.get("predict") in ("auto", "layers") and cfg.get("context", 2) < 2:
        raise SystemExit(f"error: --predict={cfg['predict']} reads each body's motion between the last two "
                         f"context frames; pass --context=2 or more, or --predict=motion")


class StepBatches:
    """A batch sampler whose step s draws `global_batch` items by `weights` (with
    replacement) from a generator seeded by (seed, s) and yields this rank's share.
    Iterating starts at step `start`: a resumed run draws what the killed one would have."""

    def __init__(self, weights: torch.Tensor, global_batch: int, steps: int, seed: int,
                 rank: int = 0, world: int = 1, start: int = 0):
        if global_batch % world:
            raise ValueError(f"global_batch {global_batch} is not divisible by {world} processes")   # Run checks the flags
        self.weights, self.global_batch, self.steps, self.seed = weights, global_batch, steps, seed
        self.rank, self.world, self.start = rank, world, start

    def draw(self, step: int) -> torch.Tensor:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + step)
        return torch.multinomial(self.weights, self.global_batch, replacement=True, generator=g)

    def __iter__(self):
        per = self.global_batch // self.world
        for step in range(self.start, self.steps):
            yield self.draw(step)[self.rank * per:(self.rank + 1) * per].tolist()

    def __len__(self):
        return max(0, self.steps - self.start)


def step_generator(seed: int, phase: str, step: int) -> np.random.Generator:
    """What a step draws besides its clips (frame choice, teacher forcing): the same on
    every rank and after a resume."""
    return np.random.default_rng([seed, PHASES.index(phase), step])


class CachedWindows(Dataset):
    """SequenceWindows plus per-clip arrays cached beside the run (codes, the layer cut):
    item = the window's dict + {key: arrays[key][dataset][sequence]} as tensors."""

    def __init__(self, windows: SequenceWindows, arrays: dict[str, list]):
        self.windows, self.arrays = windows, arrays

    def __getstate__(self):
        # DataLoader workers: a memmap would pickle as a full copy; send its file instead
        state = self.__dict__.copy()
        state["arrays"] = {key: [("memmap", a.filename) if isinstance(a, np.memmap) else a for a in per]
                           for key, per in self.arrays.items()}
        return state

    def __setstate__(self, state):
        state["arrays"] = {key: [np.load(a[1], mmap_mode="r") if isinstance(a, tuple) else a for a in per]
                           for key, per in state["arrays"].items()}
        self.__dict__.update(state)

    def __len__(self):
        return len(self.windows)

    def __getitem__(self, i):
        item = self.windows[i]
        k, seq = item["dataset"], item["index"]
        for key, per_dataset in self.arrays.items():
            item[key] = torch.from_numpy(np.asarray(per_dataset[k][seq]).astype(
                np.int64 if key == "codes" else np.float32))
        return item


def open_windows(cfg: dict, names: list[str], split: str = "train") -> SequenceWindows:
    """Whole clips of the named datasets (one window per clip, from frame 0)."""
    root = cfg["data_root"] or None
    try:
        T = min(load_split(name, split, root).shape[1] for name in names)
        if T <= cfg["context"]:
            raise SystemExit(f"error: clips have {T} frames; --context={cfg['context']} must be smaller")
        return SequenceWindows(names, split, context=cfg["context"], target=T - cfg["context"], root=root)
    except DatasetError as exc:
        raise SystemExit(f"error: {exc}") from None


def to_device(batch: dict, device) -> dict:
    return {k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()}


# ----------------------------------------------------------------------------------------
# One optimisation phase
# ----------------------------------------------------------------------------------------
def check_finite(value: float, what: str, phase: str, step: int, run: Run, lr_flag: str = "--tok_lr / --dyn_lr"):
    """Stop every rank together (one rank leaving would hang the others in backward) when
    `value` is NaN or infinite on any of them; the weights have not been updated with it."""
    bad = not math.isfinite(value)
    if run.world > 1:
        flag = torch.tensor([float(bad)], device=run.device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        bad = bool(flag.item())
    if bad:
        if run.ckpt_path.exists():
            saved = (f"the last checkpoint ({run.ckpt_path}) was saved before it - lower the learning rate "
                     f"({lr_flag}) and rerun with --resume")
        else:
            saved = f"no checkpoint was saved yet - lower the learning rate ({lr_flag}) and rerun"
        raise SystemExit(f"error: the {phase} {what} became non-finite at step {step}; {saved}")


def schedule(opt, lr: float, steps: int):
    """One-cycle learning rate (5% warm-up) over `steps`; a constant rate for runs under 40
    steps (tests, smoke runs), where the warm-up would round to zero steps (OneCycleLR
    divides by zero at exactly 20)."""
    if steps < 40:
        return torch.optim.lr_scheduler.LambdaLR(opt, lambda _: 1.0)
    return torch.optim.lr_scheduler.OneCycleLR(opt, lr, total_steps=steps, pct_start=0.05)


def one_cycle(frac: float, pct_start: float = 0.05, div: float = 25.0, final_div: float = 1e4):
    """OneCycleLR's learning-rate factor (of the peak) and Adam beta1 at fraction `frac` of a
    phase, with its default settings (cosine annealing, beta1 0.95 -> 0.85 -> 0.95): the same
    schedule for a phase whose length is a time."""
    def cos(a, b, t):
        return b + (a - b) * (1 + math.cos(math.pi * t)) / 2
    frac = min(max(frac, 0.0), 1.0)
    if frac < pct_start:
        t = frac / pct_start
        return cos(1 / div, 1.0, t), cos(0.95, 0.85, t)
    t = (frac - pct_start) / (1 - pct_start)
    return cos(1.0, 1 / (div * final_div), t), cos(0.85, 0.95, t)


def optimise(cfg, run: Run, model, phase: str, params, lr: float, steps: int, loader_for, loss_fn,
             postfix, until_s: float = 0.0, lr_flag: str = "--tok_lr / --dyn_lr") -> int:
    """AdamW + one-cycle LR over `steps`, bf16 autocast, gradient clipping, NaN stop,
    atomic checkpoints every ckpt_every steps, resume from the checkpoint's step.
    until_s > 0: train until the run's clock reaches until_s instead (`steps` is ignored), the
    one-cycle schedule over the time from the phase's start to until_s.
    loader_for(start, steps) -> iterable of batches from step `start`; loss_fn(batch, step,
    progress) -> (loss, logs), progress = the fraction of the phase done (of its steps or of
    its time). Returns the number of steps done."""
    budget = until_s > 0
    if budget:
        steps = UNBOUNDED
    params = [p for p in params if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=1e-4 if phase == "dynamics" else 0.0)
    sched = None if budget else schedule(opt, lr, steps)
    start = 0
    run.phase_begin = run.elapsed()
    if run.state is not None and run.state["phase"] == phase:
        # The schedule's settings come from this command line (a lower --dyn_lr after a NaN
        # stop must take effect), the moments and step counts from the checkpoint.
        fresh = [{k: g[k] for k in ("initial_lr", "max_lr", "min_lr") if k in g} for g in opt.param_groups]
        opt.load_state_dict(run.state["optimizer"])
        for g, f in zip(opt.param_groups, fresh):
            g.update(f)
        start = run.state["step"]
        run.phase_begin = float(run.state.get("phase_begin_s", 0.0))
        if sched is not None:
            # Fast-forward the schedule to the checkpoint's step; no optimizer step has run in
            # this process yet, which PyTorch warns about but is what a resume means here.
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message="Detected call of `lr_scheduler.step",
                                        category=UserWarning)
                for _ in range(start):
                    sched.step()
    history = run.history.setdefault(phase, [])
    bar = tqdm(desc=phase, initial=start, total=None if budget else steps, disable=not run.main)
    tick = time.perf_counter()
    done, last = start, None
    for step, batch in enumerate(loader_for(start, steps), start):
        if budget:
            now_s = run.clock()
            if now_s >= until_s:
                break
            progress = (now_s - run.phase_begin) / max(until_s - run.phase_begin, 1e-9)
            factor, beta1 = one_cycle(progress)
            for g in opt.param_groups:
                g["lr"], g["betas"] = lr * factor, (beta1, g["betas"][1])
        else:
            progress = step / steps
        n_items = len(batch["frames"]) * run.world
        batch = to_device(batch, run.device)
        with utils.autocast(run.device, cfg["bf16"]):
            loss, logs = loss_fn(batch, step, progress)
        check_finite(logs["loss"], "loss", phase, step, run, lr_flag)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        norm = torch.nn.utils.clip_grad_norm_(params, 1.0)
        check_finite(float(norm), "gradient", phase, step, run, lr_flag)
        opt.step()
        if sched is not None:
            sched.step()
        now = time.perf_counter()
        logs["samples_per_s"] = n_items / (now - tick)   # global clips per second, data loading included
        tick = now
        done, last = step + 1, {"step": step, **logs}
        if step % cfg["log_every"] == 0 or step == steps - 1:
            history.append(last)
            extra = {"left": f"{(until_s - now_s) / 60:.1f}min"} if budget else {}
            bar.set_postfix(**postfix(logs), **extra)
        bar.update(1)
        if (step + 1) % cfg["ckpt_every"] == 0:
            save_state(run, cfg, model, opt, phase, step + 1, run.history)
    bar.close()
    if budget and last is not None and (not history or history[-1]["step"] != last["step"]):
        history.append(last)   # the last step of a budgeted phase, like that of a counted one
    return done


# ----------------------------------------------------------------------------------------
# The three phases
# ----------------------------------------------------------------------------------------
def restore_weights(run: Run, model: torch.nn.Module) -> None:
    """A resumed run's weights into `model`, or one line saying the settings differ."""
    if run.state is not None:
        try:
            model.load_state_dict(run.state["model"])
        except RuntimeError as exc:
            raise SystemExit(f"error: {run.ckpt_path} does not match these model settings "
                             f"({str(exc).splitlines()[0]}); resume with the settings it was trained with") from None


def build_model(cfg: dict, image_size: int, run: Run) -> SharpWorldModelV2:
    model = SharpWorldModelV2(ModelConfig.from_dict({**cfg, "image_size": image_size}))
    restore_weights(run, model)
    model.to(run.device)
    model.tokenizer.to(memory_format=torch.channels_last)
    return model


def load_tokenizer(model, path: Path, verbose: bool = True):
    """Start from the tokenizer of another run (skipping the tokenizer phase): its
    tokenizer settings must be these."""
    ckpt = utils.load_checkpoint(path, fix="pass another --init_tokenizer or drop it")
    if ckpt.get("phase") not in ("codes", "dynamics", "done") or "model" not in ckpt:
        raise SystemExit(f"error: {path} holds no finished tokenizer (phase {ckpt.get('phase')!r}); finish that "
                         f"run first (--resume) or drop --init_tokenizer")
    theirs = ckpt.get("model_config") or {}
    keys = ("channels", "code_dim", "num_codes", "image_size")
    ours = model.config.to_dict()
    if any(theirs.get(k) != ours[k] for k in keys):
        raise SystemExit(f"error: the tokenizer of {path} has " + ", ".join(f"{k}={theirs.get(k)}" for k in keys)
                         + "; pass the same settings or drop --init_tokenizer")
    prefix = "tokenizer."
    model.tokenizer.load_state_dict({k[len(prefix):]: v for k, v in ckpt["model"].items() if k.startswith(prefix)})
    if verbose:
        print(f"tokenizer from {path}")


def ddp(module, run: Run):
    if run.world == 1:
        return module
    return DDP(module, device_ids=[run.device.index] if run.device.type == "cuda" else None)


def train_tokenizer(cfg, run, model, windows, until_s: float = 0.0):
    """Phase 1: reconstruct single frames drawn evenly over the datasets (for tok_steps
    steps, or until the run's clock reaches until_s > 0)."""
    model.train()
    wrapped = ddp(model.tokenizer, run)
    weights = windows.weights()
    T = windows.length
    per = cfg["tok_batch"] // run.world

    def loader_for(start, steps):
        sampler = StepBatches(weights, cfg["tok_batch"], steps, cfg["seed"], run.rank, run.world, start)
        return DataLoader(windows, batch_sampler=sampler, num_workers=cfg["workers"])

    def loss_fn(batch, step, progress):
        t = step_generator(cfg["seed"], "tokenizer", step).integers(0, T, cfg["tok_batch"])
        t = torch.from_numpy(t[run.rank * per:(run.rank + 1) * per])
        x = batch["frames"][torch.arange(len(t)), t].contiguous(memory_format=torch.channels_last)
        return tokenizer_loss(wrapped, x)

    optimise(cfg, run, model, "tokenizer", model.tokenizer.parameters(), cfg["tok_lr"], cfg["tok_steps"],
             loader_for, loss_fn,
             lambda l: dict(psnr=f"{l['psnr']:.1f}", ppl=f"{l['perplexity']:.0f}", usage=f"{l['usage']:.2f}"),
             until_s)
    save_state(run, cfg, model, None, "codes", 0, run.history)


@torch.no_grad()
def cache_clips(cfg, run, model, windows, per_dataset: int, reuse: bool = True,
                until_s: float = 0.0) -> dict[str, list]:
    """Phase 2: tokens of the first `per_dataset` training clips of each dataset, computed
    once by rank 0 and stored beside the checkpoint: codes_<name>.npy (N, T, h, w) int16;
    for predict=layers also layers_<name>.npz (`layers.cut`). reuse=False (a tokenizer made
    in this invocation): codes found there are of another tokenizer and are rewritten.
    until_s > 0: stop caching when the run's clock reaches it (dataset k by its share,
    (k+1)/K of the time left; at least one batch each): the dynamics then draws from the
    clips cached (the length of out['codes'][k]). A short budget would otherwise spend its
    dynamics time on caching clips it never draws (docs/experiments.md, 2026-12-02)."""
    model.eval()
    out = {"codes": []}
    cut = cfg["predict"] == "layers"
    if cut:
        out.update(L=[], velocity=[], positions=[], score=[])
    start = run.elapsed()
    for k, name in enumerate(windows.names):
        n = min(windows.sizes[k], per_dataset or windows.sizes[k])
        path = run.ckpt_dir / f"codes_{name}.npy"
        cut_path = run.ckpt_dir / f"layers_{name}.npz"
        deadline = start + max(0.0, until_s - start) * (k + 1) / len(windows.names) if until_s else 0.0
        if run.main and not (reuse and _cached(path, n, windows.length, partial=bool(until_s))):
            _write_codes(cfg, run, model, windows, k, n, path, deadline)
        n = len(np.load(path, mmap_mode="r")) if run.main else n
        if run.main and cut and not _cut_cached(cut_path, n, windows.length, cfg):
            _write_cut(cfg, run, windows, k, n, cut_path)
        run.barrier()
        out["codes"].append(np.load(path, mmap_mode="r"))
        if cut:
            with np.load(cut_path) as f:
                for key in ("L", "velocity", "positions", "score"):
                    out[key].append(f[key])
    return out


def _cached(path: Path, n: int, T: int, partial: bool = False) -> bool:
    """Codes of n clips of T frames; partial (a budget's deadline): of 1 to n clips."""
    if not path.exists():
        return False
    try:
        shape = np.load(path, mmap_mode="r").shape
        return (0 < shape[0] <= n if partial else shape[0] == n) and shape[1] == T
    except (OSError, ValueError):
        return False


def _cut_cached(path: Path, n: int, T: int, cfg) -> bool:
    if not path.exists():
        return False
    try:
        with np.load(path) as f:
            return (f["L"].shape[:2] == (n, cfg["objects"]) and f["positions"].shape[2] == T
                    and int(f["context"]) == cfg["context"]
                    and int(f["version"]) == layers.CUT_VERSION)   # KeyError: a cache from before versions
    except (OSError, ValueError, KeyError):
        return False


def _clips(windows, k, lo, hi, device):
    arr = windows.array(k)
    return torch.from_numpy(np.array(arr[lo:hi, :windows.length])).to(device).float().div_(255).unsqueeze(2)


def _write_codes(cfg, run, model, windows, k, n, path, deadline: float = 0.0):
    """Codes of the first n clips of dataset k, or of as many whole batches as are done when
    the run's clock passes `deadline` (> 0)."""
    T = windows.length
    codes = np.empty((n, T, model.grid, model.grid), dtype=np.int16)
    step, done = max(1, 256 // T), 0
    for i in tqdm(range(0, n, step), desc=f"codes {windows.names[k]}"):
        if done and deadline and run.elapsed() >= deadline:
            print(f"codes {windows.names[k]}: the budget's caching time is up: {done} of {n} clips cached")
            break
        x = _clips(windows, k, i, min(n, i + step), run.device)
        with utils.autocast(run.device, cfg["bf16"]):
            c = model.encode_clip(x.contiguous())
        codes[i:i + len(x)] = c.cpu().numpy()
        done = i + len(x)
    with utils.atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            np.save(f, codes[:done])


def _write_cut(cfg, run, windows, k, n, path):
    """The layers of frame context-1, their velocities and where each layer is in every
    later frame (the regression targets); the cut is of frame context-1, so the file
    records `context`, and `layers.CUT_VERSION`, so that a run resumed after the cut's code
    changed does not train on the old cut."""
    K, ctx, T = cfg["objects"], cfg["context"], windows.length
    H, W = windows.frame_shape
    out = {"L": np.empty((n, K, H, W), np.float16), "velocity": np.empty((n, K, 2), np.float32),
           "positions": np.empty((n, K, T, 2), np.int16), "score": np.empty((n, K, T), np.float16),
           "context": np.array(ctx), "version": np.array(layers.CUT_VERSION)}
    for i in tqdm(range(0, n, 64), desc=f"layers {windows.names[k]}"):
        x = _clips(windows, k, i, min(n, i + 64), run.device)
        for key, val in zip(("L", "velocity", "positions", "score"), layers.cut(x, K, ctx)):
            out[key][i:i + len(x)] = val.cpu().numpy()
    with utils.atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            np.savez(f, **out)


def dynamics_data(windows, cached: dict) -> tuple[CachedWindows, torch.Tensor]:
    """The dynamics' dataset and its sampling weights: every dataset drawn equally often,
    from the clips whose codes were cached (the first len(cached['codes'][k]) of dataset k)."""
    return CachedWindows(windows, cached), windows.weights(first=[len(c) for c in cached["codes"]])


def train_dynamics(cfg, run, model, windows, cached, until_s: float = 0.0):
    """Phase 3: unrolled dynamics training on cached tokens, tokenizer frozen (for dyn_steps
    steps, or until the run's clock reaches until_s > 0; dyn_steps=0 skips it either way)."""
    if cfg["dyn_steps"] == 0:
        save_state(run, cfg, model, None, "done", 0, run.history)
        return
    model.tokenizer.requires_grad_(False)
    model.tokenizer.eval()
    model.dynamics.train()
    wrapped = ddp(model, run)
    data, weights = dynamics_data(windows, cached)
    anneal = max(1, int(cfg["teacher_forcing_until"] * cfg["dyn_steps"]))
    T = windows.length

    def loader_for(start, steps):
        sampler = StepBatches(weights, cfg["dyn_batch"], steps, cfg["seed"], run.rank, run.world, start)
        return DataLoader(data, batch_sampler=sampler, num_workers=cfg["workers"])

    def loss_fn(batch, step, progress):
        if until_s:   # the fade over the same fraction of the phase's time
            until = cfg["teacher_forcing_until"]
            teacher = max(0.0, 1.0 - progress / until) if until > 0 else 0.0
        else:
            teacher = max(0.0, 1.0 - step / anneal)
        forced = (step_generator(cfg["seed"], "dynamics", step).random(T - 1) < teacher).tolist()
        loss, logs = wrapped(batch, cfg["context"], forced)
        logs["teacher"] = teacher
        return loss, logs

    def postfix(logs):
        future = logs["rollout_mse"]
        extra = {"track_px": f"{np.mean(logs['track_px']):.2f}"} if "track_px" in logs else {}
        return dict(loss=f"{logs['loss']:.4f}", tf=f"{logs['teacher']:.2f}", mse_first=f"{future[0]:.0f}",
                    mse_last=f"{future[-1]:.0f}", **extra)

    done = optimise(cfg, run, model, "dynamics", model.dynamics.parameters(), cfg["dyn_lr"], cfg["dyn_steps"],
                    loader_for, loss_fn, postfix, until_s)
    save_state(run, cfg, model, None, "done", done, run.history)


def train_world_model(cfg: dict, run: Run, names: list[str]):
    """All three phases, resuming where the checkpoint stopped. Returns (model, train
    windows, wall seconds per phase of this invocation)."""
    utils.seed_everything(cfg["seed"])
    windows = open_windows(cfg, names)
    model = build_model(cfg, windows.frame_shape[-1], run)
    phase = run.state["phase"] if run.state else "tokenizer"
    if run.state is not None and run.main:
        print(f"resuming from {run.ckpt_path}: phase {phase}, step {run.state['step']}")
    times, t0 = {}, time.time()
    # A budget: the tokenizer until tok_share of it, then the codes, the dynamics until its end.
    tok_until = run.budget_s * cfg.get("tok_share", 0.5)
    new_tokenizer = phase == "tokenizer"
    if phase == "tokenizer" and cfg.get("init_tokenizer"):
        load_tokenizer(model, Path(cfg["init_tokenizer"]), run.main)
        save_state(run, cfg, model, None, "codes", 0, run.history)
        phase = "codes"
    if phase == "tokenizer":
        train_tokenizer(cfg, run, model, windows, tok_until)
        run.state, phase = None, "codes"
    times["tokenizer_s"] = time.time() - t0
    if phase in ("codes", "dynamics"):
        # under a budget the caching may take CACHE_SHARE of the time left when it starts
        begin = run.elapsed()
        cache_until = begin + CACHE_SHARE * (run.budget_s - begin) if run.budget_s else 0.0
        cached = cache_clips(cfg, run, model, windows, cfg["dyn_sequences"], reuse=not new_tokenizer,
                             until_s=cache_until)
        times["codes_s"] = time.time() - t0 - times["tokenizer_s"]
        if phase == "codes":
            run.state = None
        train_dynamics(cfg, run, model, windows, cached, run.budget_s)
    times.setdefault("codes_s", 0.0)
    times["dynamics_s"] = time.time() - t0 - times["tokenizer_s"] - times["codes_s"]
    check_in_sync(model, run)
    model.eval()
    return model, windows, times


@torch.no_grad()
def check_in_sync(model, run: Run):
    """Under DDP every rank must end with the same weights and codebook (gradients are
    averaged, EMA statistics summed): compare a checksum of every tensor across ranks and
    stop loudly if they drifted apart."""
    if run.world == 1:
        return
    sums = torch.stack([t.detach().double().sum() for t in model.state_dict().values()]).to(run.device)
    gathered = [torch.empty_like(sums) for _ in range(run.world)]
    dist.all_gather(gathered, sums)
    if any(not torch.equal(g, gathered[0]) for g in gathered):
        raise SystemExit("error: the processes ended with different weights; this is a bug, please report it")
    if run.main:
        print(f"weights identical on all {run.world} processes")


def plot_history(history: dict, path: Path):
    """training_curves.png: tokenizer PSNR and codebook perplexity, the dynamics loss (with
    the teacher-forcing schedule, or the layer position error), and the per-step rollout
    error of the training batch at a few points of training."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

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
        if "track_px" in dyn[-1]:
            ax2 = axes[1].twinx()
            ax2.plot([h["step"] for h in dyn], [np.mean(h["track_px"]) for h in dyn], color="tab:green", alpha=0.7)
            ax2.set_ylabel("layer position error vs tracked (px)", color="tab:green")
        steps = np.arange(1, len(dyn[-1]["rollout_mse"]) + 1)
        shown = dyn[:: max(1, len(dyn) // 5)]
        for h in shown + ([dyn[-1]] if shown[-1] is not dyn[-1] else []):
            axes[2].plot(steps, h["rollout_mse"], label=f"step {h['step']}")
        axes[2].set(title="train rollout MSE per predicted frame", xlabel="predicted step",
                    ylabel="MSE (sum over pixels)")
        axes[2].legend(fontsize=7)
    utils.save_figure(fig, path)
