"""Pinning: write the manifest hashes of an embedded sequence into its own file (for sequence authors)."""
from __future__ import annotations

import re
from pathlib import Path

from suite.config.sequences import SequenceError, parse_sequence, parse_yaml
from suite.data.registry import materialize
from suite.paths import read_text

_PIN = re.compile(r"(manifest_sha256:\s*)\"?([0-9a-fA-F]*)\"?")


def pin_file(path: Path) -> dict[str, str]:
    """Materialise every task of ``path`` and replace its ``manifest_sha256`` values in file order."""
    text = read_text(path, "sequence file", SequenceError)
    data = parse_yaml(text)
    seq = parse_sequence(data, path)
    if not seq.embedded:
        raise SequenceError(f"{path}: embedded: only embedded sequences pin manifests")
    digests = {t.name: materialize(seq, t, verify=False).manifest_sha256 for t in seq.tasks + seq.control_sets}
    values = iter(digests.values())
    count = len(_PIN.findall(text))
    if count != len(digests):
        raise SequenceError(f"{path}: manifest_sha256: expected {len(digests)} pins in the file, found {count}")
    path.write_text(_PIN.sub(lambda m: f'{m.group(1)}"{next(values)}"', text))
    return digests
