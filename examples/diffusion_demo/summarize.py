"""Turn a diffusion demo run into small committed results: loss curve, sample progression, a table.

Usage: python examples/diffusion_demo/summarize.py <run dir> [<run dir> ...] --out docs/results/diffusion_demo

For each run: its validation loss (the subject photos at fixed timesteps and noise), the training loss
(averaged over windows of steps), the trainable parameter count and the wall time from metrics.json;
one loss-curve figure for all runs, and for the first run a column of its sample grids (steps 0, ...,
last), downscaled so the files stay small.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
from PIL import Image, ImageDraw  # noqa: E402


def read_run(run: Path) -> tuple[dict, pd.DataFrame]:
    metrics = json.loads((run / "metrics.json").read_text())
    logs = sorted((run / "logs").glob("version_*/metrics.csv"))
    if not logs:
        raise FileNotFoundError(f"no {run}/logs/version_*/metrics.csv: run with logger=csv (the default)")
    frame = pd.concat(pd.read_csv(path) for path in logs)
    # Lightning writes a validation row with the index of the batch that triggered it (0-based): the
    # validation after 25 optimizer steps is row 24. Shift those rows to the number of steps taken.
    frame.loc[frame["val/loss"].notna(), "step"] += 1
    return metrics, frame


def loss_figure(runs: dict[str, pd.DataFrame], path: Path, window: int) -> None:
    figure, (train_ax, val_ax) = plt.subplots(1, 2, figsize=(9, 3.2))
    for label, frame in runs.items():
        train = frame[["step", "train/loss"]].dropna()
        smooth = train.groupby(train["step"] // window).mean()
        train_ax.plot(smooth["step"], smooth["train/loss"], label=label)
        val = frame[["step", "val/loss"]].dropna()
        val_ax.plot(val["step"], val["val/loss"], marker="o", label=label)
    train_ax.set(title=f"training loss (mean of {window} steps)", xlabel="step", ylabel="MSE")
    val_ax.set(title="val/loss: subject photos, fixed noise", xlabel="step")
    for ax in (train_ax, val_ax):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=110)


def progression(run: Path, path: Path, real_dir: Path | None, scale: int) -> list[int]:
    """The sample grids of every sampled step side by side (rows = prompts x seeds), real photos first."""
    grids = sorted((run / "samples").glob("step_*.png"))
    if not grids:
        raise FileNotFoundError(f"no sample grids under {run}/samples")
    steps = [int(p.stem.split("_")[1]) for p in grids]
    images = [Image.open(p).convert("RGB") for p in grids]
    images = [im.resize((im.width * scale, im.height * scale), Image.NEAREST) for im in images]
    tile = images[0].height
    panels = images
    if real_dir is not None:
        photos = sorted(p for p in real_dir.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
        side = tile // max(1, len(photos) // 1) if len(photos) > 1 else tile
        side = min(side, tile)
        strip = Image.new("RGB", (side, tile), "white")
        for k, photo in enumerate(photos[: tile // side]):
            strip.paste(Image.open(photo).convert("RGB").resize((side, side)), (0, k * side))
        panels = [strip, *images]
    label_h = 16
    canvas = Image.new("RGB", (sum(p.width for p in panels) + 4 * (len(panels) - 1), tile + label_h), "white")
    draw = ImageDraw.Draw(canvas)
    x = 0
    labels = (["photos"] if real_dir is not None else []) + [f"step {s}" for s in steps]
    for panel, label in zip(panels, labels, strict=True):
        canvas.paste(panel, (x, label_h))
        draw.text((x + 2, 2), label, fill="black")
        x += panel.width + 4
    canvas.save(path, optimize=True)
    return steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--window", type=int, default=25)
    parser.add_argument("--scale", type=int, default=1, help="upscale factor of the sample grids")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    frames, rows = {}, []
    for run in args.runs:
        metrics, frame = read_run(run)
        label = f"{metrics['adapter']} ({metrics['params'].get('trainable', 0):,} trainable)"
        frames[label] = frame
        val = frame[["step", "val/loss"]].dropna()
        rows.append(
            f"| {metrics['adapter']} | {metrics['params'].get('trainable', 0):,} | "
            f"{val['val/loss'].iloc[0]:.4f} (step {int(val['step'].iloc[0])}) | "
            f"{val['val/loss'].iloc[-1]:.4f} (step {int(val['step'].iloc[-1])}) | "
            f"{val['val/loss'].min():.4f} | {metrics['time_s']:.0f} |"
        )
    loss_figure(frames, args.out / "loss_curve.png", args.window)
    export = json.loads((args.runs[0] / "export.json").read_text())
    steps = progression(args.runs[0], args.out / "samples_progression.png", Path(export["instance_dir"]), args.scale)
    prompts = json.loads((args.runs[0] / "samples" / "prompts.json").read_text())
    table = "\n".join(
        [
            "| adapter | trainable | first val/loss | last val/loss | best val/loss | time (s) |",
            "|---|---|---|---|---|---|",
            *rows,
        ]
    )
    text = (
        f"{table}\n\nSample grids of `{args.runs[0].name}` at steps {steps}: rows = prompts "
        f"{prompts['prompts']} x seeds {prompts['seeds']}.\n"
    )
    (args.out / "results.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
