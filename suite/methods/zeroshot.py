"""Zero-shot: the pretrained model, never trained — the row every other method is compared against."""
from __future__ import annotations

from suite.methods.base import Method


class ZeroShot(Method):
    name = "zeroshot"
    trains = False
    needs_pet = False
