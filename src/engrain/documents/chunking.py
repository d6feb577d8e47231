"""Chunking: documents longer than ``chunk_tokens`` are split on paragraph boundaries, else sentence,
else word boundaries (characters as a last resort); the chunks of a document concatenate back to
exactly its text, so no text is lost and none is duplicated."""

from __future__ import annotations

import re
from typing import Callable

from engrain.documents.corpus import Chunk, Document
from engrain.errors import EngrainError

# Zero-width split points, coarse to fine; each keeps every character in exactly one piece.
_BOUNDARIES = (
    re.compile(r"(?<=\n\n)(?=[^\n])"),  # after a blank line (paragraphs)
    re.compile(r"(?<=[.!?])(?=\s)"),  # after a sentence's final punctuation
    re.compile(r"(?<=\s)(?=\S)"),  # between words
)


def chunk_text(text: str, max_tokens: int, count: Callable[[str], int], level: int = 0) -> list[str]:
    """``text`` split into pieces of at most ``max_tokens`` (by ``count``) whose concatenation is ``text``.

    Paragraphs are packed greedily into chunks; a paragraph too long for one chunk is split at
    sentences, a sentence at words, a word at characters.
    """
    if count(text) <= max_tokens:
        return [text]
    if level < len(_BOUNDARIES):
        pieces = [p for p in _BOUNDARIES[level].split(text) if p]
        if len(pieces) == 1:
            return chunk_text(text, max_tokens, count, level + 1)
    else:
        pieces = list(text)
    out, current = [], ""
    for piece in pieces:
        if current and count(current + piece) > max_tokens:
            out.append(current)
            current = ""
        if count(piece) > max_tokens:
            out += chunk_text(piece, max_tokens, count, level + 1)
            continue
        current += piece
    if current:
        out.append(current)
    return out


def chunk_documents(docs: list[Document], max_tokens: int, count: Callable[[str], int]) -> list[Chunk]:
    if max_tokens < 8:
        raise EngrainError(f"--chunk-tokens must be an integer >= 8, got {max_tokens!r}")
    return [Chunk(d.id, i, t) for d in docs for i, t in enumerate(chunk_text(d.text, max_tokens, count))]
