"""Draw the world model's architecture as a block diagram, from the real modules.

    python evaluation/draw_architecture.py                         # default SharpWorldModelV2()
    python evaluation/draw_architecture.py --checkpoint=checkpoints/sharp_v2/latest.pt
    python evaluation/draw_architecture.py --out_dir=/tmp/arch

Nothing in the picture is typed by hand: the model (default config, or the one a
checkpoint was trained with) runs one rollout step on a dummy batch with forward hooks
on every encoder / decoder stage, the quantiser and the dynamics' stem, ConvGRU cells
and head; each block shows the layer it wraps, the per-frame shape it outputs and its
parameter count (training.world_model.count_parameters). The free function `warp` is
wrapped for the pass so that its output shape is recorded as well.
Writes <out_dir>/architecture_diagram.png (default results/architecture/).
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import utils  # noqa: E402  (import before torch: sets OMP/malloc tuning)

import torch  # noqa: E402
import torch.nn as nn  # noqa: E402

from training import motion  # noqa: E402
from training import world_model as wm  # noqa: E402

CONFIG = dict(
    checkpoint="",   # draw this checkpoint's model_config; default: SharpWorldModelV2()
    out_dir="",      # default: results/architecture
    context=3,       # frames in the dummy context batch
)

# Colours per part of the model (fill, edge).
COLOURS = {"io": ("#eeeeee", "#555555"), "encoder": ("#dbe9f6", "#2c6fad"),
           "quantizer": ("#fde4c8", "#c46a00"), "dynamics": ("#dcf1dc", "#2e8b3e"),
           "warp": ("#f6dcef", "#a43a8a"), "decoder": ("#e8e0f5", "#6a4aa8")}
_ELEMENTWISE = (nn.GroupNorm, nn.SiLU, nn.ReLU, nn.BatchNorm2d)


def describe(module: nn.Module) -> str:
    """A short label from the module's own attributes."""
    if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d)):
        k, s = module.kernel_size[0], module.stride[0]
        name = "ConvT" if isinstance(module, nn.ConvTranspose2d) else "Conv"
        return f"{name} {k}x{k}" + (f" /{s}" if s > 1 and name == "Conv" else f" x{s}" if s > 1 else "")
    if isinstance(module, nn.GroupNorm):
        return "GN"
    if isinstance(module, nn.Sequential):
        return "+".join(describe(m) for m in module)
    return type(module).__name__


def shape_text(shape) -> str:
    """(B, C, H, W) -> 'C x H x W' (the batch dimension dropped); (B, h, w) -> 'h x w'."""
    return " x ".join(str(d) for d in shape[1:])


class Recorder:
    """Forward hooks that store each module's (first) output shape."""

    def __init__(self):
        self.shapes: dict[nn.Module, tuple] = {}
        self.handles = []

    def watch(self, module: nn.Module):
        def hook(mod, inputs, output):
            out = output[0] if isinstance(output, tuple) else output
            if isinstance(output, tuple) and isinstance(mod, wm.VectorQuantizer):
                out = output[1]  # the codes grid (B, h, w)
            self.shapes.setdefault(mod, tuple(out.shape))
        self.handles.append(module.register_forward_hook(hook))

    def remove(self):
        for h in self.handles:
            h.remove()


def stages(seq: nn.Sequential):
    """Group a Sequential's children so that norms/activations join the layer after
    them: [(label, [modules]), ...]; the last module of each group gives the shape."""
    groups, pending = [], []
    for m in seq:
        pending.append(m)
        if not isinstance(m, _ELEMENTWISE):
            groups.append(("+".join(describe(p) for p in pending), pending))
            pending = []
    if pending:
        groups.append(("+".join(describe(p) for p in pending), pending))
    return groups


def trace(model: wm.SharpWorldModelV2, context: int):
    """One observe + one imagined step on a dummy batch; returns the block list
    [(part, title, detail, params)] in data-flow order, plus totals."""
    rec = Recorder()
    tok, dyn = model.tokenizer, model.dynamics
    watched = list(tok.encoder) + [tok.quantizer] + list(tok.decoder) + [dyn.stem, *dyn.cells, dyn.head]
    if dyn.reward is not None:
        watched.append(dyn.reward)
    for m in watched:
        rec.watch(m)
    warp_shapes = []
    original_warp = motion.warp

    def recording_warp(frames, motion):
        out = original_warp(frames, motion)
        warp_shapes.append(tuple(out.shape))
        return out

    size = model.config.image_size
    x = torch.rand(1, context, 1, size, size)
    actions = torch.zeros(1, context + 1, dyn.action_dim) if dyn.action_dim else None
    motion.warp = recording_warp   # every unit warps through the module attribute
    try:
        with torch.no_grad():
            model.eval().rollout(x, 1, actions)
    finally:
        motion.warp = original_warp
        rec.remove()

    n = wm.count_parameters
    # Each block: (part, title, layers, output shape per frame, parameters).
    blocks = [("io", "frame", "input", shape_text(x[:, 0].shape), None)]
    for i, (label, mods) in enumerate(stages(tok.encoder)):
        blocks.append(("encoder", f"encoder {i + 1}", label, shape_text(rec.shapes[mods[-1]]),
                       sum(n(m) for m in mods)))
    q = tok.quantizer
    blocks.append(("quantizer", "vector quantiser", f"codebook {q.num_codes} x {q.dim}",
                   "codes " + shape_text(rec.shapes[q]), f"{q.codebook.numel() / 1e3:.1f}k EMA values (buffer)"))
    grid = rec.shapes[q][1:]
    blocks.append(("quantizer", "embeddings", "codebook lookup", f"{q.dim} x {grid[0]} x {grid[1]}", None))
    predict = model.config.predict
    planes = {"layers": "layer", "particles": "motion"}.get(predict, "")   # the unit's extra input planes
    extra = ("emb+xy" + ("+act" if dyn.action_dim else "")
             + (f"+{planes} {model.unit.extra_in}" if model.unit.extra_in else ""))
    blocks.append(("dynamics", "stem", f"{describe(dyn.stem)} ({dyn.stem.in_channels} ch: {extra})",
                   shape_text(rec.shapes[dyn.stem]), n(dyn.stem)))
    blocks.append(("dynamics", f"ConvGRU x {len(dyn.cells)}", "stacked cells, state kept",
                   shape_text(rec.shapes[dyn.cells[0]]) + " each", sum(n(c) for c in dyn.cells)))
    head_name = {"motion": "motion head (px/frame)", "particles": "velocity correction head (px/frame)",
                 "layers": "layer head (pooled)"}[predict]
    head_layers = describe(dyn.head)
    blocks.append(("dynamics", head_name, head_layers, shape_text(rec.shapes[dyn.head]), n(dyn.head)))
    if predict == "layers":
        blocks.append(("warp", "move layers", f"{model.config.objects} rigid layers, overlaid", shape_text(warp_shapes[0]), 0))
        blocks.append(("warp", "re-tokenise", "same encoder + VQ", "codes " + shape_text(rec.shapes[q]), 0))
    elif predict == "motion":
        blocks.append(("warp", "warp", "last seen frame, summed d", shape_text(warp_shapes[0]), 0))
        blocks.append(("warp", "re-tokenise", "same encoder + VQ", "codes " + shape_text(rec.shapes[q]), 0))
    else:
        blocks.append(("warp", "splat", "every pixel a particle, moved", shape_text(x[:, 0].shape), 0))
        blocks.append(("warp", "re-tokenise", "same encoder + VQ", "codes " + shape_text(rec.shapes[q]), 0))
    for i, (label, mods) in enumerate(stages(tok.decoder)):
        blocks.append(("decoder", f"decoder {i + 1}", label, shape_text(rec.shapes[mods[-1]]),
                       sum(n(m) for m in mods)))
    blocks.append(("io", "next frame", "sigmoid", shape_text(x[:, 0].shape), None))
    totals = {"tokenizer": n(tok), "dynamics": n(dyn), "total": n(model)}
    reward = n(dyn.reward) if dyn.reward is not None else None
    return blocks, totals, reward, predict


def fmt_params(p) -> str:
    if p is None:
        return ""
    if isinstance(p, str):
        return p
    if p == 0:
        return "no params (shared)"
    return f"{p / 1e6:.2f}M params" if p >= 1e6 else f"{p / 1e3:.1f}k params" if p >= 1e3 else f"{p} params"


def draw(blocks, totals, reward, predict: str, model_config: dict, path: Path, source: str):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import FancyArrowPatch, FancyBboxPatch

    # Snake layout: rows of `per_row` blocks, left-to-right then right-to-left.
    per_row = 6
    bw, bh, gx, gy = 2.5, 1.25, 0.75, 0.9
    rows = (len(blocks) + per_row - 1) // per_row
    width = per_row * bw + (per_row - 1) * gx
    height = rows * bh + (rows - 1) * gy
    fig, ax = plt.subplots(figsize=(width * 0.82, height * 0.82 + 1.6))
    centres = []
    for i, (part, title, layers, detail, params) in enumerate(blocks):
        r, c = divmod(i, per_row)
        if r % 2:
            c = per_row - 1 - c
        x0 = c * (bw + gx)
        y0 = height - (r + 1) * bh - r * gy
        fill, edge = COLOURS[part]
        ax.add_patch(FancyBboxPatch((x0, y0), bw, bh, boxstyle="round,pad=0.02,rounding_size=0.12",
                                    fc=fill, ec=edge, lw=1.4))
        ax.text(x0 + bw / 2, y0 + bh * 0.80, title, ha="center", va="center", fontsize=7.6, fontweight="bold")
        ax.text(x0 + bw / 2, y0 + bh * 0.59, layers, ha="center", va="center", fontsize=6.2, color="0.2")
        ax.text(x0 + bw / 2, y0 + bh * 0.37, detail, ha="center", va="center", fontsize=6.6, family="monospace")
        ax.text(x0 + bw / 2, y0 + bh * 0.15, fmt_params(params), ha="center", va="center", fontsize=6.2,
                color="0.35")
        centres.append((x0, y0, r))
    for (xa, ya, ra), (xb, yb, rb) in zip(centres, centres[1:]):
        if ra == rb:  # same row: side to side
            if xb > xa:
                start, end = (xa + bw, ya + bh / 2), (xb, yb + bh / 2)
            else:
                start, end = (xa, ya + bh / 2), (xb + bw, yb + bh / 2)
        else:         # next row: straight down
            start, end = (xa + bw / 2, ya), (xb + bw / 2, yb + bh)
        ax.add_patch(FancyArrowPatch(start, end, arrowstyle="-|>", mutation_scale=11, lw=1.2, color="0.25"))
    # The autoregressive loop: the predicted frame becomes the next step's input.
    xa, ya, _ = centres[-1]
    loop = ("loop: the next frame's codes feed the next dynamics step; each warp starts from the last observed frame"
            if predict == "motion" else "loop: the next frame's codes feed the next dynamics step")
    ax.annotate(loop,
                xy=(xa + bw / 2, ya - 0.05), xytext=(xa + bw / 2, ya - 0.55), ha="center", fontsize=7.5,
                color="#2e8b3e", arrowprops=dict(arrowstyle="<-", color="#2e8b3e", lw=1.2))
    if reward is not None:
        ax.text(width, -0.95, f"+ reward head (MLP on the pooled ConvGRU state, one scalar per step): "
                f"{fmt_params(reward)}", ha="right", fontsize=7.5)
    ax.text(0, -0.95, "  ".join(f"{k}: {fmt_params(v).replace(' params', '')}" for k, v in totals.items())
            + " parameters", fontsize=8.5)
    cfg_text = ", ".join(f"{k}={v}" for k, v in model_config.items())
    ax.text(0, -1.4, f"{source}: {cfg_text}", fontsize=7, color="0.35")
    handles = [plt.Rectangle((0, 0), 1, 1, fc=COLOURS[k][0], ec=COLOURS[k][1]) for k in COLOURS]
    ax.legend(handles, ["input/output", "tokenizer encoder", "vector quantiser", "ConvGRU dynamics",
                        "move + re-tokenise", "tokenizer decoder"],
              loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=6, fontsize=7.5, frameon=False)
    ax.set_xlim(-0.2, width + 0.2)
    ax.set_ylim(-1.6, height + 0.1)
    ax.set_aspect("equal")
    ax.axis("off")
    fig.suptitle("SharpWorldModelV2: shapes per frame (channels x height x width), from hooks on a real forward pass",
                 fontsize=9.5, y=1.0)
    utils.save_figure(fig, path, dpi=130)


def main():
    cfg = utils.parse_overrides(CONFIG)
    if cfg["checkpoint"]:
        ckpt = utils.load_checkpoint(cfg["checkpoint"])
        fix = "pass --checkpoint=checkpoints/<run>/latest.pt of train_sharp_v2.py or train_comprehensive.py"
        mc = ckpt.get("model_config")
        if not isinstance(mc, dict) or mc.get("kind") is not None:
            raise SystemExit(f"error: {cfg['checkpoint']} is not a world-model checkpoint (the diagram draws "
                             f"SharpWorldModelV2 only); {fix}")
        try:
            model = wm.SharpWorldModelV2(wm.ModelConfig.from_checkpoint(mc))
        except (TypeError, ValueError) as exc:
            raise SystemExit(f"error: {cfg['checkpoint']} was written by another version of this code ({exc}); "
                             f"{fix}, or retrain it") from None
        source = f"config of {cfg['checkpoint']}"
    else:
        model = wm.SharpWorldModelV2()
        source = "default config"
    out_dir = Path(cfg["out_dir"]) if cfg["out_dir"] else utils.REPO_ROOT / "results" / "architecture"
    blocks, totals, reward, predict = trace(model, max(1, cfg["context"]))
    path = out_dir / "architecture_diagram.png"
    draw(blocks, totals, reward, predict, model.config.to_dict(), path, source)
    print(f"wrote {path} ({totals['total']:,} parameters)")


if __name__ == "__main__":
    main()
