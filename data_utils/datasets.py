"""Loading the generated datasets (docs/data.md) and PyTorch windows over them.

    from data_utils.datasets import SequenceWindows, load_split
    train = SequenceWindows(["moving_mnist", "pendulum"], "train", context=10, target=10)
    loader = DataLoader(train, batch_size=32, sampler=train.sampler())   # datasets drawn evenly

Every failure to load raises DatasetError (a ValueError) with one line naming the fix; scripts
turn it into `SystemExit(f"error: {e}")`. Make the data first:
`python data_utils/generate_physics_data.py --dataset all && python data_utils/generate_diverse_datasets.py`.
"""
from __future__ import annotations

import difflib
import json
import os
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset, WeightedRandomSampler

from data_utils.generate import DATASET_NAMES, DATASETS, DEFAULT_OUT, SPLITS


class DatasetError(ValueError):
    """A dataset that is missing, unknown or malformed; the message says how to fix it."""


def dataset_command(name: str) -> str:
    """The command that makes dataset `name`."""
    _check_name(name)
    return f"python {DATASETS[name][1]} --dataset {name}"


def _check_name(name: str) -> None:
    if name not in DATASETS:
        close = difflib.get_close_matches(str(name), DATASET_NAMES, n=1)
        hint = f" (did you mean {close[0]}?)" if close else ""
        raise DatasetError(f"unknown dataset '{name}'{hint}; valid: {', '.join(DATASET_NAMES)}")


def parse_names(spec: str) -> list[str]:
    """'all' or a comma-separated list of dataset names -> the names, checked."""
    names = list(DATASET_NAMES) if spec == "all" else [s.strip() for s in spec.split(",") if s.strip()]
    unknown = [n for n in names if n not in DATASET_NAMES]
    if unknown or not names:
        raise DatasetError(f"unknown dataset {', '.join(unknown) or '(none given)'}; use all or a "
                           f"comma-separated list of {', '.join(DATASET_NAMES)}")
    return names


def _folder(name: str, root) -> Path:
    _check_name(name)
    root = Path(root) if root is not None else DEFAULT_OUT
    folder = root / name
    if not (folder / "meta.json").is_file():
        raise DatasetError(f"dataset '{name}' not found at {_show(folder)}; make it with: {_make_command(name, root)}")
    return folder


def _make_command(name: str, root: Path) -> str:
    """The command that makes dataset `name` under `root` (--out when not the default)."""
    return dataset_command(name) + (f" --out {_show(root)}" if root.resolve() != DEFAULT_OUT.resolve() else "")


def _regenerate(name: str, folder: Path) -> str:
    """The fix for a bad file inside a generated dataset. Generation writes a new folder and
    renames it into place, so nothing needs deleting by hand (and nothing valid is lost)."""
    command = _make_command(name, folder.parent)
    try:   # the exact command that made it, when its meta.json says
        made = json.loads((folder / "meta.json").read_text()).get("reproduce")
        if isinstance(made, str) and made.startswith(dataset_command(name)):
            command = made + command[len(dataset_command(name)):]
    except (OSError, ValueError, AttributeError):
        pass
    return f"regenerate the dataset (the new one replaces {_show(folder)}): {command}"


def _show(path: Path) -> str:
    """A path relative to the working directory when it lies below it, else absolute."""
    try:
        rel = os.path.relpath(path)
    except ValueError:  # another drive (Windows)
        return str(path)
    return str(Path(path).resolve()) if rel.startswith("..") else rel


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise DatasetError(f"unknown split '{split}'; use 'train' or 'test'")


def load_sequences(path, size: int | None = None, mmap: bool = True, fix: str | None = None) -> np.ndarray:
    """A uint8 (N, T, H, W) array from a .npy file, validated; `size` demands H == W == size.

    `fix` is the advice appended to errors about a bad file; the default asks for another
    file, never to delete this one (it may be a good file of another kind, e.g. states).
    """
    path = Path(path)
    fix = fix or "pass a uint8 (N, T, H, W) frames .npy instead, such as data/<dataset>/test.npy"
    if not path.is_file():
        raise DatasetError(f"{_show(path)} not found; {fix}")
    try:
        arr = np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
    except Exception as exc:  # truncated, corrupt, or not .npy at all
        why = str(exc).splitlines()[0][:80] if str(exc) else "unreadable"
        if "pickle" in why:   # numpy's guess for a file without the .npy header
            why = "no .npy header"
        raise DatasetError(f"{_show(path)} is corrupt or truncated ({type(exc).__name__}: {why}); {fix}") from None
    if isinstance(arr, np.lib.npyio.NpzFile):   # an .npz archive: states, or several arrays
        keys = ", ".join(arr.files[:6])
        arr.close()
        frames = path.with_name(path.name.replace("_states.npz", ".npy"))
        hint = f"; its frames are {_show(frames)}" if frames != path and frames.is_file() else ""
        raise DatasetError(f"{_show(path)} is an .npz archive ({keys}), not a frames .npy{hint}; {fix}")
    if not isinstance(arr, np.ndarray) or arr.dtype != np.uint8 or arr.ndim != 4:
        raise DatasetError(f"{_show(path)} holds {getattr(arr, 'dtype', type(arr).__name__)} "
                           f"{getattr(arr, 'shape', '')}, expected uint8 (N, T, H, W) frames; {fix}")
    if size is not None and arr.shape[2:] != (size, size):
        raise DatasetError(f"{_show(path)} has {arr.shape[2]}x{arr.shape[3]} frames, this needs {size}x{size}; "
                           f"regenerate with --size {size}")
    return arr


def load_split(name: str, split: str = "train", root=None, mmap: bool = True) -> np.ndarray:
    """Frames of one split: uint8 (N, T, H, W), memory-mapped read-only by default."""
    _check_split(split)
    folder = _folder(name, root)
    path = folder / f"{split}.npy"
    fix = _regenerate(name, folder)
    if not path.is_file():
        raise DatasetError(f"{_show(path)} is missing; {fix}")
    return load_sequences(path, mmap=mmap, fix=fix)


def load_states(name: str, split: str = "train", root=None) -> dict[str, np.ndarray]:
    """Ground-truth states of one split: {name: array with leading dims (N, T, ...) or (N, ...)}."""
    _check_split(split)
    folder = _folder(name, root)
    path = folder / f"{split}_states.npz"
    try:
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    except Exception as exc:
        raise DatasetError(f"{_show(path)} is missing or unreadable ({type(exc).__name__}); "
                           f"{_regenerate(name, folder)}") from None


def load_meta(name: str, root=None) -> dict:
    folder = _folder(name, root)
    try:
        return json.loads((folder / "meta.json").read_text())
    except (OSError, ValueError) as exc:
        raise DatasetError(f"{_show(folder / 'meta.json')} is unreadable ({type(exc).__name__}); "
                           f"{_regenerate(name, folder)}") from None


class SequenceWindows(Dataset):
    """Windows of context + target frames from one or several datasets, concatenated.

    names:   a dataset name or a list of them (with `arrays`: any labels).
    arrays:  optional in-memory uint8 (N, T, H, W) arrays (one per name) instead of data/ files,
             e.g. from load_sequences() on an evaluation .npy.
    stride:  None -> one window per sequence, starting at frame 0; s -> windows start at
             0, s, 2s, ... while they fit in T.
    Items: {"frames": float32 (context+target, 1, H, W) in [0, 1], "dataset": index into names,
    "index": sequence index in its dataset, "start": first frame}. `split_frames` cuts a batch
    into context and target. Files are opened lazily in each process (DataLoader workers
    included); only their paths are pickled.
    """

    def __init__(self, names, split: str = "train", context: int = 10, target: int = 10, root=None,
                 stride: int | None = None, arrays=None):
        self.names = [names] if isinstance(names, str) else list(names)
        if not self.names:
            raise DatasetError("SequenceWindows needs at least one dataset name")
        if context < 1 or target < 0:
            raise DatasetError(f"context must be >= 1 and target >= 0, got context={context}, target={target}")
        if stride is not None and stride < 1:
            raise DatasetError(f"stride must be >= 1 or None, got {stride}")
        self.split, self.context, self.target, self.stride = split, context, target, stride
        self.length = context + target
        if arrays is not None:
            arrays = [arrays] if isinstance(arrays, np.ndarray) else list(arrays)
            if len(arrays) != len(self.names):
                raise DatasetError(f"got {len(arrays)} arrays for {len(self.names)} names; pass one array per name")
            for nm, a in zip(self.names, arrays):
                if not isinstance(a, np.ndarray) or a.dtype != np.uint8 or a.ndim != 4:
                    raise DatasetError(f"array for '{nm}' is {getattr(a, 'dtype', type(a).__name__)} "
                                       f"{getattr(a, 'shape', '')}, expected uint8 (N, T, H, W)")
            self._paths = [None] * len(arrays)
            shapes = [a.shape for a in arrays]
        else:
            _check_split(split)
            loaded = [load_split(nm, split, root) for nm in self.names]  # validates now, in this process
            self._paths = [str(Path(a.filename)) for a in loaded]
            shapes = [a.shape for a in loaded]
            arrays = [None] * len(loaded)
        self._arrays = arrays
        for nm, shp in zip(self.names, shapes):
            if shp[1] < self.length:
                raise DatasetError(f"dataset '{nm}' has T={shp[1]} frames per sequence, fewer than context+target="
                                   f"{self.length}; lower context/target or regenerate with --frames {self.length}")
        if len({shp[2:] for shp in shapes}) > 1:
            raise DatasetError("datasets have different frame sizes " + ", ".join(
                f"{nm} {s[2]}x{s[3]}" for nm, s in zip(self.names, shapes)) + "; regenerate them with one --size")
        self.frame_shape = shapes[0][2:]
        # Windows per sequence, then a cumulative index over (dataset, sequence, window).
        self._per_seq = [1 if stride is None else (shp[1] - self.length) // stride + 1 for shp in shapes]
        self.sizes = [shp[0] * w for shp, w in zip(shapes, self._per_seq)]
        self._offsets = np.cumsum([0] + self.sizes)

    def array(self, k: int) -> np.ndarray:
        """The whole uint8 (N, T, H, W) array of dataset k (memory-mapped, opened once per process)."""
        return self._array(k)

    def _array(self, k: int) -> np.ndarray:
        if self._arrays[k] is None:
            self._arrays[k] = np.load(self._paths[k], mmap_mode="r")
        return self._arrays[k]

    def __getstate__(self):
        state = self.__dict__.copy()
        # A memmap pickles as a full in-memory copy: send the path and reopen in the worker.
        state["_arrays"] = [None if p is not None else a for p, a in zip(self._paths, self._arrays)]
        return state

    def __len__(self) -> int:
        return int(self._offsets[-1])

    def locate(self, i: int) -> tuple[int, int, int]:
        """Item i -> (dataset index, sequence index, first frame)."""
        if not -len(self) <= i < len(self):
            raise IndexError(f"index {i} out of range for {len(self)} windows")
        i = int(i) % len(self)
        k = int(np.searchsorted(self._offsets, i, side="right")) - 1
        j = i - int(self._offsets[k])
        seq, w = divmod(j, self._per_seq[k])
        return k, seq, w * (self.stride or 0)

    def __getitem__(self, i: int) -> dict:
        k, seq, start = self.locate(i)
        clip = np.asarray(self._array(k)[seq, start:start + self.length])  # (L, H, W) uint8
        frames = torch.from_numpy(clip.astype(np.float32)).div_(255.0).unsqueeze(1)  # (L, 1, H, W)
        return {"frames": frames, "dataset": k, "index": seq, "start": start}

    def split_frames(self, frames: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(..., L, 1, H, W) -> context (..., context, 1, H, W), target (..., target, 1, H, W), as views."""
        return frames[..., :self.context, :, :, :], frames[..., self.context:self.length, :, :, :]

    def weights(self, first: int | list[int] = 0) -> torch.Tensor:
        """Per-item sampling weights that draw every dataset equally often: 1 / (its item count).
        first > 0: only the first `first` items of each dataset (the others weigh 0); a list:
        one such count per dataset."""
        parts = []
        counts = first if isinstance(first, (list, tuple)) else [first] * len(self.sizes)
        for n, count in zip(self.sizes, counts):
            kept = min(n, count) if count else n
            w = torch.zeros(n, dtype=torch.double)
            w[:kept] = 1.0 / max(kept, 1)
            parts.append(w)
        return torch.cat(parts) / max(1, sum(n > 0 for n in self.sizes))

    def sampler(self, num_samples: int | None = None, generator: torch.Generator | None = None):
        """A WeightedRandomSampler (with replacement) balanced over the datasets."""
        return WeightedRandomSampler(self.weights(), num_samples or len(self), replacement=True, generator=generator)
