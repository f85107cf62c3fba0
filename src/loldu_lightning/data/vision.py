"""Image-classification data for the vision task family (ViT transfer, the paper's Table IX).

Every dataset is read by torchvision's own class (CIFAR10, CIFAR100, EuroSAT, StanfordCars,
Flowers102, FGVCAircraft) or by ``ImageFolder`` for any local ``<split>/<class>/<image>`` tree.
Images are preprocessed the way a ViT image processor does it (square resize, scale to [0, 1],
normalise with the model's mean/std) with ``torchvision.transforms.v2`` inside the loader
workers, plus the standard RandomResizedCrop + horizontal flip augmentation for training.
Batches are dicts ``{"pixel_values": float[B, 3, S, S], "labels": long[B]}``, which is what
``transformers.ViTForImageClassification`` takes as keyword arguments.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
import torch
from torch.utils.data import ConcatDataset, DataLoader, Dataset, Subset
from torchvision import datasets
from torchvision.transforms import v2

from ..options import VisionDataOptions, VisionTaskOptions
from .loaders import evaluation_loader, trainer_epoch, training_loader
from .subsets import seeded_subset

VIT_DEFAULT_MEAN = (0.5, 0.5, 0.5)
VIT_DEFAULT_STD = (0.5, 0.5, 0.5)
VIT_DEFAULT_IMAGE_SIZE = 224


@dataclass(frozen=True)
class DatasetSpec:
    """How to open one dataset with torchvision and what it must look like on disk."""

    open_split: Callable[[Path, str, bool], Dataset]
    splits: tuple[str, ...]
    train_split: str
    val_split: str
    layout: str
    no_download: str | None = None  # why data.download=true cannot help, when it cannot


class _FolderWithFixedClasses(datasets.ImageFolder):
    """ImageFolder whose class indices come from the training folder, not from its own listing.

    A plain ImageFolder numbers the classes it finds, so a validation folder that lacks one class
    would silently shift every later label by one.
    """

    def __init__(self, root: Path, classes: Sequence[str]) -> None:
        self._fixed_classes = list(classes)
        super().__init__(root, allow_empty=True)

    def find_classes(self, directory: str | Path) -> tuple[list[str], dict[str, int]]:
        found = sorted(entry.name for entry in Path(directory).iterdir() if entry.is_dir())
        unknown = sorted(set(found) - set(self._fixed_classes))
        if unknown:
            raise ValueError(
                f"{directory} has class folders {unknown} that the training folder does not have; "
                "every evaluation class must also be a training class"
            )
        return self._fixed_classes, {name: index for index, name in enumerate(self._fixed_classes)}


def _open_cifar10(root: Path, split: str, download: bool) -> Dataset:
    return datasets.CIFAR10(root, train=split == "train", download=download)


def _open_cifar100(root: Path, split: str, download: bool) -> Dataset:
    return datasets.CIFAR100(root, train=split == "train", download=download)


def _open_eurosat(root: Path, split: str, download: bool) -> Dataset:
    # EuroSAT ships one pool of images; VisionDataModule carves the train/val split out of it.
    return datasets.EuroSAT(root, download=download)


def _open_stanford_cars(root: Path, split: str, download: bool) -> Dataset:
    # torchvision raises ValueError for download=True because the original URL is gone;
    # DatasetSpec.no_download turns that into our own message before we get here.
    return datasets.StanfordCars(root, split=split)


def _open_flowers102(root: Path, split: str, download: bool) -> Dataset:
    return datasets.Flowers102(root, split=split, download=download)


def _open_fgvc_aircraft(root: Path, split: str, download: bool) -> Dataset:
    return datasets.FGVCAircraft(root, split=split, annotation_level="variant", download=download)


def _open_imagefolder(root: Path, split: str, download: bool) -> Dataset:
    train = datasets.ImageFolder(root / "train")
    if split == "train":
        return train
    return _FolderWithFixedClasses(root / split, train.classes)


DATASETS: dict[str, DatasetSpec] = {
    "cifar10": DatasetSpec(
        _open_cifar10,
        ("train", "test"),
        "train",
        "test",
        "<root>/cifar-10-batches-py/{data_batch_1..data_batch_5, test_batch, batches.meta} "
        "(the extracted cifar-10-python.tar.gz)",
    ),
    "cifar100": DatasetSpec(
        _open_cifar100,
        ("train", "test"),
        "train",
        "test",
        "<root>/cifar-100-python/{train, test, meta} (the extracted cifar-100-python.tar.gz)",
    ),
    "eurosat": DatasetSpec(
        _open_eurosat,
        ("train", "val"),
        "train",
        "val",
        "<root>/eurosat/2750/<class>/<image>.jpg (the extracted RGB EuroSAT.zip)",
    ),
    "stanford_cars": DatasetSpec(
        _open_stanford_cars,
        ("train", "test"),
        "train",
        "test",
        "<root>/stanford_cars/{devkit/cars_meta.mat, devkit/cars_train_annos.mat, cars_train/*.jpg, "
        "cars_test_annos_withlabels.mat, cars_test/*.jpg}",
        no_download="torchvision can no longer download it (the original URL is gone), so obtain a copy yourself",
    ),
    "flowers102": DatasetSpec(
        _open_flowers102,
        ("train", "val", "test"),
        "train",
        "test",
        "<root>/flowers-102/{jpg/image_00001.jpg.., imagelabels.mat, setid.mat}",
    ),
    "fgvc_aircraft": DatasetSpec(
        _open_fgvc_aircraft,
        ("train", "val", "trainval", "test"),
        "trainval",
        "test",
        "<root>/fgvc-aircraft-2013b/data/{images/<id>.jpg, variants.txt, images_variant_<split>.txt}",
    ),
    "imagefolder": DatasetSpec(
        _open_imagefolder,
        ("train", "val", "test"),
        "train",
        "val",
        "<root>/train/<class>/<image> and <root>/val/<class>/<image> (or <root>/test/<class>/<image>)",
        no_download="a local image folder has nothing to download, so check the path",
    ),
}


def build_image_transform(
    image_size: int,
    mean: Sequence[float],
    std: Sequence[float],
    *,
    train: bool,
    augment: bool = True,
    resize_crop: bool = False,
) -> v2.Compose:
    """The ViT preprocessing: train gets RandomResizedCrop + flip, evaluation a plain square resize.

    The evaluation branch mirrors ``ViTImageProcessor`` (resize to ``size x size``, rescale to
    [0, 1], normalise), so numbers match what the model saw when it was pretrained. With
    ``resize_crop`` evaluation instead resizes the shorter edge to ``image_size`` and takes the
    centre ``image_size`` square (aspect ratio kept), as the PEFT ViT example that FourierFT's
    protocol follows does; on square images both give the same pixels.
    """
    if train and augment:
        geometry: list[v2.Transform] = [
            v2.RandomResizedCrop(image_size, antialias=True),
            v2.RandomHorizontalFlip(),
        ]
    elif resize_crop:
        geometry = [v2.Resize(image_size, antialias=True), v2.CenterCrop(image_size)]
    else:
        geometry = [v2.Resize((image_size, image_size), antialias=True)]
    return v2.Compose(
        [
            v2.ToImage(),
            v2.RGB(),  # Stanford Cars and others contain a few greyscale JPEGs
            *geometry,
            v2.ToDtype(torch.float32, scale=True),
            v2.Normalize(mean=list(mean), std=list(std)),
        ]
    )


class TransformedImages(Dataset):
    """Applies a transform to an ``(image, label)`` dataset and yields model-ready dicts.

    Living in the dataset (not the LightningModule) means decoding and augmentation run in
    the DataLoader workers.
    """

    def __init__(self, images: Dataset, transform: Callable[[Any], torch.Tensor]) -> None:
        self.images = images
        self.transform = transform

    def __len__(self) -> int:
        return len(self.images)  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> dict[str, Any]:
        image, label = self.images[index]
        return {"pixel_values": self.transform(image), "labels": int(label)}


def read_preprocessor_config(name_or_path: str | Path | None) -> dict[str, Any]:
    """The image size, mean and std from a local model folder's ``preprocessor_config.json``.

    Returns only the keys it found (``image_size``, ``mean``, ``std``); a hub name or a folder
    without the file gives ``{}`` and the caller falls back to ViT's defaults.
    """
    if name_or_path is None:
        return {}
    config_file = Path(str(name_or_path)).expanduser() / "preprocessor_config.json"
    if not config_file.is_file():
        return {}
    raw = json.loads(config_file.read_text())
    found: dict[str, Any] = {}
    if raw.get("image_mean") is not None:
        found["mean"] = tuple(float(value) for value in raw["image_mean"])
    if raw.get("image_std") is not None:
        found["std"] = tuple(float(value) for value in raw["image_std"])
    size = raw.get("size")
    if isinstance(size, int):
        found["image_size"] = size
    elif isinstance(size, Mapping):
        if "height" in size and "width" in size:
            if size["height"] != size["width"]:
                raise ValueError(
                    f"{config_file} asks for {size['height']}x{size['width']} images; only square "
                    "ViT inputs are supported, set data.image_size to the model's square size"
                )
            found["image_size"] = int(size["height"])
        elif "shortest_edge" in size:
            found["image_size"] = int(size["shortest_edge"])
    return found


def read_model_image_size(name_or_path: str | Path | None, tiny: Mapping[str, Any] | None) -> int | None:
    """The input size the model's position embeddings were built for, when it can be known offline."""
    if tiny and tiny.get("image_size") is not None:
        return int(tiny["image_size"])
    if name_or_path is None:
        return None
    config_file = Path(str(name_or_path)).expanduser() / "config.json"
    if config_file.is_file():
        image_size = json.loads(config_file.read_text()).get("image_size")
        return int(image_size) if image_size is not None else None
    return None


def resolve_preprocessing(
    name_or_path: str | Path | None,
    tiny: Mapping[str, Any] | None,
    image_size: int | None,
) -> tuple[int, tuple[float, ...], tuple[float, ...]]:
    """Pick (image_size, mean, std) for a ViT: explicit size > preprocessor config > model config > 224.

    A tiny config-built model has no preprocessor file, so it uses ViT's 0.5/0.5 normalisation,
    which is also what google/vit-base-patch16-224-in21k ships.
    """
    processor = {} if tiny else read_preprocessor_config(name_or_path)
    model_size = read_model_image_size(name_or_path, tiny)
    if image_size is not None:
        image_size = int(image_size)
        if model_size is not None and image_size != model_size:
            raise ValueError(
                f"data.image_size={image_size} but the model {name_or_path or 'tiny ViT'} takes "
                f"{model_size}x{model_size} images; drop data.image_size (it follows the model) or set "
                f"it to {model_size}"
            )
    else:
        image_size = processor.get("image_size") or model_size or VIT_DEFAULT_IMAGE_SIZE
    mean = processor.get("mean", VIT_DEFAULT_MEAN)
    std = processor.get("std", VIT_DEFAULT_STD)
    return int(image_size), tuple(mean), tuple(std)


def _random_subset(dataset: Dataset, limit: int | None, seed: int) -> Dataset:
    """`limit` seeded examples (`seeded_subset`), or `dataset` itself without a limit."""
    indices = range(len(dataset))  # type: ignore[arg-type]
    if limit is None or limit >= len(indices):
        return dataset
    return Subset(dataset, seeded_subset(indices, limit, seed))


def _labels(dataset: Dataset) -> list[int] | None:
    """Every example's label from the dataset's metadata (no image decoding), or None if unknown."""
    if isinstance(dataset, Subset):
        inner = _labels(dataset.dataset)
        return None if inner is None else [inner[index] for index in dataset.indices]
    if isinstance(dataset, ConcatDataset):
        parts = [_labels(part) for part in dataset.datasets]
        return None if any(part is None for part in parts) else [label for part in parts for label in part]
    for name in ("targets", "_labels"):  # CIFAR, ImageFolder, EuroSAT / Flowers102, FGVC-Aircraft
        labels = getattr(dataset, name, None)
        if labels is not None:
            return [int(label) for label in labels]
    samples = getattr(dataset, "_samples", None)  # StanfordCars: (path, label) pairs
    if samples is not None:
        return [int(label) for _, label in samples]
    return None


def split_holdout(dataset: Dataset, fraction: float, seed: int) -> tuple[Subset, Subset]:
    """(rest, held out): a seeded ``fraction`` of ``dataset``, stratified by label when the labels
    are known from metadata (every dataset here), so the held-out set keeps the class balance."""
    from sklearn.model_selection import train_test_split

    labels = _labels(dataset)
    indices = list(range(len(dataset)))  # type: ignore[arg-type]
    try:
        rest, held_out = train_test_split(indices, test_size=fraction, random_state=seed, stratify=labels)
    except ValueError as error:  # e.g. fewer held-out examples than classes, or a class with one image
        raise ValueError(
            f"cannot hold out a stratified data.holdout_fraction={fraction} of {len(indices)} training images: "
            f"{error}. Raise data.holdout_fraction or train on more images."
        ) from error
    return Subset(dataset, sorted(rest)), Subset(dataset, sorted(held_out))


class VisionDataModule(L.LightningDataModule):
    """Train/validation loaders for one image-classification dataset.

    Every `data.*` value comes from `options` and every `task.*` value (the splits, the split seed)
    from `task`, except the input size: ``image_size``, ``mean`` and ``std`` are the model's
    preprocessing (``resolve_preprocessing``, which honours data.image_size). ``seed`` (the run's)
    draws the limited subsets. A split left null is the dataset's own.

    Standard splits: CIFAR and Stanford Cars train/test, Flowers102 train/test (``val`` also
    available), FGVC-Aircraft trainval/test, ImageFolder train/val (``test`` when there is no
    ``val``). EuroSAT has no official split: a stratified, seeded share (task.holdout_fraction) of
    each class becomes the validation set (task.split_seed fixes it across runs and seeds). ``train_split``/``val_split`` may name another split or a list of splits to concatenate.

    Model selection on held-out training data (FourierFT's ViT protocol): data.holdout_fraction holds
    out a seeded (task.split_seed), stratified share of the training split as the validation set, and
    task.test_split names the split that ``test_dataloader`` serves, evaluated once after training
    with the selected checkpoint.
    """

    def __init__(
        self,
        dataset: str,
        options: VisionDataOptions,
        task: VisionTaskOptions,
        *,
        seed: int,
        image_size: int = VIT_DEFAULT_IMAGE_SIZE,
        mean: Sequence[float] = VIT_DEFAULT_MEAN,
        std: Sequence[float] = VIT_DEFAULT_STD,
    ) -> None:
        super().__init__()
        train_split, val_split, test_split = task.train_split, task.val_split, task.test_split
        # task.holdout_fraction is EuroSAT's validation share (the other datasets have official splits
        # and do not read it); data.holdout_fraction is the held-out share of any training split
        eurosat_holdout, split_seed = task.holdout_fraction, task.split_seed
        if dataset not in DATASETS:
            raise ValueError(f"unknown vision dataset {dataset!r}; choose one of {sorted(DATASETS)}")
        if options.root is None or str(options.root) == "":
            spec = DATASETS[dataset]
            fetch = "" if spec.no_download else " (add data.download=true to fetch it there)"
            raise ValueError(f"data.root is not set for {dataset}: set data.root=<folder holding {spec.layout}>{fetch}")
        if not 0.0 < eurosat_holdout < 1.0:
            raise ValueError(f"task.holdout_fraction must be between 0 and 1, got {eurosat_holdout}")
        self.dataset = dataset
        self.spec = DATASETS[dataset]
        self.options = options
        self.root = Path(options.root).expanduser()
        self.image_size = int(image_size)
        self.mean = tuple(mean)
        self.std = tuple(std)
        self.train_splits = self._check_splits(train_split or self.spec.train_split, "train_split")
        self.val_splits = self._check_splits(val_split or self._default_val_split(), "val_split")
        train_holdout = options.holdout_fraction
        if train_holdout is not None:
            if not 0.0 < float(train_holdout) < 1.0:
                raise ValueError(f"data.holdout_fraction must be between 0 and 1 (or null), got {train_holdout}")
            if not test_split:
                raise ValueError(
                    "data.holdout_fraction validates on held-out training images, so the test split must be "
                    "named for the one evaluation after training: set task.test_split (e.g. task.test_split=test)"
                )
        self.train_holdout = None if train_holdout is None else float(train_holdout)
        self.test_splits = self._check_splits(test_split, "test_split") if test_split else None
        self.eurosat_holdout = float(eurosat_holdout)
        self.split_seed = int(split_seed)
        self.seed = int(seed)
        self._raw: dict[str, Dataset] = {}
        self.train_set: Dataset | None = None
        self.val_set: Dataset | None = None
        self.test_set: Dataset | None = None

    def _default_val_split(self) -> str:
        if self.dataset == "imagefolder" and not (self.root / "val").is_dir() and (self.root / "test").is_dir():
            return "test"
        return self.spec.val_split

    def _check_splits(self, splits: str | Sequence[str], key: str) -> tuple[str, ...]:
        names = (splits,) if isinstance(splits, str) else tuple(splits)
        unknown = [name for name in names if name not in self.spec.splits]
        if not names or unknown:
            raise ValueError(f"task.{key}={list(names)} is not valid for {self.dataset}; use {list(self.spec.splits)}")
        return names

    def _missing(self, cause: Exception) -> FileNotFoundError:
        fix = self.spec.no_download or "set data.download=true to fetch it"
        return FileNotFoundError(
            f"{self.dataset} not found under data.root={self.root}: expected {self.spec.layout}. "
            f"Point data.root= at the folder that holds it, or {fix}. ({type(cause).__name__}: {cause})"
        )

    def _open(self, split: str, download: bool = False) -> Dataset:
        """The raw (untransformed) dataset for one split, opened once and cached."""
        source = "all" if self.dataset == "eurosat" else split
        if source not in self._raw:
            # Datasets that cannot be downloaded are opened as they are; if missing, the
            # message says why data.download=true cannot help.
            download = download and self.spec.no_download is None
            try:
                self._raw[source] = self.spec.open_split(self.root, source, download)
            except (RuntimeError, FileNotFoundError) as error:
                raise self._missing(error) from error
        if self.dataset == "eurosat":
            return self._eurosat_part(self._raw["all"], split)
        return self._raw[source]

    def _eurosat_part(self, pool: Dataset, split: str) -> Dataset:
        from sklearn.model_selection import train_test_split

        targets = pool.targets  # type: ignore[attr-defined]
        train_indices, val_indices = train_test_split(
            list(range(len(targets))),
            test_size=self.eurosat_holdout,
            random_state=self.split_seed,
            stratify=targets,
        )
        return Subset(pool, sorted(train_indices if split == "train" else val_indices))

    def _base(self, split: str) -> Dataset:
        """The dataset object that carries ``classes`` (a Subset hides it)."""
        opened = self._open(split)
        return opened.dataset if isinstance(opened, Subset) else opened

    @property
    def class_names(self) -> list[str]:
        """Class names in label order, read from the training split's metadata."""
        return list(self._base(self.train_splits[0]).classes)  # type: ignore[attr-defined]

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def prepare_data(self) -> None:
        if self.options.download:
            for split in {*self.train_splits, *self.val_splits, *(self.test_splits or ())}:
                self._open(split, download=True)

    def _combined(self, splits: tuple[str, ...]) -> Dataset:
        parts = [self._open(split) for split in splits]
        return parts[0] if len(parts) == 1 else ConcatDataset(parts)

    def setup(self, stage: str | None = None) -> None:
        options = self.options
        train_transform = build_image_transform(
            self.image_size, self.mean, self.std, train=True, augment=options.augment
        )
        eval_transform = build_image_transform(
            self.image_size, self.mean, self.std, train=False, resize_crop=options.eval_resize_crop
        )
        train_pool: Dataset = self._combined(self.train_splits)
        if self.train_holdout is not None:
            # the held-out share is drawn before train_limit, so a limit never moves it
            train_pool, val_pool = split_holdout(train_pool, self.train_holdout, self.split_seed)
        else:
            val_pool = self._combined(self.val_splits)
        if stage in (None, "fit") and self.train_set is None:
            train = _random_subset(train_pool, options.train_limit, self.seed)
            self.train_set = TransformedImages(train, train_transform)
        if self.val_set is None:
            val = _random_subset(val_pool, options.val_limit, self.seed)
            self.val_set = TransformedImages(val, eval_transform)
        if stage in (None, "test") and self.test_set is None and self.test_splits is not None:
            test = _random_subset(self._combined(self.test_splits), options.val_limit, self.seed)
            self.test_set = TransformedImages(test, eval_transform)

    def _eval_loader(self, dataset: Dataset | None) -> DataLoader:
        if dataset is None:
            raise RuntimeError("VisionDataModule.setup() must run before asking for a dataloader")
        return evaluation_loader(
            dataset,
            self.options.eval_batch_size,
            self.trainer,
            num_workers=self.options.num_workers,
            pin_memory=torch.cuda.is_available(),
        )

    def train_dataloader(self) -> DataLoader:
        if self.train_set is None:
            raise RuntimeError("VisionDataModule.setup() must run before asking for a dataloader")
        return training_loader(
            self.train_set,
            self.options.batch_size,
            num_workers=self.options.num_workers,
            epoch_source=trainer_epoch(self),
            pin_memory=torch.cuda.is_available(),
        )

    def val_dataloader(self) -> DataLoader:
        return self._eval_loader(self.val_set)

    def test_dataloader(self) -> DataLoader:
        if self.test_splits is None:
            raise RuntimeError("no test split: set task.test_split to evaluate one after training")
        return self._eval_loader(self.test_set)
