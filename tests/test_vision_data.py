"""VisionDataModule against each torchvision dataset class, on tiny fakes in the real on-disk formats.

Every fake image is one solid grey level chosen from its label, so a batch can prove that each
image arrived with its own label (not just that shapes are right).
"""

from __future__ import annotations

import dataclasses
import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import scipy.io
import torch
from PIL import Image
from torchvision import datasets

from loldu_lightning.data.vision import (
    DATASETS,
    VisionDataModule,
    build_image_transform,
    resolve_preprocessing,
)
from loldu_lightning.options import VisionDataOptions, VisionTaskOptions

IMAGE_SIZE = 16
DATA_OPTIONS = {option.name for option in dataclasses.fields(VisionDataOptions)}


def grey_level(label: int) -> int:
    return 20 + 23 * (label % 10)


def normalised(label: int) -> float:
    """What a solid image of ``grey_level(label)`` becomes after ViT's 0.5/0.5 normalisation."""
    return (grey_level(label) / 255.0 - 0.5) / 0.5


def write_jpeg(path: Path, label: int, size: tuple[int, int] = (40, 30)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, (grey_level(label),) * 3).save(path, quality=100)


def assert_batch_matches_labels(batch: dict[str, torch.Tensor], num_classes: int) -> None:
    pixels, labels = batch["pixel_values"], batch["labels"]
    assert pixels.dtype == torch.float32 and pixels.shape[1:] == (3, IMAGE_SIZE, IMAGE_SIZE)
    assert labels.dtype == torch.int64 and labels.shape == (pixels.shape[0],)
    assert int(labels.min()) >= 0 and int(labels.max()) < num_classes
    for image, label in zip(pixels, labels.tolist(), strict=True):
        assert image.mean().item() == pytest.approx(normalised(label), abs=0.03)


def eval_batch(module: VisionDataModule) -> dict[str, torch.Tensor]:
    module.setup("fit")
    return next(iter(module.val_dataloader()))


TASK_OPTIONS = ("train_split", "val_split", "test_split", "split_seed")


def make_module(name: str, root: Path, **overrides) -> VisionDataModule:
    """`name` under `root`: overrides named like a `data.*` option set the data options, `eurosat_holdout`
    and those named like a `task.*` split option the task options (splits left null: the dataset's own),
    the rest the constructor."""
    data = {key: overrides.pop(key) for key in list(overrides) if key in DATA_OPTIONS}
    data = {"batch_size": 4, **data}
    options = VisionDataOptions(root=str(root), **{"eval_batch_size": data["batch_size"], **data})
    task = {key: overrides.pop(key) for key in list(overrides) if key in TASK_OPTIONS}
    if "eurosat_holdout" in overrides:
        task["holdout_fraction"] = overrides.pop("eurosat_holdout")
    task = VisionTaskOptions(family="vision", name=name, **{"train_split": None, "val_split": None, **task})
    return VisionDataModule(name, options, task, **{"seed": 0, "image_size": IMAGE_SIZE, **overrides})


# --- fakes in each torchvision format ------------------------------------------------------------


def fake_cifar(root: Path, monkeypatch: pytest.MonkeyPatch, *, hundred: bool) -> list[str]:
    """CIFAR's pickled batches; the md5 checks are switched off because the bytes are ours."""
    cls = datasets.CIFAR100 if hundred else datasets.CIFAR10
    classes = [f"class_{index}" for index in range(100 if hundred else 10)]
    folder = root / cls.base_folder
    folder.mkdir(parents=True)
    label_key = "fine_labels" if hundred else "labels"
    for file_name, _ in cls.train_list + cls.test_list:
        labels = [index % len(classes) for index in range(6)]
        pixels = np.stack([np.full(3 * 32 * 32, grey_level(label), dtype=np.uint8) for label in labels])
        with open(folder / file_name, "wb") as handle:
            pickle.dump({"data": pixels, label_key: labels}, handle)
    with open(folder / cls.meta["filename"], "wb") as handle:
        pickle.dump({cls.meta["key"]: classes}, handle)
    monkeypatch.setattr(cls, "train_list", [[name, None] for name, _ in cls.train_list])
    monkeypatch.setattr(cls, "test_list", [[name, None] for name, _ in cls.test_list])
    monkeypatch.setattr(cls, "meta", {**cls.meta, "md5": None})
    return classes


def fake_eurosat(root: Path, per_class: int = 5) -> list[str]:
    classes = ["AnnualCrop", "Forest", "River"]
    for label, name in enumerate(classes):
        for index in range(per_class):
            write_jpeg(root / "eurosat" / "2750" / name / f"{name}_{index}.jpg", label, (64, 64))
    return classes


def fake_stanford_cars(root: Path) -> list[str]:
    """The devkit .mat files (struct arrays with 1-based ``class``) plus cars_train/ and cars_test/."""
    base = root / "stanford_cars"
    classes = ["AM General Hummer SUV 2000", "Acura RL Sedan 2012", "Audi R8 Coupe 2012"]
    (base / "devkit").mkdir(parents=True)
    scipy.io.savemat(base / "devkit" / "cars_meta.mat", {"class_names": np.array(classes, dtype=object)})
    for folder, annotations_file in (
        ("cars_train", base / "devkit" / "cars_train_annos.mat"),
        ("cars_test", base / "cars_test_annos_withlabels.mat"),
    ):
        records = []
        for index in range(6):
            label = index % len(classes)
            file_name = f"{index + 1:05d}.jpg"
            write_jpeg(base / folder / file_name, label)
            records.append((0, 0, 40, 30, label + 1, file_name))
        annotations = np.array(
            records,
            dtype=[(key, object) for key in ("bbox_x1", "bbox_y1", "bbox_x2", "bbox_y2", "class", "fname")],
        )
        scipy.io.savemat(annotations_file, {"annotations": annotations})
    return classes


def fake_flowers102(root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """jpg/image_XXXXX.jpg, imagelabels.mat (1-based labels) and setid.mat (1-based image ids)."""
    base = root / "flowers-102"
    labels = [1, 2, 3, 50, 102, 7, 8, 9, 10]
    for image_id, label in enumerate(labels, start=1):
        write_jpeg(base / "jpg" / f"image_{image_id:05d}.jpg", label - 1)
    scipy.io.savemat(base / "imagelabels.mat", {"labels": np.array([labels], dtype=np.uint8)})
    scipy.io.savemat(
        base / "setid.mat",
        {"trnid": np.array([[1, 2, 3]]), "valid": np.array([[4, 5]]), "tstid": np.array([[6, 7, 8, 9]])},
    )
    unchecked = {key: (name, None) for key, (name, _) in datasets.Flowers102._file_dict.items()}
    monkeypatch.setattr(datasets.Flowers102, "_file_dict", unchecked)


def fake_fgvc_aircraft(root: Path) -> list[str]:
    """data/images/<id>.jpg, variants.txt and images_variant_<split>.txt ('<id> <variant name>')."""
    data = root / "fgvc-aircraft-2013b" / "data"
    classes = ["707-320", "Boeing 717", "A320"]
    data.mkdir(parents=True)
    (data / "variants.txt").write_text("\n".join(classes) + "\n")
    for split, first_id in (("trainval", 1000), ("test", 2000), ("train", 3000), ("val", 4000)):
        lines = []
        for index in range(5):
            label = index % len(classes)
            image_id = f"{first_id + index:07d}"
            write_jpeg(data / "images" / f"{image_id}.jpg", label)
            lines.append(f"{image_id} {classes[label]}")
        (data / f"images_variant_{split}.txt").write_text("\n".join(lines) + "\n")
    return classes


def fake_imagefolder(root: Path, train_classes: list[str], val_classes: list[str], val_dir: str = "val") -> None:
    for split, names in (("train", train_classes), (val_dir, val_classes)):
        for name in names:
            label = train_classes.index(name) if name in train_classes else 9
            for index in range(2):
                write_jpeg(root / split / name / f"{index}.png", label)


# --- one test per torchvision class --------------------------------------------------------------


@pytest.mark.parametrize("hundred", [False, True], ids=["cifar10", "cifar100"])
def test_cifar_batches(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, hundred: bool) -> None:
    classes = fake_cifar(tmp_path, monkeypatch, hundred=hundred)
    module = make_module("cifar100" if hundred else "cifar10", tmp_path)
    assert module.class_names == classes and module.num_classes == len(classes)
    module.setup("fit")
    assert len(module.train_set) == 6 * (1 if hundred else 5) and len(module.val_set) == 6
    assert_batch_matches_labels(next(iter(module.val_dataloader())), len(classes))
    train_batch = next(iter(module.train_dataloader()))
    assert train_batch["pixel_values"].shape == (4, 3, IMAGE_SIZE, IMAGE_SIZE)


def test_eurosat_split_is_stratified_disjoint_and_seeded(tmp_path: Path) -> None:
    classes = fake_eurosat(tmp_path)
    module = make_module("eurosat", tmp_path, eurosat_holdout=0.2, split_seed=7)
    assert module.class_names == classes
    module.setup("fit")
    train_indices = set(module.train_set.images.indices)
    val_indices = set(module.val_set.images.indices)
    assert not train_indices & val_indices and len(train_indices | val_indices) == 15
    pool = module.train_set.images.dataset
    assert sorted(pool.targets[index] for index in val_indices) == [0, 1, 2]  # one per class
    again = make_module("eurosat", tmp_path, eurosat_holdout=0.2, split_seed=7)
    again.setup("fit")
    assert set(again.val_set.images.indices) == val_indices
    assert_batch_matches_labels(next(iter(module.val_dataloader())), 3)


def test_eurosat_train_batch(tmp_path: Path) -> None:
    fake_eurosat(tmp_path)
    module = make_module("eurosat", tmp_path, augment=False)
    module.setup("fit")
    assert_batch_matches_labels(next(iter(module.train_dataloader())), 3)


def test_stanford_cars_reads_devkit_mat_files(tmp_path: Path) -> None:
    classes = fake_stanford_cars(tmp_path)
    module = make_module("stanford_cars", tmp_path)
    assert module.class_names == classes
    assert_batch_matches_labels(eval_batch(module), len(classes))


def test_flowers102_reads_mat_files_and_has_102_classes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake_flowers102(tmp_path, monkeypatch)
    module = make_module("flowers102", tmp_path)
    assert module.num_classes == 102 and module.class_names[0] == "pink primrose"
    batch = eval_batch(module)
    assert len(module.train_set) == 3 and len(module.val_set) == 4  # train / test splits
    assert batch["labels"].tolist() == [6, 7, 8, 9]  # 1-based labels 7..10 of images 6..9
    assert_batch_matches_labels(batch, 102)


def test_flowers102_split_lists_concatenate(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake_flowers102(tmp_path, monkeypatch)
    module = make_module("flowers102", tmp_path, train_split=["train", "val"])
    module.setup("fit")
    assert len(module.train_set) == 5


def test_fgvc_aircraft_trainval_and_test(tmp_path: Path) -> None:
    classes = fake_fgvc_aircraft(tmp_path)
    module = make_module("fgvc_aircraft", tmp_path)
    assert module.class_names == classes
    batch = eval_batch(module)
    assert batch["labels"].tolist() == [0, 1, 2, 0]
    assert_batch_matches_labels(batch, 3)


def test_imagefolder_keeps_training_label_order_when_val_lacks_a_class(tmp_path: Path) -> None:
    fake_imagefolder(tmp_path, ["ant", "bee", "cat"], ["bee", "cat"], val_dir="test")
    module = make_module("imagefolder", tmp_path)
    batch = eval_batch(module)
    assert module.class_names == ["ant", "bee", "cat"]
    assert sorted(batch["labels"].tolist()) == [1, 1, 2, 2]
    assert_batch_matches_labels(batch, 3)


def test_imagefolder_rejects_val_classes_unknown_to_training(tmp_path: Path) -> None:
    fake_imagefolder(tmp_path, ["ant", "bee"], ["ant", "wasp"])
    with pytest.raises(ValueError, match="wasp"):
        make_module("imagefolder", tmp_path).setup("fit")


def test_imagefolder_on_real_cifar10_subset(shared_data: Path) -> None:
    module = make_module("imagefolder", shared_data / "cifar10_subset", train_limit=24, val_limit=8, batch_size=8)
    assert module.num_classes == 10 and module.class_names[0] == "airplane"
    module.setup("fit")
    assert len(module.train_set) == 24 and len(module.val_set) == 8
    batch = next(iter(module.train_dataloader()))
    assert batch["pixel_values"].shape == (8, 3, IMAGE_SIZE, IMAGE_SIZE)
    # A seeded random subset, not the first (sorted, single-class) files.
    assert len(set(batch["labels"].tolist())) > 1


# --- errors ---------------------------------------------------------------------------------------


EXPECTED_IN_MESSAGE = {
    "cifar10": "cifar-10-batches-py",
    "cifar100": "cifar-100-python",
    "eurosat": "eurosat/2750",
    "stanford_cars": "cars_train_annos.mat",
    "flowers102": "setid.mat",
    "fgvc_aircraft": "images_variant_",
    "imagefolder": "<root>/train/<class>",
}


@pytest.mark.parametrize("name", sorted(DATASETS))
def test_missing_dataset_names_layout_and_fix(tmp_path: Path, name: str) -> None:
    module = make_module(name, tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError) as caught:
        module.setup("fit")
    message = str(caught.value)
    assert EXPECTED_IN_MESSAGE[name] in message and "data.root=" in message
    assert (DATASETS[name].no_download or "data.download=true") in message


def test_stanford_cars_download_request_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="can no longer download"):
        make_module("stanford_cars", tmp_path, download=True).prepare_data()


def test_download_flag_is_harmless_where_files_exist_but_cannot_be_fetched(tmp_path: Path) -> None:
    fake_stanford_cars(tmp_path)
    module = make_module("stanford_cars", tmp_path, download=True)
    module.prepare_data()
    assert module.num_classes == 3


def test_bad_options_are_value_errors(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown vision dataset"):
        make_module("mnist", tmp_path)
    with pytest.raises(ValueError, match="data.root"):
        VisionDataModule(
            "cifar10", VisionDataOptions(root=None), VisionTaskOptions(family="vision", name="cifar10"), seed=0
        )
    with pytest.raises(ValueError, match="val_split"):
        make_module("cifar10", tmp_path, val_split="val")


# --- preprocessing -------------------------------------------------------------------------------


def test_transforms_resize_to_square_and_normalise() -> None:
    image = Image.new("RGB", (50, 20), (255, 255, 255))
    for train in (True, False):
        pixels = build_image_transform(24, (0.5,) * 3, (0.5,) * 3, train=train)(image)
        assert pixels.shape == (3, 24, 24)
        assert torch.allclose(pixels, torch.ones_like(pixels))
    grey = Image.new("L", (10, 10), 0)
    assert build_image_transform(8, (0.5,) * 3, (0.5,) * 3, train=False)(grey).shape == (3, 8, 8)


def test_preprocessing_follows_model_folder(tmp_path: Path) -> None:
    (tmp_path / "preprocessor_config.json").write_text(
        json.dumps({"image_mean": [0.1, 0.2, 0.3], "image_std": [0.4, 0.5, 0.6], "size": {"height": 32, "width": 32}})
    )
    (tmp_path / "config.json").write_text(json.dumps({"image_size": 32}))
    assert resolve_preprocessing(tmp_path, None, None) == (32, (0.1, 0.2, 0.3), (0.4, 0.5, 0.6))
    with pytest.raises(ValueError, match="data.image_size=64"):
        resolve_preprocessing(tmp_path, None, 64)


def test_preprocessing_defaults_for_hub_names_and_tiny_models() -> None:
    assert resolve_preprocessing("google/vit-base-patch16-224-in21k", None, None) == (224, (0.5,) * 3, (0.5,) * 3)
    assert resolve_preprocessing(None, {"image_size": 32}, None)[0] == 32
    with pytest.raises(ValueError, match="takes 32x32"):
        resolve_preprocessing(None, {"image_size": 32}, 224)
