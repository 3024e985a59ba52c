"""Per-task PET branches (suite.pet.base): one mechanism that InfLoRA, O-LoRA and SD-LoRA share."""
from __future__ import annotations

import dataclasses

import pytest
import torch

from suite.engine.loop import TrainingFailed
from suite.engine.runner import Runner, run
from suite.errors import ConfigError
from suite.methods.branching import PerTaskBranches
from suite.models import create_model_and_transforms
from suite.pet import attach_pet
from tests.conftest import MICRO, run_config


class Grow(PerTaskBranches):
    """The bare mechanism: a new LoRA branch per task, nothing else."""

    name = "grow"


def lora_layer():
    torch.manual_seed(0)
    backbone = create_model_and_transforms(MICRO)
    pet = attach_pet(backbone, "lora", rank=2)
    return backbone, pet, pet.pet_layers[0]


def test_open_branch_freezes_the_old_ones_and_sums_every_branch():
    _, pet, layer = lora_layer()
    with torch.no_grad():
        layer.B.normal_()
    first = layer.branch_list()[0]
    new = pet.open_branch()[0]
    assert pet.branch_count() == 2 and not first["A"].requires_grad and not first["B"].requires_grad
    assert new["A"].requires_grad and new["B"].requires_grad and not bool(new["B"].any())  # B = 0: starts as no change
    with torch.no_grad():
        new["B"].normal_()
    x = torch.randn(3, 5, layer.base.in_features)
    want = layer.base(x) + layer.scale * (x @ first["A"].T @ first["B"].T + x @ new["A"].T @ new["B"].T)
    with torch.enable_grad():
        trained = layer(x)
    with torch.no_grad():
        merged = layer(x)  # evaluation: one product with the merged weight
    torch.testing.assert_close(trained, want, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(merged, want, rtol=1e-5, atol=1e-5)
    trained.sum().backward()
    assert first["B"].grad is None and new["B"].grad is not None


def test_branch_scales_multiply_each_branch():
    _, pet, layer = lora_layer()
    pet.open_branch()
    branches = layer.branch_list()
    with torch.no_grad():
        for br in branches:
            br["B"].normal_()
    layer.branch_scales = lambda lay: [torch.tensor(0.0), torch.tensor(2.0)]
    x = torch.randn(4, layer.base.in_features)
    want = layer.base(x) + 2.0 * (x @ branches[1]["A"].T @ branches[1]["B"].T)
    torch.testing.assert_close(layer(x), want, rtol=1e-5, atol=1e-5)


def test_a_pet_without_branches_is_refused_in_one_line(seq_file, tmp_path):
    """Before any model or data is loaded (the method declares ``pets``); ``setup`` refuses it too, for a subclass
    that widens ``pets``."""
    with pytest.raises(ConfigError, match="method grow runs on --pet lora, not vpt") as err:
        run(run_config(seq_file(), tmp_path, pet="vpt"), method=Grow())
    assert "\n" not in str(err.value)


def test_branches_grow_per_task_and_the_record_states_their_size(seq_file, tmp_path):
    rec = run(run_config(seq_file(n_tasks=3), tmp_path, training={"iterations": 2}), method=Grow())
    sizes = [s["method"] for s in rec["steps"]]
    assert [s["branches"] for s in sizes] == [1, 2, 3]
    per_branch = sizes[0]["pet_parameters"]
    assert [s["pet_parameters"] for s in sizes] == [per_branch, 2 * per_branch, 3 * per_branch]
    assert [s["pet_bytes"] for s in sizes] == [4 * n for n in (per_branch, 2 * per_branch, 3 * per_branch)]
    assert all(s["trainable_now"] == per_branch for s in sizes)  # only the open branch trains
    assert rec["efficiency"]["branches"] == 3


def test_resume_rebuilds_the_branches_and_gives_the_uninterrupted_record(seq_file, tmp_path):
    seq = seq_file(n_tasks=3)
    whole = run(run_config(seq, tmp_path / "a", training={"iterations": 2}), method=Grow())

    class StopAtThird(Grow):
        def before_task(self, ctx, t):
            if t == 2:
                raise RuntimeError("stopped")
            super().before_task(ctx, t)

    cfg = run_config(seq, tmp_path / "b", training={"iterations": 2})
    with pytest.raises(TrainingFailed):
        Runner(cfg, method=StopAtThird()).run()
    ckpt = torch.load(tmp_path / "b" / "runs" / cfg.run_id() / "checkpoint.pt", weights_only=True)
    assert ckpt["branches"] == 2 and any(".branches.0.A" in k for k in ckpt["pet"])
    resumed = Runner(dataclasses.replace(cfg, resume=True), method=Grow()).run()
    assert resumed["matrix"] == whole["matrix"]
    assert [s["final_loss"] for s in resumed["steps"]] == [s["final_loss"] for s in whole["steps"]]


def test_setup_refuses_a_pet_without_branches_even_when_pets_is_widened(seq_file, tmp_path):
    class Anywhere(Grow):
        name = "anywhere"
        pets = None

    with pytest.raises(ConfigError, match="anywhere grows a LoRA branch per task: give --pet lora"):
        run(run_config(seq_file(), tmp_path, pet="vpt"), method=Anywhere())
