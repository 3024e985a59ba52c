"""CLIP's byte-pair tokenizer for the embedded backbones, without importing open_clip.

``import open_clip`` costs seconds (its package imports timm, transformers and torchvision), and the embedded
models need only its text tokenizer. This module produces the same token tensor as ``open_clip.tokenize``:
the same text cleaning (ftfy, HTML entities, whitespace, lower case), pre-tokenising pattern, byte-to-symbol
table, merges (read from the vocabulary file that ships inside the installed open_clip package, located without
running the package's ``__init__``), start/end tokens and truncation. Tables are built once per process.
"""
from __future__ import annotations

import gzip
import html
import importlib.util
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import torch

VOCAB_FILE = "bpe_simple_vocab_16e6.txt.gz"
N_MERGES = 49152 - 256 - 2  # merges CLIP's vocabulary keeps: 49408 ids = 2 x 256 byte symbols + merges + 2 specials
START, END = "<start_of_text>", "<end_of_text>"
WORD_END = "</w>"


def vocab_file() -> Path:
    """open_clip's shipped merges file, found from the package's location alone (its ``__init__`` is not run)."""
    from suite.models import ModelError

    spec = importlib.util.find_spec("open_clip")
    roots = list(spec.submodule_search_locations or []) if spec is not None else []
    for root in roots:
        path = Path(root) / VOCAB_FILE
        if path.is_file():
            return path
    raise ModelError(f"CLIP tokenizer: {VOCAB_FILE} not found (it ships with open_clip_torch; is it installed?)")


def byte_symbols() -> list[str]:
    """One printable symbol per byte value 0..255: bytes that are printable Latin-1 stand for themselves, the
    rest (controls, space, soft hyphen...) are moved past 255 in byte order, so no symbol is whitespace."""
    keep = set(range(0x21, 0x7F)) | set(range(0xA1, 0xAD)) | set(range(0xAE, 0x100))
    out, extra = [], 0
    for b in range(256):
        if b in keep:
            out.append(chr(b))
        else:
            out.append(chr(256 + extra))
            extra += 1
    return out


def _symbol_order(symbols: list[str]) -> list[str]:
    """The base vocabulary's order: the printable bytes in byte order first, then the moved ones."""
    return [s for s in symbols if ord(s) < 256] + [s for s in symbols if ord(s) >= 256]


@dataclass
class _Tables:
    ids: dict[str, int]
    ranks: dict[tuple[str, str], int]
    byte_symbol: list[str]
    pattern: object
    words: dict[str, tuple[str, ...]] = field(default_factory=dict)  # BPE of each pre-token seen (grows per process)


@lru_cache(maxsize=1)
def _tables() -> _Tables:
    import regex  # \p{L} / \p{N} classes: the stdlib re has no Unicode property classes

    lines = gzip.decompress(vocab_file().read_bytes()).decode("utf-8").split("\n")
    merges = [tuple(line.split()) for line in lines[1:1 + N_MERGES]]
    base = _symbol_order(byte_symbols())
    vocab = base + [s + WORD_END for s in base] + ["".join(m) for m in merges] + [START, END]
    ids: dict[str, int] = {}
    for i, token in enumerate(vocab):
        ids[token] = i  # a repeated string keeps its last id, as a dict built from the list in order would
    pattern = regex.compile(rf"{START}|{END}|'s|'t|'re|'ve|'m|'ll|'d|\p{{L}}+|\p{{N}}|[^\s\p{{L}}\p{{N}}]+",
                            regex.IGNORECASE)
    tables = _Tables(ids, {m: r for r, m in enumerate(merges)}, byte_symbols(), pattern)
    tables.words.update({START: (START,), END: (END,)})
    return tables


def clean(text: str) -> str:
    """CLIP's text normalisation before tokenising: mojibake and odd characters fixed (ftfy), HTML entities
    decoded (twice, for doubly escaped text), whitespace runs collapsed, lower case."""
    import ftfy

    text = html.unescape(html.unescape(ftfy.fix_text(text))).strip()
    return " ".join(text.split()).lower()


def _merge(word: str, tables: _Tables) -> tuple[str, ...]:
    """Byte-pair merges of one pre-token (already in byte symbols): the lowest-ranked adjacent pair is merged
    everywhere, left to right, until no adjacent pair has a rank."""
    known = tables.words.get(word)
    if known is not None:
        return known
    parts = list(word[:-1]) + [word[-1] + WORD_END]
    ranks = tables.ranks
    while len(parts) > 1:
        best, best_rank = None, len(ranks)
        for pair in zip(parts, parts[1:]):
            rank = ranks.get(pair)
            if rank is not None and rank < best_rank:
                best, best_rank = pair, rank
        if best is None:
            break
        first, second = best
        joined, i = [], 0
        while i < len(parts):
            if parts[i] == first and i + 1 < len(parts) and parts[i + 1] == second:
                joined.append(first + second)
                i += 2
            else:
                joined.append(parts[i])
                i += 1
        parts = joined
    tables.words[word] = result = tuple(parts)
    return result


def encode(text: str) -> list[int]:
    """Token ids of ``text`` without the start and end tokens."""
    tables = _tables()
    out: list[int] = []
    for piece in tables.pattern.findall(clean(text)):
        word = "".join(tables.byte_symbol[b] for b in piece.encode("utf-8"))
        out.extend(tables.ids[s] for s in _merge(word, tables))
    return out


def tokenize(texts: str | list[str], context_length: int = 77) -> torch.Tensor:
    """``(len(texts), context_length)`` int64 ids: start token, the text's ids, end token, zero padding; a text
    too long is cut to ``context_length`` ids whose last is the end token (``open_clip.tokenize``'s tensor)."""
    if not context_length:
        raise ValueError("CLIP tokenizer: context_length must be a positive number of tokens")
    texts = [texts] if isinstance(texts, str) else list(texts)
    tables = _tables()
    start, end = tables.ids[START], tables.ids[END]
    result = torch.zeros(len(texts), context_length, dtype=torch.long)
    for row, text in enumerate(texts):
        ids = [start] + encode(text) + [end]
        if len(ids) > context_length:
            ids = ids[:context_length]
            ids[-1] = end
        result[row, :len(ids)] = torch.tensor(ids, dtype=torch.long)
    return result


__all__ = ["byte_symbols", "clean", "encode", "tokenize", "vocab_file"]
