"""DualPrompt fidelity: per-sample E-prompt choice at test (no batch vote, an image's output is its own), the task's
own E-prompt and key at train with gradient to nothing of another task, and a complete record with its protocol."""
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from conftest import MICRO, run_config

from suite.errors import ConfigError
from suite.methods.base import RunContext
from suite.methods.dualprompt import DualPrompt
from suite.models import create_model_and_transforms


def _setup(n_tasks: int = 3, **options):
    torch.manual_seed(0)
    bb = create_model_and_transforms(MICRO)
    # U(-1, 1) prompts (the port's init): E-prompts that differ clearly, so a wrong choice shows in the output
    method = DualPrompt(**{"init": "uniform-1", **options})
    ctx = RunContext(backbone=bb, pet=None, device=torch.device("cpu"), sequence=SimpleNamespace(tasks=[0] * n_tasks))
    method.setup(ctx)
    return bb, method, ctx


def _images(n: int, seed: int) -> torch.Tensor:
    return torch.randn(n, 3, 16, 16, generator=torch.Generator().manual_seed(seed))


def _point_keys(method: DualPrompt, targets: dict[int, torch.Tensor]) -> None:
    """Key i := the query ``targets[i]`` (cosine 1: that image's certain choice); the other keys point away."""
    with torch.no_grad():
        away = -sum(targets.values())
        for i, k in enumerate(method.keys):
            k.copy_(targets[i] if i in targets else away + 0.01 * i)


def _queries(bb, method, images):
    return method.query(bb.model.visual, images)


def test_fidelity_per_sample_choice_and_batch_independence():
    bb, method, _ = _setup()
    a, c = _images(1, 1), _images(1, 2)
    qa, qc = _queries(bb, method, torch.cat([a, c]))
    _point_keys(method, {0: qa, 1: qc})
    with torch.no_grad():
        alone_a, alone_c = bb.encode_image(a), bb.encode_image(c)
        assert method.last_selection.tolist() == [1]
        # a batch whose majority picks E-prompt 0: a batch vote would give c E-prompt 0 too
        batch = bb.encode_image(torch.cat([a, a, c]))
        assert method.last_selection.tolist() == [0, 0, 1], "each image must pick its own nearest key"
        torch.testing.assert_close(batch[2:], alone_c, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(batch[:1], alone_a, rtol=1e-5, atol=1e-5)
        # c's output under E-prompt 0 (what the port's batchwise_prompt=True gives it here) is another output
        _point_keys(method, {0: qc, 1: qa})
        as_if_voted = bb.encode_image(c)
        assert method.last_selection.tolist() == [0]
        assert (as_if_voted - alone_c).abs().max() > 1e-3, "E-prompts 0 and 1 must change the output differently"
        # and an image's output does not depend on the rest of the batch
        _point_keys(method, {0: qa, 1: qc})
        other = bb.encode_image(torch.cat([_images(5, 3), c, _images(2, 4)]))
        torch.testing.assert_close(other[5:6], alone_c, rtol=1e-5, atol=1e-5)


def test_fidelity_query_is_the_frozen_model():
    bb, method, _ = _setup()
    x = _images(4, 5)
    with torch.no_grad():
        q = _queries(bb, method, x)
        method._hook.remove()
        for layer in method.g_layers + method.e_layers:
            layer.enabled = False
        plain = F.normalize(bb.encode_image(x), dim=-1)
    torch.testing.assert_close(q, plain, rtol=0, atol=0)


def test_fidelity_training_task_t_routes_its_own_prompt_and_grads_only_its_own():
    bb, method, ctx = _setup(n_tasks=3)
    t = 1
    x = _images(6, 7)
    # every query nearest key 0: key matching would pick E-prompt 0; training task 1 must use E-prompt 1 anyway
    q = _queries(bb, method, x)
    _point_keys(method, {0: q.mean(0)})
    with torch.no_grad():
        for layer in method.e_layers:
            layer.prompts[t].add_(0.5)  # differs from E-prompt 0 until before_task copies it (shared_prompt_pool)
    ctx.task_index = t
    method.before_task(ctx, t)
    for layer in method.e_layers:
        torch.testing.assert_close(layer.prompts[t], layer.prompts[t - 1], rtol=0, atol=0)
    with torch.no_grad():
        for layer in method.e_layers:
            layer.prompts[t].add_(0.5)
    params = method.trainable(ctx)
    g_params = [p for layer in method.g_layers for p in layer.prompts]
    own = g_params + [layer.prompts[t] for layer in method.e_layers] + [method.keys[t]]
    assert {id(p) for p in params} == {id(p) for p in own}
    target = torch.randn(6, bb.model.visual.output_dim, generator=torch.Generator().manual_seed(8))
    task_losses = []

    def task_loss(batch):
        task_losses.append(((bb.encode_image(batch["images"]) - target) ** 2).mean())
        return task_losses[-1]

    ctx.task_loss = task_loss
    loss = method.loss(ctx, {"images": x})
    assert method.last_selection.tolist() == [t] * 6, "training task t must use E-prompt t for every image"
    pull = (1 - q @ F.normalize(method.keys[t].detach(), dim=-1)).mean()
    torch.testing.assert_close(loss.detach() - task_losses[0].detach(), 1.0 * pull, rtol=1e-5, atol=1e-6)
    loss.backward()
    for p in own:
        assert p.grad is not None and p.grad.abs().sum() > 0, "G-prompt, E-prompt t and key t must learn"
    others = [layer.prompts[i] for layer in method.e_layers for i in range(len(layer.prompts)) if i != t] + \
             [k for i, k in enumerate(method.keys) if i != t]
    for p in others:
        assert p.grad is None or not p.grad.any(), "another task's E-prompt or key received gradient"
    # after the loss, test-time routing is back to key matching (nearest key 0 for these images)
    with torch.no_grad():
        bb.encode_image(x)
    assert method.last_selection.tolist() == [0] * 6


def test_fidelity_block_mapping_state_and_refusals():
    assert DualPrompt.block_specs(12) == ("0-1", "2-4")  # the official blocks on ViT-B/16
    assert DualPrompt.block_specs(4) == ("0", "1")  # the tiny CLIP: first 2/12 and next 3/12 of the depth
    bb, method, ctx = _setup()
    attns = [site.attn for site in bb.blocks("vision")]
    assert [len(a.prefixes) for a in attns] == [1, 1]
    kv = method.e_layers[0].prompts[0]
    assert kv.shape == (2, 5, attns[1].num_heads, attns[1].head_dim)  # key half, value half, per head
    state = method.state_dict()
    other = _setup()[1]
    other.load_state_dict(state)
    for a, b in zip(other.state_dict()["e"], state["e"]):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    with pytest.raises(ConfigError, match="pool holds 2"):
        _setup(n_tasks=3, pool=2)
    with pytest.raises(ConfigError, match="dualprompt: e_layers"):
        DualPrompt(e_layers="2-x")


@pytest.mark.parametrize("track", ["class-incremental", "cross-modal"])
def test_fidelity_end_to_end_record(seq_file, tmp_path, track):
    from suite.engine.runner import run

    rec = run(run_config(seq_file(track=track), tmp_path, method="dualprompt", pet=None))
    assert rec["status"] == "complete"
    protocol = rec["method"]["protocol"]
    assert protocol["routing"] == "per-sample" and protocol["extra_forward"] == 1
    assert protocol["task_id_train"] is True and protocol["task_id_test"] is False and protocol["memory"] == 0
    assert rec["efficiency"]["e_prompts_trained"] == 2 and rec["efficiency"]["prompt_parameters"] > 0

