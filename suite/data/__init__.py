"""Data layer: turn a :class:`~suite.config.sequences.TaskSpec` into train/test splits with a manifest hash.

Every adapter returns the same :class:`TaskData`; the manifest (one line per sample: split, label, sample id)
is hashed so that two runs can prove they used the same data. Embedded tasks compare the hash with the one
pinned in the sequence file; real tasks store it in every results record.
"""
from __future__ import annotations

from suite.data.base import DataMissingError, ManifestMismatch, Split, TaskData, manifest_sha256
from suite.data.registry import ADAPTERS, materialize, materialize_sequence

__all__ = ["ADAPTERS", "DataMissingError", "ManifestMismatch", "Split", "TaskData", "manifest_sha256",
           "materialize", "materialize_sequence"]
