"""Pinning: write the manifest hashes of an embedded sequence into its own file (for sequence authors)."""
from __future__ import annotations

import re
from pathlib import Path

import yaml

from suite.config.sequences import SequenceError, parse_sequence, parse_yaml
from suite.data.registry import materialize
from suite.paths import read_text

_PIN = re.compile(r"(manifest_sha256:\s*)(\"[0-9a-fA-F]*\"|'[0-9a-fA-F]*'|[0-9a-fA-F]+)")


def pin_file(path: Path) -> dict[str, str]:
    """Materialise every task of ``path`` and replace its ``manifest_sha256`` values in file order (a new file
    gives each as ``manifest_sha256: ""``)."""
    text = read_text(path, "sequence file", SequenceError)
    # a new file's pins are placeholders (``""``): parse it with well-formed stand-ins, since nothing is verified here
    try:
        data = parse_yaml(_PIN.sub(lambda m: f'{m.group(1)}"{"0" * 64}"', text))
    except yaml.YAMLError as exc:
        raise SequenceError(f"{path}: not valid YAML ({getattr(exc, 'problem', exc)})") from None
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
