"""Subject photos (DreamBooth-style) for the diffusion task family.

A folder of 3-6 photos of one subject, captioned with one instance prompt (`a photo of sks dog`);
optionally a folder of class images (`a photo of dog`) for prior preservation, concatenated after
the instance images in every batch and marked by `is_prior`. Validation reuses the instance photos
without augmentation: the task scores them with fixed noise and timesteps, so the curve is smooth.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import lightning as L
import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms

from ..options import DiffusionDataOptions
from .loaders import evaluation_loader, trainer_epoch, training_loader

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp")
CLASSES_FILE = "prompts_and_classes.txt"
LIVE_CLASSES = frozenset({"dog", "cat"})  # DreamBooth's live subjects use their own prompt list


def list_images(folder: str | Path, what: str, key: str) -> list[Path]:
    """Image files of `folder` in name order; a missing or image-less folder names the config key to fix."""
    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise FileNotFoundError(f"{what} folder {str(folder)!r} does not exist; set {key}=<folder of images>.")
    images = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not images:
        found = sorted(p.name for p in folder.iterdir())[:10]
        raise ValueError(
            f"{what} folder {str(folder)!r} holds no images ({', '.join(IMAGE_SUFFIXES)}); it has "
            f"{found or 'nothing'}. Put the photos there or point {key} at the folder that has them."
        )
    return images


def check_images(paths: Sequence[Path]) -> None:
    """Decode every image once, so a broken file stops the run before any model loads."""
    for path in paths:
        try:
            with Image.open(path) as image:
                image.load()
        except (UnidentifiedImageError, OSError, SyntaxError) as error:
            raise ValueError(
                f"cannot read image {str(path)!r} ({type(error).__name__}: {error}); "
                "delete it or re-save it as JPEG/PNG."
            ) from error


def read_subject_classes(path: str | Path) -> dict[str, str]:
    """`subject_name -> class` from DreamBooth's prompts_and_classes.txt (its `subject_name,class` table)."""
    classes: dict[str, str] = {}
    for line in Path(path).read_text().splitlines():
        match = re.fullmatch(r"\s*([\w-]+)\s*,\s*([^,]+?)\s*", line)
        if match and match.group(1) != "subject_name":
            classes[match.group(1)] = match.group(2)
    return classes


def read_prompt_lists(path: str | Path) -> dict[str, list[str]]:
    """DreamBooth's two evaluation prompt lists (`objects`, `live`) as templates with {token} and {class}."""
    lists: dict[str, list[str]] = {"objects": [], "live": []}
    current = None
    for line in Path(path).read_text().splitlines():
        if line.strip() == "Object Prompts":
            current = "objects"
        elif line.strip() == "Live Subject Prompts":
            current = "live"
        elif current:
            match = re.search(r"'(.*)'\.format", line)
            if match:
                lists[current].append(match.group(1).replace("{0}", "{token}").replace("{1}", "{class}"))
    if not lists["objects"] or not lists["live"]:
        raise ValueError(f"{path} does not hold DreamBooth's 'Object Prompts' and 'Live Subject Prompts' lists.")
    return lists


def evaluation_prompts(prompts_file: str | Path, class_name: str) -> list[str]:
    """The prompt templates DreamBooth evaluates a subject of this class with (live subjects: dogs, cats)."""
    lists = read_prompt_lists(prompts_file)
    return lists["live" if class_name in LIVE_CLASSES else "objects"]


def resolve_subject(
    instance_dir: str | None, root: str | None, subject: str | None, class_name: str | None
) -> tuple[Path, str]:
    """(instance folder, class name): `data.instance_dir`, or `data.root`/`data.subject`; the class from
    `data.class_name` or the DreamBooth table beside the subject folders."""
    if instance_dir:
        folder = Path(instance_dir).expanduser()
    elif root and subject:
        folder = Path(root).expanduser() / subject
    else:
        raise ValueError(
            "No subject photos: set data.instance_dir=<folder of photos>, or data.root=<DreamBooth "
            "dataset folder> data.subject=<subject folder name> (e.g. data.root=../shared/data/dreambooth "
            "data.subject=dog)."
        )
    if class_name:
        return folder, str(class_name)
    table = folder.parent / CLASSES_FILE
    classes = read_subject_classes(table) if table.is_file() else {}
    if folder.name not in classes:
        raise ValueError(
            f"No class name for subject {folder.name!r} ({table} {'lacks it' if table.is_file() else 'is missing'}); "
            "set data.class_name=<class>, e.g. data.class_name=dog."
        )
    return folder, classes[folder.name]


def format_prompt(template: str, token: str, class_name: str) -> str:
    return template.replace("{token}", token).replace("{class}", class_name)


def image_transform(resolution: int, center_crop: bool, random_flip: bool) -> Callable[[Image.Image], torch.Tensor]:
    """DreamBooth's preprocessing: shorter side to `resolution`, crop, [-1, 1]."""
    steps = [
        transforms.Resize(resolution, interpolation=transforms.InterpolationMode.BILINEAR),
        transforms.CenterCrop(resolution) if center_crop else transforms.RandomCrop(resolution),
    ]
    if random_flip:
        steps.append(transforms.RandomHorizontalFlip())
    steps += [transforms.ToTensor(), transforms.Normalize([0.5], [0.5])]
    return transforms.Compose(steps)


class SubjectDataset(Dataset):
    """Instance photos (and class images) with their tokenized prompts.

    Its length is the larger of the two image counts, as in DreamBooth's script, so every class
    image is seen once per epoch and instance photos cycle.
    """

    def __init__(
        self,
        instance_images: Sequence[Path],
        instance_ids: torch.Tensor,
        transform: Callable,
        class_images: Sequence[Path] = (),
        class_ids: torch.Tensor | None = None,
    ):
        self.instance_images = list(instance_images)
        self.class_images = list(class_images)
        self.instance_ids = instance_ids
        self.class_ids = class_ids
        self.transform = transform

    def __len__(self) -> int:
        return max(len(self.instance_images), len(self.class_images))

    def _load(self, path: Path) -> torch.Tensor:
        with Image.open(path) as image:
            return self.transform(image.convert("RGB"))

    def __getitem__(self, index: int) -> dict[str, Any]:
        item = {
            "instance_pixels": self._load(self.instance_images[index % len(self.instance_images)]),
            "instance_ids": self.instance_ids,
        }
        if self.class_images:
            item["class_pixels"] = self._load(self.class_images[index % len(self.class_images)])
            item["class_ids"] = self.class_ids
        return item


def collate_subject(items: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
    """Instance examples first, then the class examples (if any); `is_prior` marks the second half."""
    pixels = [item["instance_pixels"] for item in items]
    ids = [item["instance_ids"] for item in items]
    prior = [False] * len(items)
    if "class_pixels" in items[0]:
        pixels += [item["class_pixels"] for item in items]
        ids += [item["class_ids"] for item in items]
        prior += [True] * len(items)
    return {
        "pixel_values": torch.stack(pixels).contiguous(),
        "input_ids": torch.stack(ids),
        "is_prior": torch.tensor(prior),
    }


class SubjectDataModule(L.LightningDataModule):
    """Training batches of subject (+ class) images; validation = the subject photos, centre-cropped.

    The images and rendered prompts come from the builder (data.subject, data.class_dir, ...); the
    loading options (resolution, batch size, workers, crop and flip) from `options`.
    """

    def __init__(
        self,
        instance_images: Sequence[Path],
        instance_prompt: str,
        tokenizer: Any,
        options: DiffusionDataOptions,
        *,
        class_images: Sequence[Path] = (),
        class_prompt: str | None = None,
    ):
        super().__init__()
        self.instance_images = list(instance_images)
        self.class_images = list(class_images)
        self.instance_prompt = instance_prompt
        self.class_prompt = class_prompt
        self.tokenizer = tokenizer
        self.options = options
        self.train_set: SubjectDataset | None = None
        self.val_set: SubjectDataset | None = None

    def tokenize(self, prompt: str) -> torch.Tensor:
        return self.tokenizer(
            prompt,
            padding="max_length",
            truncation=True,
            max_length=self.tokenizer.model_max_length,
            return_tensors="pt",
        ).input_ids[0]

    def setup(self, stage: str | None = None) -> None:
        instance_ids = self.tokenize(self.instance_prompt)
        class_ids = self.tokenize(self.class_prompt) if self.class_images else None
        resolution = self.options.resolution
        train_transform = image_transform(resolution, self.options.center_crop, self.options.random_flip)
        self.train_set = SubjectDataset(
            self.instance_images, instance_ids, train_transform, self.class_images, class_ids
        )
        self.val_set = SubjectDataset(self.instance_images, instance_ids, image_transform(resolution, True, False))

    def train_dataloader(self) -> DataLoader:
        return training_loader(
            self.train_set,
            self.options.batch_size,
            collate_subject,
            self.options.num_workers,
            epoch_source=trainer_epoch(self),
        )

    def val_dataloader(self) -> DataLoader:
        # each photo once across DDP ranks
        return evaluation_loader(
            self.val_set,
            self.options.batch_size,
            self.trainer,
            collate_subject,
            self.options.num_workers,
            persistent_workers=False,
        )
