"""A method's own test-time behaviour: which parameters answer each test image, and how images and texts are scored.

The runner asks the method for an :class:`Inference` before every evaluation step after a task
(``Method.inference(ctx)``; ``None``: the model answers as it stands, the path every earlier method takes). The
evaluator then routes **everything** it measures through it — the tasks, the control sets, the hallucination probe
and retrieval alike:

1. each batch of test images is encoded by :meth:`Inference.encode_images`, which may choose, **per image**, the
   parameters that answer it (a route: ``-1`` the frozen, pretrained model; ``k >= 0`` the method's ``k``-th set,
   e.g. a task's experts, prefixes or a merged model) and returns the features with their routes (:class:`Routed`);
2. texts (class prompts, concepts, captions) are encoded under each route the images took, inside
   :meth:`Inference.using` (route ``r``'s parameters in place), cached per route for the step;
3. :meth:`Inference.scores` turns image features and the route's text features into scores in cosine units
   (the evaluator multiplies by the logit scale for probabilities). A method that owns its logits (a regression
   head, a fusion with zero-shot logits) overrides it.

Routing is a property of one image: an image's scores never depend on the other images of its batch. A method
may offer a batch-wise variant to reproduce a paper; its records then state ``routing: per-batch`` and the boards
refuse them.

A method that computes something on the frozen, pretrained model from a test batch (a routing query, a frozen
embedding: DIKI, RAIL, MoE-Adapters, L2P, CODA-Prompt, DualPrompt) asks :func:`frozen` for it. The evaluator keeps
it per evaluated batch for the whole run (:class:`FrozenFeatures`), so the next evaluation of the same test batch
answers it without another pass of the frozen model; the values are the ones computed the first time, bit for bit.

This module sits below both the evaluation and the methods, so the two meet here without importing each other.
"""
from __future__ import annotations

import contextlib
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Callable, ContextManager, Iterator, Sequence

import torch

FROZEN = -1  # the route of the pretrained model with every method parameter switched off


@dataclass
class Routed:
    """Test images' normalised features and, per image, the route (parameter set) that encoded them."""

    features: torch.Tensor  # (N, d)
    routes: torch.Tensor    # (N,) long

    def __len__(self) -> int:
        return len(self.features)

    def __getitem__(self, index) -> "Routed":
        if isinstance(index, list):
            index = torch.as_tensor(index, dtype=torch.long)
        return Routed(self.features[index], self.routes[index])

    @staticmethod
    def cat(parts: list["Routed"]) -> "Routed":
        if not parts:
            return Routed(torch.zeros(0, 1), torch.zeros(0, dtype=torch.long))
        return Routed(torch.cat([p.features for p in parts]), torch.cat([p.routes for p in parts]))


Encode = Callable[[torch.Tensor], torch.Tensor]  # model inputs -> normalised image features, no autograd


class Inference:
    """The default test-time behaviour (one route, ``0``: the model as it stands). Subclass and override
    :meth:`route` (per-sample routing), :meth:`using` (what route ``r`` puts in place), :meth:`text_route`
    (when the text side does not depend on the route) or :meth:`scores` (own logits)."""

    def route(self, images: torch.Tensor) -> torch.Tensor:
        """Per image of a batch of model inputs, the route that answers it (long, shape ``(N,)``); computed
        from each image alone."""
        return torch.zeros(len(images), dtype=torch.long)

    def using(self, route: int) -> ContextManager[None]:
        """A context in which the backbone computes with route ``route``'s parameters (default: as it stands)."""
        return contextlib.nullcontext()

    def text_route(self, route: int) -> int:
        """The route whose text features serve images of ``route`` (default: its own). A method whose routing
        leaves the text tower alone answers one value for every route, so class prompts are encoded once."""
        return route

    def encode_images(self, images: torch.Tensor, encode: Encode) -> Routed:
        """Route every image, then encode each group of images under its route's parameters."""
        routes = self.route(images).long().cpu()

        def encode_group(r: int, rows: torch.Tensor) -> torch.Tensor:
            with self.using(r):
                return encode(images[rows.to(images.device)])

        return Routed(by_route(routes, encode_group, torch.zeros(0, 1)), routes)

    def scores(self, images: Routed, text: Callable[[int], torch.Tensor], names: list[str] | None) -> torch.Tensor:
        """Scores (cosine units) of every image against every text: each image against the text features of its
        route (``text(route)``, ``(C, d)``). ``names``: the class or concept names the texts stand for (``None``
        for captions), for a method whose scores depend on what it learned."""
        return by_route(images.routes, lambda r, rows: images.features[rows] @ text(r).T,
                        images.features.new_zeros(0, 0))


def groups(routes: torch.Tensor) -> Iterator[tuple[int, torch.Tensor]]:
    """(route, the rows that took it), in increasing route order."""
    for r in torch.unique(routes).tolist():
        yield int(r), torch.nonzero(routes == r).flatten()


def by_route(routes: torch.Tensor, part: Callable[[int, torch.Tensor], torch.Tensor],
             empty: torch.Tensor) -> torch.Tensor:
    """Rows computed route by route: ``part(route, rows)`` gives the rows that took ``route``, put back in their
    places (``empty`` when there are no rows)."""
    out: torch.Tensor | None = None
    for r, rows in groups(routes):
        values = part(r, rows)
        if out is None:
            out = values.new_empty(len(routes), values.shape[-1])
        out[rows.to(values.device)] = values
    return out if out is not None else empty


class FrozenFeatures:
    """What methods computed on the frozen, pretrained model from each evaluated batch, kept for the whole run.

    The evaluator names the batch it is encoding (:meth:`batch`: which rows of which split); a method's
    :func:`frozen` call inside it is answered from here when the same rows were encoded before. Kept values are
    dropped when any pretrained weight changed since (its storage or its in-place version counter), and a kept value
    is used only for the same input (shape and sum), so a stale answer cannot come back. Up to ``limit_bytes``."""

    def __init__(self, pretrained: Sequence[torch.Tensor], limit_bytes: int = 2**30):
        self._pretrained = list(pretrained)  # the backbone's own weights, taken before any PET or method attached
        self._weights = self._weights_state()
        self._kept: dict[tuple, tuple[tuple, float, torch.Tensor]] = {}
        self._owners: dict[int, object] = {}  # the splits named in keys, held so that their ids are not reused
        self.limit_bytes, self.used, self.hits = limit_bytes, 0, 0

    def _weights_state(self) -> list[tuple[int, int]]:
        return [(p.data_ptr(), p._version) for p in self._pretrained]

    @contextlib.contextmanager
    def batch(self, owner: object, rows: Sequence[int]) -> Iterator[None]:
        """For the body, the batch being encoded is ``rows`` of ``owner`` (a split). Nothing is checked here: a
        method that never asks (:func:`frozen`) pays for nothing but this."""
        token = _BATCH.set((self, owner, rows))
        try:
            yield
        finally:
            _BATCH.reset(token)

    def answer(self, owner: object, rows: Sequence[int], what: str, images: torch.Tensor,
               compute: Callable[[], torch.Tensor]) -> torch.Tensor:
        state = self._weights_state()
        if state != self._weights:
            self._kept.clear()
            self.used, self._weights = 0, state
        key = (id(owner), tuple(rows), what)
        shape, total = tuple(images.shape), float(images.detach().sum(dtype=torch.float64))
        kept = self._kept.get(key)
        if kept is not None and kept[0] == shape and kept[1] == total:
            self.hits += 1
            return kept[2].clone()  # the caller may change its copy in place
        out = compute()
        size = out.element_size() * out.numel()
        if self.used + size <= self.limit_bytes:
            self._owners[id(owner)] = owner
            self._kept[key] = (shape, total, out.detach().clone())
            self.used += size
        return out


_BATCH: ContextVar[tuple[FrozenFeatures, object, Sequence[int]] | None] = ContextVar("clsuite_evaluated_batch",
                                                                                    default=None)


def frozen(images: torch.Tensor, what: str, compute: Callable[[], torch.Tensor]) -> torch.Tensor:
    """``compute()``: what a method computes from ``images`` (the whole batch being encoded) on the frozen,
    pretrained model with every parameter of its own switched off; ``what`` names it among the method's. While the
    evaluator encodes a test batch, the first answer for that batch is kept for the run and given back at later
    evaluations; anywhere else (training) it is computed every time."""
    current = _BATCH.get()
    if current is None:
        return compute()
    store, owner, rows = current
    return store.answer(owner, rows, what, images, compute)


__all__ = ["FROZEN", "Encode", "FrozenFeatures", "Inference", "Routed", "by_route", "frozen", "groups"]
