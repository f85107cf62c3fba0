"""Pretrain a small ViT on five CIFAR-10 classes and save it as a Hugging Face model folder.

This makes a real transfer experiment possible offline: the saved backbone plays the part of
google/vit-base-patch16-224-in21k, and the five other classes play the downstream dataset that
LoLDU, LoRA and a linear probe adapt it to (see README.md beside this file).

Writes under --out:
  source_classes/{train,test}/<class>   symlinks to the five pretraining classes (no copies)
  target_classes/{train,test}/<class>   symlinks to the five held-out classes, for data.root=
  vit-small-cifar5/                      config.json, model.safetensors (the ViTModel backbone,
                                         no head, like the in21k checkpoint), preprocessor_config.json
  pretrain_metrics.json                  per-epoch loss and source-class test accuracy
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader
from torchvision import datasets
from torchvision.transforms import v2
from transformers import ViTConfig, ViTForImageClassification, ViTImageProcessor, get_cosine_schedule_with_warmup

SOURCE_CLASSES = ("airplane", "automobile", "bird", "cat", "deer")
TARGET_CLASSES = ("dog", "frog", "horse", "ship", "truck")
SPLITS = ("train", "test")
MEAN = STD = (0.5, 0.5, 0.5)


def link_class_view(data_root: Path, classes: tuple[str, ...], view: Path) -> Path:
    """An ImageFolder tree of only ``classes``, made of directory symlinks into ``data_root``."""
    for split in SPLITS:
        for name in classes:
            source = (data_root / split / name).resolve()
            if not source.is_dir():
                raise FileNotFoundError(f"{source} is missing; --data must hold {{train,test}}/<class>/ folders")
            link = view / split / name
            link.parent.mkdir(parents=True, exist_ok=True)
            if link.is_symlink() and link.resolve() == source:
                continue
            if link.exists() or link.is_symlink():
                raise FileExistsError(f"{link} exists and is not a link to {source}; remove it or pick another --out")
            link.symlink_to(source, target_is_directory=True)
    return view


def small_vit_config(args: argparse.Namespace) -> ViTConfig:
    return ViTConfig(
        image_size=32,
        patch_size=args.patch_size,
        hidden_size=args.hidden_size,
        num_hidden_layers=args.layers,
        num_attention_heads=args.heads,
        intermediate_size=4 * args.hidden_size,
        num_labels=len(SOURCE_CLASSES),
        id2label=dict(enumerate(SOURCE_CLASSES)),
        label2id={name: index for index, name in enumerate(SOURCE_CLASSES)},
    )


def loaders(view: Path, batch_size: int, workers: int) -> tuple[DataLoader, DataLoader]:
    # The usual CIFAR recipe (pad-and-crop, flip): RandomResizedCrop is too harsh for a ViT
    # trained from scratch on 2,500 images.
    finish = [v2.ToDtype(torch.float32, scale=True), v2.Normalize(list(MEAN), list(STD))]
    train_tf = v2.Compose([v2.ToImage(), v2.RandomCrop(32, padding=4), v2.RandomHorizontalFlip(), *finish])
    test_tf = v2.Compose([v2.ToImage(), v2.Resize((32, 32), antialias=True), *finish])
    train = datasets.ImageFolder(view / "train", transform=train_tf)
    test = datasets.ImageFolder(view / "test", transform=test_tf)
    return (
        DataLoader(train, batch_size=batch_size, shuffle=True, num_workers=workers, drop_last=True),
        DataLoader(test, batch_size=256, num_workers=workers),
    )


@torch.no_grad()
def accuracy(model: ViTForImageClassification, loader: DataLoader) -> float:
    model.eval()
    correct = total = 0
    for pixels, labels in loader:
        correct += (model(pixel_values=pixels).logits.argmax(-1) == labels).sum().item()
        total += labels.numel()
    model.train()
    return correct / total


def pretrain(args: argparse.Namespace) -> dict:
    torch.manual_seed(args.seed)
    source = link_class_view(args.data, SOURCE_CLASSES, args.out / "source_classes")
    link_class_view(args.data, TARGET_CLASSES, args.out / "target_classes")
    train_loader, test_loader = loaders(source, args.batch_size, args.workers)
    model = ViTForImageClassification(small_vit_config(args))
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.05)
    steps = args.epochs * len(train_loader)
    schedule = get_cosine_schedule_with_warmup(optimizer, math.ceil(0.05 * steps), num_training_steps=steps)
    history = []
    start = time.perf_counter()
    for epoch in range(args.epochs):
        losses = []
        for pixels, labels in train_loader:
            loss = model(pixel_values=pixels, labels=labels).loss
            loss.backward()
            optimizer.step()
            schedule.step()
            optimizer.zero_grad(set_to_none=True)
            losses.append(loss.item())
        row = {
            "epoch": epoch,
            "train_loss": sum(losses) / len(losses),
            "test_accuracy": accuracy(model, test_loader),
            "elapsed_s": round(time.perf_counter() - start, 1),
        }
        history.append(row)
        print(json.dumps(row), flush=True)

    folder = args.out / "vit-small-cifar5"
    # Save the backbone only, like the in21k checkpoint: the downstream run gets a fresh head.
    model.vit.save_pretrained(folder)
    processor = ViTImageProcessor(size={"height": 32, "width": 32}, image_mean=list(MEAN), image_std=list(STD))
    processor.save_pretrained(folder)
    summary = {
        "model_folder": str(folder),
        "parameters": sum(p.numel() for p in model.vit.parameters()),
        "source_classes": SOURCE_CLASSES,
        "target_classes": TARGET_CLASSES,
        "history": history,
    }
    (args.out / "pretrain_metrics.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--data",
        type=Path,
        default=Path("../shared/data/cifar10_subset"),
        help="CIFAR-10 ImageFolder tree with train/ and test/ (default: %(default)s)",
    )
    parser.add_argument("--out", type=Path, default=Path("outputs/vit_transfer"))
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--patch-size", type=int, default=4)
    parser.add_argument("--hidden-size", type=int, default=192)
    parser.add_argument("--layers", type=int, default=6)
    parser.add_argument("--heads", type=int, default=3)
    parser.add_argument("--workers", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args()


if __name__ == "__main__":
    arguments = parse_args()
    torch.set_num_threads(arguments.threads)
    result = pretrain(arguments)
    last = result["history"][-1]
    print(
        f"saved {result['model_folder']} ({result['parameters']:,} parameters); "
        f"source-class test accuracy {last['test_accuracy']:.3f} after {last['elapsed_s']} s"
    )
