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
    images = torch.cat([img for _, img in ev._input_batches(split, list(range(len(split))))])
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


# -- what methods compute on the frozen model, kept per evaluated batch (FrozenFeatures) -------------------------
def test_frozen_features_are_kept_per_batch_and_dropped_when_a_pretrained_weight_changes():
    from suite.models.inference import FrozenFeatures, frozen

    w = torch.nn.Parameter(torch.ones(3))
    store, calls = FrozenFeatures([w]), []
    split, x = object(), torch.arange(6.0).view(2, 3)

    def ask(images, rows=(0, 1), what="query"):
        def compute():
            calls.append(what)
            return images * w.detach()
        with store.batch(split, list(rows)):
            return frozen(images, what, compute)

    first = ask(x)
    first.add_(100)  # what was answered is the caller's copy
    assert torch.equal(ask(x), x) and len(calls) == 1 and store.hits == 1
    ask(x, rows=(0, 2))  # other rows
    ask(x, what="embedding")  # another quantity of the same batch
    ask(x + 1)  # other pixels under the same rows: never a kept answer
    assert len(calls) == 4
    with torch.no_grad():
        w.add_(1)  # the pretrained weights changed in place: nothing kept survives
    assert torch.equal(ask(x), 2 * x) and len(calls) == 5
    assert torch.equal(frozen(x, "query", lambda: x - 1), x - 1)  # outside an evaluated batch: computed
    assert torch.equal(FrozenFeatures([w], limit_bytes=0).answer(split, [0, 1], "query", x, lambda: x), x)


def checked_store(pretrained, limit):
    """A store that, at every answer, also computes the value afresh and counts the answers that differ."""
    from suite.models.inference import FrozenFeatures

    class Checked(FrozenFeatures):
        differ = answers = 0

        def answer(self, owner, rows, what, images, compute):
            given = super().answer(owner, rows, what, images, compute)
            self.answers += 1
            self.differ += not torch.equal(given, compute())
            return given

    return Checked(pretrained, limit)


@pytest.mark.parametrize("method", ["diki", "rail", "moe-adapters", "l2p", "coda-prompt", "dualprompt"])
def test_kept_frozen_features_leave_every_record_value_as_it_is(seq_file, tmp_path, method):
    """Each method that asks for frozen-model features at test: every kept answer equals a fresh computation at
    the time it is given, the record is the same with and without keeping them (limit 0: nothing kept), and the
    kept ones were used."""
    from suite.engine.runner import Runner

    seq = seq_file(n_tasks=3)
    recs = []
    for limit in (0, 2**30):
        r = Runner(run_config(seq, tmp_path / str(limit), method=method, pet=None, training={"iterations": 2}))
        store = r.evaluator.frozen = checked_store(r.evaluator.frozen._pretrained, limit)
        recs.append((r.run(), store))
    (plain, none_kept), (kept, store) = recs
    assert none_kept.hits == 0 and store.hits > 0
    assert store.answers > store.hits and store.differ == 0
    assert plain["matrix"] == kept["matrix"]
    for a, b in zip(plain["steps"], kept["steps"]):
        assert (a["items"], a["control_accuracy"], a["hallucination"]) == (b["items"], b["control_accuracy"],
                                                                             b["hallucination"])
