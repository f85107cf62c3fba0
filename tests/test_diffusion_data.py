"""Subject photos, class lookup and DreamBooth's prompt lists (no model needed)."""

from __future__ import annotations

import pytest
import torch

from loldu_lightning.data.diffusion import (
    SubjectDataset,
    collate_subject,
    evaluation_prompts,
    image_transform,
    list_images,
    read_prompt_lists,
    read_subject_classes,
    resolve_subject,
)
from tests.diffusion_helpers import save_image

SUBJECTS = {"dog": "dog", "red_cartoon": "cartoon", "vase": "vase", "teapot": "teapot", "berry_bowl": "bowl"}


def test_the_real_dreambooth_table_gives_every_subject_its_class(shared_data):
    root = shared_data / "dreambooth"
    classes = read_subject_classes(root / "prompts_and_classes.txt")
    assert len(classes) == 30 and all(classes[s] == c for s, c in SUBJECTS.items())
    for subject, class_name in SUBJECTS.items():
        folder, resolved = resolve_subject(None, str(root), subject, None)
        assert resolved == class_name and 4 <= len(list_images(folder, "instance", "data.instance_dir")) <= 6


def test_prompt_lists_follow_dreambooth_live_and_object_split(shared_data):
    path = shared_data / "dreambooth" / "prompts_and_classes.txt"
    lists = read_prompt_lists(path)
    assert len(lists["objects"]) == len(lists["live"]) == 25
    assert "a {token} {class} wearing a santa hat" in evaluation_prompts(path, "dog")
    assert "a {token} {class} floating in an ocean of milk" in evaluation_prompts(path, "teapot")


def test_subject_without_class_or_folder_names_the_keys(tmp_path):
    with pytest.raises(ValueError, match=r"data\.instance_dir=.*data\.root=.*data\.subject="):
        resolve_subject(None, None, None, None)
    with pytest.raises(ValueError, match=r"No class name for subject 'mine'.*data\.class_name="):
        resolve_subject(str(tmp_path / "mine"), None, None, None)
    with pytest.raises(FileNotFoundError, match=r"does not exist; set data\.instance_dir"):
        list_images(tmp_path / "absent", "instance (subject photo)", "data.instance_dir")


def test_dataset_cycles_instances_over_the_class_images_and_collates_them_second(tmp_path):
    instance = [save_image(tmp_path / "i" / f"{k}.png", (200, 10 * k, 0)) for k in range(2)]
    classes = [save_image(tmp_path / "c" / f"{k}.png", (0, 10 * k, 200)) for k in range(5)]
    ids_a, ids_b = torch.full((77,), 1), torch.full((77,), 2)
    dataset = SubjectDataset(instance, ids_a, image_transform(16, True, False), classes, ids_b)
    assert len(dataset) == 5  # max(instance, class) as in DreamBooth
    batch = collate_subject([dataset[0], dataset[3]])
    assert batch["pixel_values"].shape == (4, 3, 16, 16) and batch["is_prior"].tolist() == [False, False, True, True]
    assert batch["input_ids"][:2].eq(1).all() and batch["input_ids"][2:].eq(2).all()
    assert batch["pixel_values"].min() >= -1 and batch["pixel_values"].max() <= 1
    # instance 3 % 2 = 1: the second instance photo (its green channel is 10 -> (10/255)*2-1)
    assert batch["pixel_values"][1, 1, 0, 0] == pytest.approx(10 / 255 * 2 - 1, abs=1e-6)
