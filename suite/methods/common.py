"""Small helpers baselines share: swapping weights in and out, and a frozen-weights forward."""
from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch
from torch import nn


@contextmanager
def weights_swapped(params: list[nn.Parameter], values: list[torch.Tensor]) -> Iterator[None]:
    """Temporarily give ``params`` the tensors ``values`` (e.g. the previous task's), then restore."""
    saved = [p.detach().clone() for p in params]
    with torch.no_grad():
        for p, v in zip(params, values):
            p.copy_(v)
    try:
        yield
    finally:
        with torch.no_grad():
            for p, s in zip(params, saved):
                p.copy_(s)
