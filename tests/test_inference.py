"""Method-owned inference (suite.models.inference): the evaluator routes every measure through a method's
Inference — tasks, control sets, the POPE probe, hijacking and retrieval — and routing is a property of one image."""
import contextlib
import math

import pytest
import torch

from suite.methods.base import Method
from suite.models.inference import FROZEN, Inference, Routed
from tests.conftest import run_config


@contextlib.contextmanager
def switched_off(pet):
    """LoRA with every factor at zero adds nothing: the frozen model."""
    saved = [p.detach().clone() for p in pet.parameters()]
    with torch.no_grad():
        for p in pet.parameters():
            p.zero_()
    try:
        yield
    finally:
        with torch.no_grad():
            for p, v in zip(pet.parameters(), saved):
                p.copy_(v)


class Logging(Inference):
    """Routes an image by the sign of its mean pixel: bright images to the model as it stands (0), dark ones to the
    frozen model (the PET switched off); writes down every use."""

    def __init__(self, pet):
        self.pet, self.used, self.scored = pet, [], []

    def route(self, images):
        return torch.where(images.flatten(1).mean(1) > 0, 0, FROZEN)

    def using(self, route):
        self.used.append(route)
        return switched_off(self.pet) if route == FROZEN else super().using(route)

    def scores(self, images, text, names):
        self.scored.append(None if names is None else tuple(names))
        return super().scores(images, text, names)


class Routing(Method):
    name = "routing-probe"
    PROTOCOL = {"routing": "per-sample"}

    def inference(self, ctx):
        self.last = Logging(ctx.pet)
        return self.last


def _run(seq, tmp_path, method):
    from suite.engine.runner import Runner

    r = Runner(run_config(seq, tmp_path, training={"iterations": 1}), method=method)
    return r, r.run()


def test_every_measure_goes_through_the_method_inference(seq_file, tmp_path):
    m = Routing()
    _, rec = _run(seq_file(), tmp_path, m)
    scored = set(m.last.scored)
    assert ("red star", "blue heart") in {tuple(s[:2]) for s in scored if s}  # the control set's head
    assert any(s and "red circle" in s and "yellow star" in s for s in scored)  # the task-agnostic head
    assert set(m.last.used) == {0, FROZEN}  # images and texts encoded under both routes
    assert rec["method"]["protocol"]["routing"] == "per-sample"
    assert all(math.isfinite(a) for step in rec["steps"] for a in step["accuracy"])


def test_retrieval_goes_through_the_method_inference(seq_file, tmp_path):
    m = Routing()
    _run(seq_file(track="cross-modal"), tmp_path, m)
    assert None in m.last.scored  # captions: scored with no class names


def test_an_image_scores_the_same_alone_and_in_a_mixed_batch(seq_file, tmp_path):
    """Per-sample routing: a batch that mixes routes gives each image what it gets on its own."""
    r, _ = _run(seq_file(), tmp_path, Routing())
    ev = r.evaluator
    inf = Logging(r.pet)
    ev.set_inference(inf)
    split = r.data["t0"].test
    images = torch.cat([img for img in ev._input_batches(split, list(range(len(split))))])
    images = torch.cat([images, -images])  # both routes in one batch
    with torch.no_grad():
        both = inf.encode_images(images, ev._encode)
        alone = Routed.cat([inf.encode_images(images[i:i + 1], ev._encode) for i in range(len(images))])
    assert set(both.routes.tolist()) == {0, FROZEN}
    assert torch.equal(both.routes, alone.routes)
    assert torch.allclose(both.features, alone.features, atol=1e-6)


def test_the_default_inference_answers_as_the_model_stands(seq_file, tmp_path):
    """Route 0 everywhere: the same measures as no inference (within float reassociation)."""
    class Plain(Method):
        name = "plain-inference"

        def inference(self, ctx):
            return Inference()

    seq = seq_file()
    _, a = _run(seq, tmp_path / "a", Method())
    _, b = _run(seq, tmp_path / "b", Plain())
    for x, y in zip(a["steps"], b["steps"]):
        assert x["accuracy"] == pytest.approx(y["accuracy"], abs=1e-6)
        assert x["control_accuracy"] == pytest.approx(y["control_accuracy"], abs=1e-6)
