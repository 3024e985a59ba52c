"""Sequential PET: train the PET on each task in turn with no protection (the forgetting baseline)."""
from __future__ import annotations

from suite.methods.base import Method


class SequentialPET(Method):
    name = "seq"
