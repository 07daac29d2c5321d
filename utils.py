"""Shared plumbing for every script: CPU tuning, device choice, seeding,
`--key=value` overrides of a script's CONFIG, and atomic file / checkpoint I/O.

Import this module *before* torch in a script (``import utils`` first): it sets
thread-pool and allocator environment variables that only take effect if they
are in place when torch's OpenMP runtime starts.
"""
from __future__ import annotations

import ctypes
import difflib
import errno
import json
import os
import random
import sys
import tempfile
from contextlib import contextmanager
from pathlib import Path

# --- CPU tuning, applied on import --------------------------------------------------
# A spinning OpenMP pool collapses when another process shares the 2 cores; PASSIVE
# makes idle workers sleep. setdefault: the user's own setting always wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def _tune_malloc() -> None:
    """Raise glibc's mmap and trim thresholds so that the large, short-lived
    activation buffers of a training step are recycled from the heap instead of
    being mmap'ed and returned to the kernel every step (a large share of CPU time
    in the kernel otherwise). Does nothing where glibc is not the allocator."""
    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return
    M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # from <malloc.h>
    libc.mallopt(M_MMAP_THRESHOLD, 32 * 1024 * 1024)  # 32 MiB: glibc's maximum
    libc.mallopt(M_TRIM_THRESHOLD, 1024 * 1024 * 1024)


_tune_malloc()

import numpy as np  # noqa: E402  (after the environment is set)
import torch  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parent


# --- device -------------------------------------------------------------------------
def pick_device(preference: str | None = None, verbose: bool = True) -> torch.device:
    """Choose where to run. `preference` (a script's `device` setting) may be 'auto',
    'cpu', 'cuda', 'cuda:N' or 'mps'; 'auto' (every script's default) takes the
    VPWM_DEVICE environment variable when it is set, else CUDA, then MPS, then the CPU.
    So an explicit --device wins over the variable, and the variable over the default."""
    pref = (preference or "auto").lower()
    if pref == "auto":
        pref = (os.environ.get("VPWM_DEVICE") or "auto").lower()
    if pref == "auto":
        if torch.cuda.is_available():
            pref = "cuda"
        elif getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            pref = "mps"
        else:
            pref = "cpu"
    kind = pref.split(":")[0]
    if kind == "cuda" and not torch.cuda.is_available():
        raise SystemExit(f"error: device '{pref}' requested but CUDA is not available; use --device=cpu")
    if kind == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise SystemExit(f"error: device '{pref}' requested but MPS is not available; use --device=cpu")
    if kind not in ("cpu", "cuda", "mps"):
        raise SystemExit(f"error: unknown device '{pref}'; use auto, cpu, cuda or mps")
    device = torch.device(pref)
    if verbose:
        extra = ""
        if kind == "cuda":
            extra = f" ({torch.cuda.get_device_name(device)})"
        elif kind == "cpu":
            extra = f" ({torch.get_num_threads()} threads, bf16 autocast {'on' if cpu_supports_bf16() else 'off'})"
        print(f"device: {device}{extra}")
    return device


def cpu_supports_bf16() -> bool:
    """True when the CPU has native bf16 dot products (AVX512-BF16 or AMX), where
    bf16 autocast roughly doubles convolution throughput; elsewhere bf16 is emulated
    and slower than float32."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False  # macOS / Windows: stay in float32 on the CPU
    return "avx512_bf16" in flags or "amx_bf16" in flags


def autocast(device: torch.device, enabled: bool = True):
    """bf16 autocast on a bf16-capable CPU and on CUDA; a no-op elsewhere (MPS
    autocast is still partial, so it stays float32)."""
    if enabled and device.type == "cpu" and cpu_supports_bf16():
        return torch.autocast("cpu", dtype=torch.bfloat16)
    if enabled and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return torch.autocast(device.type, enabled=False)


# --- seeding --------------------------------------------------------------------------
def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)  # also seeds CUDA and MPS generators


# --- --key=value overrides --------------------------------------------------------------
def _parse_value(key: str, text: str, default):
    """Convert `text` to the type of `default`; raise SystemExit naming the fix."""
    if isinstance(default, bool):
        low = text.lower()
        if low in ("1", "true", "yes", "on"):
            return True
        if low in ("0", "false", "no", "off"):
            return False
        raise SystemExit(f"error: --{key} expects true or false, got '{text}'")
    if isinstance(default, int):
        try:
            return int(text)
        except ValueError:
            raise SystemExit(f"error: --{key} expects an integer (default {default}), got '{text}'") from None
    if isinstance(default, float):
        try:
            return float(text)
        except ValueError:
            raise SystemExit(f"error: --{key} expects a number (default {default}), got '{text}'") from None
    if default is None or isinstance(default, str):
        return text
    if isinstance(default, (list, tuple)):
        parts = [p for p in text.split(",") if p]
        if default:  # typed by the first element
            return type(default)(_parse_value(key, p, default[0]) for p in parts)
        return type(default)(parts)
    raise SystemExit(f"error: --{key} cannot be set from the command line (type {type(default).__name__})")


def parse_overrides(config: dict, argv: list[str] | None = None) -> dict:
    """Return a copy of `config` with `--key=value` arguments applied.

    Types follow the defaults (bool accepts true/false/1/0, a bare `--flag` means
    true); unknown keys and malformed values stop the program with one line that
    says what to do instead. `-h`/`--help` prints the settings and exits.
    """
    argv = sys.argv[1:] if argv is None else argv
    out = dict(config)
    for arg in argv:
        if arg in ("-h", "--help"):
            width = max(len(k) for k in config)
            print("settings (override with --key=value):")
            for k, v in config.items():
                print(f"  --{k.ljust(width)} = {v!r}")
            raise SystemExit(0)
        if not arg.startswith("--"):
            raise SystemExit(f"error: unexpected argument '{arg}'; settings are given as --key=value")
        key, sep, text = arg[2:].partition("=")
        key = key.replace("-", "_")
        if key not in config:
            close = difflib.get_close_matches(key, list(config), n=1)
            hint = f" (did you mean --{close[0]}?)" if close else ""
            raise SystemExit(f"error: unknown setting --{key}{hint}; run with --help to list them")
        if not sep:
            if isinstance(config[key], bool):
                out[key] = True
                continue
            raise SystemExit(f"error: --{key} needs a value: --{key}=VALUE")
        out[key] = _parse_value(key, text, config[key])
    return out


# --- atomic file I/O ----------------------------------------------------------------------
# Errors of writing a file that the user fixes (a full disk, a folder that is not writable
# or is a file): they become one line naming the file, instead of a traceback.
WRITE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS, errno.EACCES, errno.EPERM,
                errno.ENOTDIR, errno.EISDIR, errno.EEXIST, errno.EIO}
WRITE_FIX = "free some space or pass another output folder (--out_root / --out_dir)"
TEMP_SUFFIX = ".tmp"       # atomic_path's temporary files: .<name>.<random>.tmp<suffix>


def write_error(path: Path, exc: OSError, fix: str = WRITE_FIX) -> SystemExit:
    """The one-line error for a failed write of `path`; what was there before is intact."""
    kept = f"the previous {path.name} is unchanged" if path.is_file() else "nothing was written"
    return SystemExit(f"error: cannot write {path} ({exc.strerror or type(exc).__name__}); {kept} - {fix}")


@contextmanager
def atomic_path(path: str | os.PathLike, fix: str = WRITE_FIX):
    """Yield a temporary path beside `path`; rename it onto `path` only if the
    block finishes, so a killed process never leaves a half-written file. A write that
    fails for a reason the user fixes (full disk, unwritable folder) stops the program
    with one line (SystemExit) saying so and `fix`; the old `path` is left as it was."""
    path = Path(path)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=TEMP_SUFFIX + path.suffix, dir=path.parent)
        os.close(fd)
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; outputs should be readable like any other file
        yield Path(tmp)
        os.replace(tmp, path)
    except BaseException as exc:
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)
        if isinstance(exc, OSError) and exc.errno in WRITE_ERRNOS:
            raise write_error(path, exc, fix) from None
        raise


def check_writable(folder: str | os.PathLike, flag: str) -> None:
    """Stop with one line naming --`flag` when `folder` cannot be created or written,
    before any work is done (creates nothing)."""
    folder = Path(folder)
    p = folder
    while not p.exists() and p != p.parent:
        p = p.parent
    why = ("is not a folder" if not p.is_dir() else
           "is not writable" if not os.access(p, os.W_OK | os.X_OK) else "")
    if why:
        shown = "it" if p == folder else p
        raise SystemExit(f"error: cannot write {folder} ({shown} {why}); pass a writable --{flag}")


def remove_stale_temps(folder: str | os.PathLike) -> list[Path]:
    """Delete the temporary files that atomic_path leaves when its process is killed
    (SIGKILL, power loss) before it could clean up; returns what was removed. Call it only
    where no other process is writing into `folder` (a run resuming its own folder)."""
    removed = []
    for p in Path(folder).glob(f".*{TEMP_SUFFIX}*"):
        if p.is_file():
            p.unlink(missing_ok=True)
            removed.append(p)
    return removed


def save_json(obj, path: str | os.PathLike) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, default=_json_default) + "\n")


def _json_default(o):
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def save_figure(fig, path: str | os.PathLike, dpi: int = 110) -> None:
    """Save a matplotlib figure atomically and close it."""
    import matplotlib.pyplot as plt

    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=dpi, bbox_inches="tight", format=Path(path).suffix.lstrip(".") or "png")
    plt.close(fig)


def save_checkpoint(obj: dict, path: str | os.PathLike) -> None:
    """torch.save through a temporary file and a rename: a run killed while saving
    keeps its previous checkpoint intact, and a full disk stops it with one line."""
    path = Path(path)
    fix = ("free some space and rerun with --resume to continue from it" if path.is_file()
           else "free some space and rerun")
    with atomic_path(path, fix) as tmp:
        torch.save(obj, tmp)


CHECKPOINT_FIX = "pass another --checkpoint or retrain"


def load_checkpoint(path: str | os.PathLike, map_location="cpu", fix: str = CHECKPOINT_FIX) -> dict:
    """Load a checkpoint with `weights_only=True` (no pickled code is executed).
    A missing or unreadable file gives a one-line error that names the fix (`fix`: what
    the calling script takes instead); it never advises deleting the file."""
    path = Path(path)
    if not path.is_file():
        advice = ("pass an existing --checkpoint (a training script writes checkpoints/<run>/latest.pt, e.g. "
                  "python training/train_sharp_v2.py)" if fix == CHECKPOINT_FIX else fix)
        raise SystemExit(f"error: checkpoint {path} not found; {advice}")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # corrupt, truncated, a pickle carrying code, or not a torch file at all
        if "Unsupported global" in str(exc):   # a pickle that names code to call: weights_only refused it
            raise SystemExit(f"error: {path} holds pickled objects other than tensors and plain values, which "
                             f"are refused (weights_only=True); it is not a checkpoint of this project - "
                             f"{fix}") from None
        raise SystemExit(f"error: {path} is truncated or not a checkpoint ({type(exc).__name__}); {fix}") from None
    if not isinstance(ckpt, dict) or "config" not in ckpt:
        raise SystemExit(f"error: {path} is not a checkpoint of this project (no 'config' inside); {fix}")
    return ckpt
