"""Bad inputs, one table: each is stopped by a one-line error that names the fix (a --flag
or a command), and every file that existed before is left exactly as it was. The scripts'
main() run in this process (sys.argv patched): no subprocess, so the table is fast.

A row: (script, the arguments after the common ones, fragments the message must hold, and
optionally what to set up first and what to check after). `w` is the module's workspace
(a small real dataset, a tiny checkpoint, frame files); `t` is the row's own tmp folder.
"""
import errno
import hashlib
import re
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Callable

import numpy as np
import pytest
import torch

import utils
from data_utils import generate
from tests.scripts import run
from training.baseline import SimVP, SimVPConfig
from training.world_model import SharpWorldModelV2

MODEL = dict(channels=16, code_dim=8, num_codes=16, hidden=8, layers=1)
TRAIN_TINY = ["--minutes=0", "--channels=16", "--code_dim=8", "--num_codes=16", "--hidden=8", "--layers=1", "--tok_steps=6",
              "--tok_batch=8", "--dyn_steps=4", "--dyn_batch=2", "--dyn_sequences=6", "--context=4",
              "--eval_sequences=4", "--ckpt_every=2", "--log_every=1", "--device=cpu", "--bf16=false"]


# ----------------------------------------------------------------------------------------
# The workspace shared by the rows (never changed by any of them: checked by the snapshot)
# ----------------------------------------------------------------------------------------
class _Payload:
    """Unpickling this would create a file: a checkpoint carrying code."""
    def __init__(self, target):
        self.target = str(target)

    def __reduce__(self):
        return (open, (self.target, "w"))


@pytest.fixture(scope="module")
def w(tmp_path_factory):
    root = tmp_path_factory.mktemp("ws")
    generate.generate_datasets(["bouncing_balls"], workers=1, verbose=False, num=20, frames=8, size=64,
                               out=root / "data", preview=False, progress=False)
    torch.manual_seed(0)
    model = SharpWorldModelV2(**MODEL)
    ckpt = {"config": {"run": "x", "dataset": "bouncing_balls", **MODEL}, "model_config": model.config.to_dict(),
            "model": model.state_dict(), "optimizer": {}, "phase": "done", "step": 0,
            "history": {"tokenizer": [], "dynamics": []}}
    utils.save_checkpoint(ckpt, root / "good.pt")
    blob = (root / "good.pt").read_bytes()
    (root / "truncated.pt").write_bytes(blob[: len(blob) // 2])
    utils.save_checkpoint({"config": {}, "weights": torch.zeros(3)}, root / "other_model.pt")
    utils.save_checkpoint({"config": {"run": "rl"}, "model": {}, "agent": {}, "iteration": 1}, root / "rl_like.pt")
    utils.save_checkpoint({**ckpt, "model_config": {**ckpt["model_config"], "old_setting": 3}}, root / "older.pt")
    utils.save_checkpoint({**ckpt, "model_config": {**ckpt["model_config"], "hidden": 16}}, root / "mismatch.pt")
    torch.save({"config": {}, "x": _Payload(root / "payload_ran")}, root / "payload.pt")  # plain torch.save
    utils.save_checkpoint({**ckpt, "config": {"run": "x"}}, root / "no_dataset.pt")
    utils.save_checkpoint({**ckpt, "config": {**ckpt["config"], "data_root": str(root / "moved")}}, root / "moved_data.pt")
    simvp = SimVP(SimVPConfig(hid_s=4, hid_t=8, n_s=2, n_t=1, context=4, horizon=4))
    utils.save_checkpoint({"config": {"run": "b", "dataset": "bouncing_balls"}, "model_config": simvp.config.to_dict(),
                           "model": simvp.state_dict(), "phase": "done"}, root / "baseline.pt")
    rng = np.random.default_rng(0)
    np.save(root / "frames.npy", rng.integers(0, 256, (2, 8, 64, 64), dtype=np.uint8))
    np.save(root / "float.npy", np.zeros((2, 8, 64, 64), np.float32))
    np.save(root / "3d.npy", np.zeros((2, 64, 64), np.uint8))
    np.save(root / "short.npy", np.zeros((2, 6, 64, 64), np.uint8))
    np.save(root / "small.npy", np.zeros((2, 8, 32, 32), np.uint8))
    (root / "text.npy").write_text("hello")
    (root / "a_file").write_text("not a folder")
    return SimpleNamespace(root=root, data=root / "data", ds=root / "data" / "bouncing_balls", ckpt=root / "good.pt")


def broken_dataset(w, t, train) -> Path:
    """A copy of the workspace's dataset whose train.npy is replaced by `train` (an array or bytes)."""
    shutil.copytree(w.ds, t / "data" / "bouncing_balls")
    path = t / "data" / "bouncing_balls" / "train.npy"
    if isinstance(train, bytes):
        path.write_bytes(train)
    else:
        np.save(path, train)
    return t / "data"


def run_checkpoint(name):
    """setup: the workspace's checkpoint `name` as the latest.pt of run x"""
    def setup(w, t, monkeypatch):
        dst = t / "out" / "checkpoints" / "x" / "latest.pt"
        dst.parent.mkdir(parents=True)
        shutil.copy(w.root / name, dst)
    return setup


# ----------------------------------------------------------------------------------------
# In-training failures: a NaN loss, a full disk while writing a checkpoint
# ----------------------------------------------------------------------------------------
def nan_from_step(k):
    def setup(w, t, monkeypatch):
        from training import loop
        real, calls = loop.tokenizer_loss, [0]

        def loss(tok, x):
            value, logs = real(tok, x)
            calls[0] += 1
            if calls[0] > k:
                value, logs = value * float("nan"), {**logs, "loss": float("nan")}
            return value, logs
        monkeypatch.setattr(loop, "tokenizer_loss", loss)
    return setup


def full_disk_on_second_checkpoint(w, t, monkeypatch):
    real, calls = torch.save, [0]

    def save(obj, f, *a, **k):
        calls[0] += 1
        if calls[0] == 2:               # half a checkpoint written, then the disk is full
            Path(f).write_bytes(b"PK\x03\x04 partial")
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(obj, f, *a, **k)
    monkeypatch.setattr(torch, "save", save)


def checkpoint_of_step(step):
    def check(w, t):
        ckpt_dir = t / "out" / "checkpoints" / "x"
        ck = utils.load_checkpoint(ckpt_dir / "latest.pt")
        assert ck["phase"] == "tokenizer" and ck["step"] == step
        assert all(torch.isfinite(v.float()).all() for v in ck["model"].values())
        assert not [p for p in ckpt_dir.iterdir() if p.name.startswith(".")]   # no temporary file left
    return check


def nothing_saved(w, t):
    assert not (t / "out" / "checkpoints" / "x" / "latest.pt").exists()


def payload_refused(w, t):
    assert not (w.root / "payload_ran").exists()


# ----------------------------------------------------------------------------------------
# The table
# ----------------------------------------------------------------------------------------
@dataclass
class Row:
    script: str                       # a module of training/ or evaluation/ with a main()
    args: Callable                    # (w, t) -> arguments after the script's common ones
    expect: tuple                     # fragments of the message
    setup: Callable | None = None     # (w, t, monkeypatch): files to put in place, patches
    after: Callable | None = None     # (w, t): checks after the error


def train(w, t, data=None, out=None):
    return ["--run=x", "--dataset=bouncing_balls", f"--data_root={data or w.data}", f"--out_root={out or t / 'out'}",
            *TRAIN_TINY]


def ev(w, t, ckpt=None, data=None):
    return [f"--checkpoint={ckpt or w.ckpt}", f"--data={data or w.root / 'frames.npy'}", f"--out_dir={t / 'eval'}",
            "--context=4", "--horizon=4", "--num_sequences=2", "--device=cpu"]


ROWS = {
    # --- data ----------------------------------------------------------------------------
    "missing dataset": Row("train_sharp_v2", lambda w, t: [*train(w, t, data=t / "nowhere")],
                           ("not found", "python data_utils/generate_physics_data.py --dataset bouncing_balls --out")),
    "unknown dataset name": Row("train_sharp_v2", lambda w, t: [*train(w, t), "--dataset=bouncing_bals"],
                                ("unknown dataset 'bouncing_bals' (did you mean bouncing_balls?)", "--dataset=")),
    "unknown dataset in a list": Row("train_comprehensive", lambda w, t: [
        f"--data_root={w.data}", f"--out_root={t}", "--datasets=pendulum,nosuch"],
        ("unknown dataset nosuch; use all or a comma-separated list", "--datasets")),
    "wrong shape": Row("train_sharp_v2", lambda w, t: train(
        w, t, data=broken_dataset(w, t, np.zeros((2, 64, 64), np.uint8))),
        ("uint8 (2, 64, 64), expected uint8 (N, T, H, W)",
         "regenerate the dataset", "--dataset bouncing_balls --num 20 --frames 8 --size 64 --seed 0 --out")),
    "wrong dtype": Row("train_sharp_v2", lambda w, t: train(
        w, t, data=broken_dataset(w, t, np.zeros((2, 8, 64, 64), np.float32))),
        ("float32 (2, 8, 64, 64), expected uint8", "regenerate the dataset")),
    "corrupt .npy": Row("train_sharp_v2", lambda w, t: train(
        w, t, data=broken_dataset(w, t, (w.ds / "train.npy").read_bytes()[:5000])),
        ("corrupt or truncated", "regenerate the dataset")),
    "too few frames for --context": Row("train_sharp_v2", lambda w, t: [*train(w, t), "--context=8"],
                                        ("clips have 8 frames; --context=8 must be smaller",)),
    "--data: a states file": Row("eval_sharp", lambda w, t: ev(w, t, data=w.ds / "train_states.npz"),
                                 ("is an .npz archive (", "not a frames .npy; its frames are", "train.npy",
                                  "pass --data=")),
    "--data: wrong dtype": Row("eval_sharp", lambda w, t: ev(w, t, data=w.root / "float.npy"),
                               ("float32 (2, 8, 64, 64), expected uint8", "--data=")),
    "--data: wrong shape": Row("eval_sharp", lambda w, t: ev(w, t, data=w.root / "3d.npy"),
                               ("(2, 64, 64), expected uint8 (N, T, H, W)", "--data=")),
    "--data: corrupt .npy": Row("eval_sharp", lambda w, t: ev(w, t, data=w.root / "text.npy"),
                                ("corrupt or truncated", "--data=")),
    "--data: missing": Row("eval_sharp", lambda w, t: ev(w, t, data=t / "missing.npy"),
                           ("missing.npy not found", "--data=")),
    "--data: wrong frame size": Row("eval_sharp", lambda w, t: ev(w, t, data=w.root / "small.npy"),
                                    ("32x32 frames but the model takes 64x64", "--size 64")),
    "--data: too few frames": Row("eval_sharp", lambda w, t: ev(w, t, data=w.root / "short.npy"),
                                  ("sequences of 6 frames, fewer than context + horizon = 8",
                                   "--context/--horizon", "--frames 8")),
    # --- checkpoints ----------------------------------------------------------------------
    "missing checkpoint": Row("eval_sharp", lambda w, t: ev(w, t, ckpt=t / "none.pt"),
                              ("not found", "python training/train_sharp_v2.py", "--checkpoint")),
    "truncated checkpoint": Row("eval_sharp", lambda w, t: ev(w, t, ckpt=w.root / "truncated.pt"),
                                ("truncated or not a checkpoint", "pass another --checkpoint or retrain")),
    "truncated checkpoint (--resume)": Row("train_sharp_v2", lambda w, t: [*train(w, t), "--resume"],
                                           ("truncated or not a checkpoint", "start a new --run=NAME"),
                                           setup=run_checkpoint("truncated.pt")),
    "truncated checkpoint (agent --eval_only)": Row("world_model_rl", lambda w, t: [
        "--eval_only", f"--checkpoint={w.root / 'truncated.pt'}", "--device=cpu"],
        ("truncated or not a checkpoint", "--checkpoint")),
    "checkpoint of another model": Row("eval_sharp", lambda w, t: ev(w, t, ckpt=w.root / "other_model.pt"),
                                       ("not a world-model checkpoint", "--checkpoint=")),
    "checkpoint of another model (--resume)": Row("train_sharp_v2", lambda w, t: [*train(w, t), "--resume"],
                                                  ("not a world-model training checkpoint", "--run"),
                                                  setup=run_checkpoint("rl_like.pt")),
    "checkpoint of another model (--init_tokenizer)": Row("train_sharp_v2", lambda w, t: [
        *train(w, t), f"--init_tokenizer={w.root / 'rl_like.pt'}"],
        ("holds no finished tokenizer", "--init_tokenizer")),
    "run's data moved away": Row("eval_sharp", lambda w, t: [
        f"--checkpoint={w.root / 'moved_data.pt'}", f"--out_dir={t / 'eval'}", "--context=4", "--horizon=4",
        "--num_sequences=2", "--device=cpu"], ("not found", "the run's data_root", "--data_root=")),
    "baseline checkpoint (physics)": Row("eval_physics", lambda w, t: [
        f"--checkpoint={w.root / 'baseline.pt'}", f"--data_root={w.data}", f"--out_dir={t}", "--device=cpu"],
        ("not a world model", "--checkpoint=", "eval_sharp.py for the baseline")),
    "baseline checkpoint (diagram)": Row("draw_architecture", lambda w, t: [
        f"--checkpoint={w.root / 'baseline.pt'}", f"--out_dir={t}"],
        ("not a world-model checkpoint", "--checkpoint=checkpoints/<run>/latest.pt")),
    "checkpoint that names no dataset (physics)": Row("eval_physics", lambda w, t: [
        f"--checkpoint={w.root / 'no_dataset.pt'}", f"--data_root={w.data}", f"--out_dir={t}", "--device=cpu"],
        ("names no dataset", "--dataset=NAME")),
    "checkpoint of an older version": Row("eval_sharp", lambda w, t: ev(w, t, ckpt=w.root / "older.pt"),
                                          ("settings this version does not know: old_setting", "another version",
                                           "--checkpoint")),
    "checkpoint whose weights do not fit its settings": Row(
        "eval_sharp", lambda w, t: ev(w, t, ckpt=w.root / "mismatch.pt"), ("does not match SharpWorldModelV2",
                                                                          "--checkpoint")),
    "checkpoint with other model settings (--resume)": Row(
        "train_sharp_v2", lambda w, t: [*train(w, t), "--resume", "--hidden=12"],
        ("was trained with --hidden=8, not --hidden=12", "--run=NAME"), setup=run_checkpoint("good.pt")),
    "existing run without --resume": Row("train_sharp_v2", lambda w, t: train(w, t),
                                         ("exists; pass --resume to continue it or --run=NAME",),
                                         setup=run_checkpoint("good.pt")),
    "--resume without a checkpoint": Row("train_sharp_v2", lambda w, t: [*train(w, t), "--resume"],
                                         ("does not exist; drop --resume",)),
    # a pickle payload, through each script's loader (weights_only=True)
    "pickle payload (eval)": Row("eval_sharp", lambda w, t: ev(w, t, ckpt=w.root / "payload.pt"),
                                 ("refused (weights_only=True)", "--checkpoint"), after=payload_refused),
    "pickle payload (--resume)": Row("train_sharp_v2", lambda w, t: [*train(w, t), "--resume"],
                                     ("refused (weights_only=True)", "--run=NAME"),
                                     setup=run_checkpoint("payload.pt"), after=payload_refused),
    "pickle payload (--init_tokenizer)": Row("train_sharp_v2", lambda w, t: [
        *train(w, t), f"--init_tokenizer={w.root / 'payload.pt'}"],
        ("refused (weights_only=True)", "--init_tokenizer"), after=payload_refused),
    "pickle payload (physics)": Row("eval_physics", lambda w, t: [
        f"--checkpoint={w.root / 'payload.pt'}", "--dataset=bouncing_balls", f"--out_dir={t}", "--device=cpu"],
        ("refused (weights_only=True)", "--checkpoint"), after=payload_refused),
    "pickle payload (diagram)": Row("draw_architecture", lambda w, t: [
        f"--checkpoint={w.root / 'payload.pt'}", f"--out_dir={t}"],
        ("refused (weights_only=True)", "--checkpoint"), after=payload_refused),
    "pickle payload (agent --eval_only)": Row("world_model_rl", lambda w, t: [
        "--eval_only", f"--checkpoint={w.root / 'payload.pt'}", "--device=cpu"],
        ("refused (weights_only=True)", "--checkpoint"), after=payload_refused),
    # --- settings -------------------------------------------------------------------------
    "one context frame for the rigid layers": Row("train_sharp_v2", lambda w, t: [*train(w, t), "--context=1"],
                                                  ("last two context frames", "--context=2")),
    "unknown hyperparameter": Row("train_sharp_v2", lambda w, t: [*train(w, t), "--hiden=3"],
                                  ("unknown setting --hiden (did you mean --hidden?)", "--help")),
    "unknown hyperparameter (agent)": Row("world_model_rl", lambda w, t: [f"--out_root={t}", "--horizn=3"],
                                          ("did you mean --horizon",)),
    "ill-typed hyperparameter": Row("train_comprehensive", lambda w, t: [f"--out_root={t}", "--tok_steps=many"],
                                    ("--tok_steps expects an integer (default 1200), got 'many'",)),
    "ill-typed hyperparameter (eval)": Row("eval_sharp", lambda w, t: [*ev(w, t), "--context=ten"],
                                           ("--context expects an integer",)),
    # --- outputs --------------------------------------------------------------------------
    "unwritable output folder": Row("train_sharp_v2", lambda w, t: train(w, t, out=w.root / "a_file" / "out"),
                                    ("cannot write", "pass a writable --out_root")),
    "unwritable --out_dir": Row("eval_sharp", lambda w, t: [*ev(w, t), f"--out_dir={w.root / 'a_file' / 'eval'}"],
                                ("is not a folder", "pass a writable --out_dir")),
    # --- in training ----------------------------------------------------------------------
    "NaN loss": Row("train_sharp_v2", lambda w, t: train(w, t), ("non-finite at step 3", "--tok_lr",
                                                                 "rerun with --resume"),
                    setup=nan_from_step(3), after=checkpoint_of_step(2)),
    "NaN loss before any checkpoint": Row("train_sharp_v2", lambda w, t: train(w, t),
                                          ("non-finite at step 0", "no checkpoint was saved yet", "--tok_lr"),
                                          setup=nan_from_step(0), after=nothing_saved),
    "full disk during a checkpoint write": Row("train_sharp_v2", lambda w, t: train(w, t),
                                               ("No space left on device", "the previous latest.pt is unchanged",
                                                "rerun with --resume"),
                                               setup=full_disk_on_second_checkpoint, after=checkpoint_of_step(2)),
}


def snapshot(*folders) -> dict:
    return {p: hashlib.sha1(p.read_bytes()).hexdigest()
            for f in folders for p in sorted(Path(f).rglob("*")) if p.is_file()}


def script_main(name):
    package = "evaluation" if name in ("eval_sharp", "eval_physics", "draw_architecture") else "training"
    return __import__(f"{package}.{name}", fromlist=["main"]).main


@pytest.mark.parametrize("case", ROWS)
def test_bad_input_is_one_line_naming_the_fix_and_loses_nothing(case, w, tmp_path, monkeypatch):
    row = ROWS[case]
    monkeypatch.setenv("VPWM_DEVICE", "cpu")
    args = row.args(w, tmp_path)
    if row.setup:
        row.setup(w, tmp_path, monkeypatch)
    before = snapshot(w.root, tmp_path)
    monkeypatch.setattr(sys, "argv", [f"{row.script}.py", *args])
    with pytest.raises(SystemExit) as exc:
        script_main(row.script)()
    monkeypatch.undo()   # (torch.save and the loss are the real ones again for the checks)
    msg = exc.value.code
    assert isinstance(msg, str) and msg.startswith("error: "), msg       # a message: exit status 1
    assert "\n" not in msg, msg                                          # one line on stderr
    assert re.search(r"--[a-z]|python [a-z_/]+\.py", msg), msg           # it names the fix
    assert not re.search(r"\b(delete|remove|rm)\b", msg, re.I), msg       # never: delete a file that may be good
    for fragment in row.expect:
        assert fragment in msg, (fragment, msg)
    after = snapshot(w.root, tmp_path)
    changed = [str(p) for p, h in before.items() if after.get(p) != h]
    assert not changed, f"changed or lost: {changed}"
    assert not (tmp_path / "eval").exists()                              # the evaluation wrote nothing
    if row.after:
        row.after(w, tmp_path)


def test_the_table_covers_the_issue_list():
    """The bad inputs issue 12 lists, each with at least one row."""
    listed = ["missing dataset", "unknown dataset name", "wrong shape", "wrong dtype", "corrupt .npy",
              "truncated checkpoint", "checkpoint of another model", "checkpoint of an older version",
              "unknown hyperparameter", "ill-typed hyperparameter", "NaN loss", "unwritable output folder",
              "full disk during a checkpoint write", "--data: too few frames", "--data: a states file"]
    assert set(listed) <= set(ROWS) and len(ROWS) >= 12


def test_as_a_user_sees_it_one_line_on_stderr(tmp_path):
    """The rows above run in process; as a user runs a script: exit status 1, the message
    alone on stderr, nothing written (train_sharp_v2.py imports no evaluation modules before
    training, so this subprocess is quick)."""
    proc = run(["training/train_sharp_v2.py", "--dataset=pendulm", f"--out_root={tmp_path}"], check=False)
    assert proc.returncode == 1 and proc.stdout == "", proc.stdout
    assert proc.stderr.startswith("error: unknown dataset 'pendulm' (did you mean pendulum?)")
    assert proc.stderr.count("\n") == 1 and proc.stderr.endswith("--dataset=NAME\n"), proc.stderr
    assert not any(tmp_path.iterdir())
