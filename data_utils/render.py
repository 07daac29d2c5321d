"""Anti-aliased rasteriser: body states -> uint8 grayscale frames (n, T, H, W).

Not run directly; the simulators in data_utils/physics.py draw their scenes with it:

    cv = Canvas(n, T, size)
    cv.discs(pos[:, :, k], radius[:, None], intensity[:, None])   # one call per body
    frames = cv.frames()                                          # (n, T, size, size) uint8

Geometry is in pixel coordinates: x to the right, y downwards, the centre of the top-left
pixel at (0, 0), so pixel (i, j) covers the square [j - 0.5, j + 0.5] x [i - 0.5, i + 0.5].
A shape's coverage of a pixel is estimated from the signed distance d of the pixel centre to
the shape's boundary: clip(0.5 - d, 0, 1) (d < 0 inside), exact for a straight edge crossing
the pixel along an axis and within a few per cent otherwise; axis-aligned boxes use the exact
product of the two 1-D overlaps. Pixel value = round(coverage * intensity); where shapes
overlap the brighter one wins (max), so drawing order does not matter.

Speed: each shape is evaluated only on a small square patch around it (gathered with fancy
indexing), for all sequences and frames at once. Pixels of a patch that fall outside the frame
are sent to one spare "trash" element at the end of the flat canvas, so that the remaining
indices of one call are all distinct and the read-max-write below is race-free.
"""
from __future__ import annotations

import numpy as np

# Patches are processed in blocks of at most this many pixels to bound temporary memory
# (index array int64 + float32 work arrays: about 30 bytes a pixel).
_BLOCK_PIXELS = 1 << 22


class Canvas:
    """A batch of n sequences of T frames, size x size pixels, initially black."""

    def __init__(self, n: int, frames: int, size: int):
        self.n, self.T, self.H, self.W = int(n), int(frames), int(size), int(size)
        self._hw = self.H * self.W
        self._trash = self.n * self.T * self._hw
        self._flat = np.zeros(self._trash + 1, dtype=np.uint8)

    # --- public drawing API ---------------------------------------------------------------
    # Every geometric argument has leading dims (m, T) where m = n, or m = len(seq) when `seq`
    # (indices of the sequences to draw into) is given; sizes and intensities broadcast to
    # (m, T). Intensities are 0..255.

    def discs(self, center, radius, intensity, seq=None):
        """Filled discs. center (m, T, 2); radius, intensity broadcastable to (m, T)."""
        c, (r, val), base = self._items(center, (radius, intensity), seq)
        half = float(np.max(r)) + 1.5 if r.size else 1.5
        self._draw(c, base, half, lambda dx, dy, a: _clip01(a[0] + 0.5 - np.sqrt(dx * dx + dy * dy)),
                   (r,), val)

    def boxes(self, center, half_w, half_h, intensity, seq=None):
        """Axis-aligned filled rectangles |x - cx| <= half_w, |y - cy| <= half_h."""
        c, (hw, hh, val), base = self._items(center, (half_w, half_h, intensity), seq)
        half = float(max(np.max(hw), np.max(hh))) + 1.5 if hw.size else 1.5
        # exact area: product of the 1-D overlaps of the pixel with the box along x and y
        self._draw(c, base, half,
                   lambda dx, dy, a: _clip01(a[0] + 0.5 - np.abs(dx)) * _clip01(a[1] + 0.5 - np.abs(dy)),
                   (hw, hh), val)

    def diamonds(self, center, half_diag, intensity, seq=None):
        """Squares rotated by 45 degrees: |x - cx| + |y - cy| <= half_diag."""
        c, (a, val), base = self._items(center, (half_diag, intensity), seq)
        half = float(np.max(a)) + 1.5 if a.size else 1.5
        inv_sqrt2 = np.float32(1.0 / np.sqrt(2.0))
        # signed distance to the edge |dx| + |dy| = a is (|dx| + |dy| - a) / sqrt(2)
        self._draw(c, base, half,
                   lambda dx, dy, p: _clip01(0.5 - (np.abs(dx) + np.abs(dy) - p[0]) * inv_sqrt2),
                   (a,), val)

    def segments(self, p0, p1, half_width, intensity, seq=None, piece=4.0):
        """Thick line segments (rods) from p0 to p1 (each (m, T, 2)), round caps.

        A long segment is drawn as ceil(longest / piece) consecutive pieces, each on its own
        small patch: the union of the pieces' capsules is exactly the whole capsule, and the
        patches cover about (piece + 4)^2 pixels each instead of (length + 4)^2."""
        p0 = np.asarray(p0, np.float32)
        p1 = np.asarray(p1, np.float32)
        d = p1 - p0
        longest = float(np.max(np.abs(d))) if d.size else 0.0
        pieces = max(1, int(np.ceil(longest / piece)))
        for i in range(pieces):
            a = p0 + d * np.float32(i / pieces)
            b = p0 + d * np.float32((i + 1) / pieces)
            mid = 0.5 * (a + b)
            c, (ex, ey, hw, val), base = self._items(
                mid, (0.5 * (b[..., 0] - a[..., 0]), 0.5 * (b[..., 1] - a[..., 1]), half_width, intensity), seq)
            if not c.shape[0]:
                return
            half = float(np.max(np.maximum(np.abs(ex), np.abs(ey)) + hw)) + 1.5
            self._draw(c, base, half, _capsule_coverage, (ex, ey, hw), val)

    def zigzags(self, top, length, half_width, coils, line_half_width, intensity, seq=None):
        """Vertical zig-zag springs from `top` (m, T, 2) down to top + (0, length).

        The centre line is a triangle wave x(y) = x_top + half_width * tri(coils * u),
        u = (y - y_top) / length in [0, 1], starting and ending on the axis. The distance of a
        pixel to it is taken as |x - x(y)| * cos(alpha) with tan(alpha) = 4 coils half_width / length
        (the perpendicular distance to the straight stroke through that point; only the
        turning points are approximated), so one rectangular patch per spring suffices."""
        top = np.asarray(top, np.float32)
        m = top.shape[0]
        length = np.broadcast_to(np.asarray(length, np.float32), (m, self.T))
        centre = top + np.stack([np.zeros_like(length), 0.5 * length], axis=-1)
        c, (L, hw, lw, val), base = self._items(centre, (length, half_width, line_half_width, intensity), seq)
        if not c.shape[0]:
            return
        lw_max = float(np.max(lw))
        half = (float(np.max(hw)) + lw_max + 1.5, float(np.max(0.5 * L)) + lw_max + 1.5)  # narrow, tall
        coils = float(coils)

        def cov(px, py, a):
            Lk, w, lwk = a
            Lk = np.maximum(Lk, 1e-3)
            u = np.clip(py / Lk + 0.5, 0.0, 1.0)  # 0 at the top, 1 at the bottom end
            ph = coils * u
            # triangle wave: 0 at ph = 0, +1 at 1/4, 0 at 1/2, -1 at 3/4 (slope +-4 per coil)
            xline = w * (4.0 * np.abs(ph - 0.25 - np.floor(ph - 0.25) - 0.5) - 1.0)
            slope = 4.0 * coils * w / Lk
            d = np.abs(px - xline) / np.sqrt(1.0 + slope * slope)
            # beyond the two ends: distance to the end point on the axis
            dy_out = np.maximum(np.abs(py) - 0.5 * Lk, 0.0)
            d = np.sqrt(d * d + dy_out * dy_out)
            return _clip01(lwk + 0.5 - d)

        self._draw(c, base, half, cov, (L, hw, lw), val)

    def frames(self) -> np.ndarray:
        """The picture so far, uint8 (n, T, H, W) (a view: no copy)."""
        return self._flat[:-1].reshape(self.n, self.T, self.H, self.W)

    # --- internals ------------------------------------------------------------------------
    def _items(self, center, params, seq):
        """Flatten (m, T, ...) inputs to per-item arrays: centres (N, 2) float32, params each
        (N,) float32, flat base offsets (N,) int64 of each item's frame."""
        center = np.asarray(center, np.float32)
        m = center.shape[0]
        if center.shape[:2] != (m, self.T) or center.shape[-1] != 2:
            raise ValueError(f"centre array has shape {center.shape}; expected (m, {self.T}, 2)")
        seq_idx = np.arange(self.n) if seq is None else np.asarray(seq, np.int64)
        if seq_idx.shape != (m,):
            raise ValueError(f"{m} items per frame but seq has shape {seq_idx.shape}")
        flat_params = [np.broadcast_to(np.asarray(p, np.float32), (m, self.T)).reshape(-1) for p in params]
        frame_no = seq_idx[:, None] * self.T + np.arange(self.T)[None, :]
        base = (frame_no * self._hw).reshape(-1)
        return center.reshape(-1, 2), flat_params, base

    def _draw(self, c, base, half, coverage, params, intensity):
        """Evaluate `coverage(dx, dy, params)` on a patch reaching `half` pixels (a number, or
        (half_x, half_y)) either side of each item centre and max-combine
        round(coverage * intensity) into the canvas."""
        N = c.shape[0]
        if N == 0:
            return
        hx, hy = (half, half) if np.isscalar(half) else half
        Px, Py = int(np.ceil(2.0 * hx)) + 1, int(np.ceil(2.0 * hy)) + 1
        offx, offy = np.arange(Px, dtype=np.int64), np.arange(Py, dtype=np.int64)
        block = max(1, _BLOCK_PIXELS // (Px * Py))
        flat = self._flat
        for s in range(0, N, block):
            e = min(N, s + block)
            cx, cy = c[s:e, 0], c[s:e, 1]
            px = np.floor(cx - hx).astype(np.int64)[:, None] + offx[None, :]   # (b, Px) columns
            py = np.floor(cy - hy).astype(np.int64)[:, None] + offy[None, :]   # (b, Py) rows
            dx = (px.astype(np.float32) - cx[:, None])[:, None, :]             # (b, 1, Px)
            dy = (py.astype(np.float32) - cy[:, None])[:, :, None]             # (b, Py, 1)
            a = tuple(p[s:e, None, None] for p in params)
            cov = np.broadcast_to(coverage(dx, dy, a), (e - s, Py, Px))
            val = np.minimum(cov * intensity[s:e, None, None] + 0.5, 255.0).astype(np.uint8)
            idx = base[s:e, None, None] + py[:, :, None] * self.W + px[:, None, :]
            if px.min() < 0 or px.max() >= self.W or py.min() < 0 or py.max() >= self.H:
                inside = ((px >= 0) & (px < self.W))[:, None, :] & ((py >= 0) & (py < self.H))[:, :, None]
                idx = np.where(inside, idx, self._trash)
            idx = idx.reshape(-1)
            flat[idx] = np.maximum(flat[idx], val.reshape(-1))
        flat[-1] = 0


def _capsule_coverage(px, py, a):
    """Coverage from the distance of a pixel (offset px, py from the segment's midpoint) to the
    segment mid + s (ex, ey), s in [-1, 1], thickened by the half width w."""
    ex, ey, w = a
    s = np.clip((px * ex + py * ey) / np.maximum(ex * ex + ey * ey, 1e-12), -1.0, 1.0)
    qx, qy = px - s * ex, py - s * ey
    return _clip01(w + 0.5 - np.sqrt(qx * qx + qy * qy))


def _clip01(x):
    return np.clip(x, 0.0, 1.0)


def field_to_uint8(u: np.ndarray) -> np.ndarray:
    """Map a field in [-1, 1] to grey levels round(127.5 (1 + u)): -1 -> 0, 0 -> 128, 1 -> 255;
    values outside are clipped. A float32 input is overwritten (it is the scratch buffer)."""
    u = np.asarray(u)
    if u.dtype != np.float32:
        u = u.astype(np.float32)
    u *= 127.5
    u += 128.0                       # floor(127.5 (1 + u) + 0.5); the cast below truncates = floors
    np.clip(u, 0.0, 255.0, out=u)
    return u.astype(np.uint8)
