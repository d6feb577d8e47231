"""Documents to learn into weights, and the questions that test what was learned.

A corpus is a folder of .txt / .md files (every file below it, in sorted order; a file's id is its
path under the folder), a single .txt / .md file (one document), or a JSONL file of
``{"id": ..., "text": ...}`` objects (engrain.documents.chunking splits long documents).

Questions are JSONL: ``{"question": str, "choices": [str, ...], "answer": int (index into choices),
"doc": optional document id (or "docs": a list of them, e.g. both hops of a two-hop question),
"type": optional kind, e.g. verbatim / paraphrase / two-hop}``.

Every problem with a file is a one-line :class:`EngrainError` naming the file (and line).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

from engrain.errors import EngrainError
from engrain.tasks.loaders import jsonl_rows

TEXT_SUFFIXES = (".txt", ".md")


@dataclass(frozen=True)
class Document:
    id: str
    text: str


@dataclass(frozen=True)
class Chunk:
    doc_id: str
    index: int  # position among its document's chunks
    text: str


@dataclass(frozen=True)
class Question:
    id: str  # file:line
    question: str
    choices: tuple[str, ...]
    answer: int
    doc_ids: tuple[str, ...] = ()  # the documents that answer it (first: the one it is about)
    type: str = "question"


# ---------------------------------------------------------------------------- corpus


def load_corpus(path: str | Path) -> list[Document]:
    """The documents of a folder of .txt/.md files or of a JSONL file; refuses an empty corpus."""
    p = Path(path)
    if p.is_dir():
        files = sorted(f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in TEXT_SUFFIXES)
        docs = [Document(str(f.relative_to(p)), _read_text(f)) for f in files]
        where = f"{p} (no .txt or .md files with text)"
    elif p.is_file() and p.suffix.lower() in TEXT_SUFFIXES:
        docs, where = [Document(p.name, _read_text(p))], f"{p} (no text in it)"
    elif p.is_file():
        docs = list(_jsonl_documents(p))
        where = f"{p} (no documents with text)"
    else:
        raise EngrainError(f"corpus not found: {p} (expected a folder of .txt/.md files, a .txt/.md file or a .jsonl file)")
    docs = [d for d in docs if d.text.strip()]
    if not docs:
        raise EngrainError(f"the corpus is empty: {where}")
    return docs


def _read_text(f: Path) -> str:
    try:
        return f.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise EngrainError(f"{f}: not UTF-8 text (byte {e.start}); convert it, e.g. iconv -t utf-8") from None
    except OSError as e:
        raise EngrainError(f"{f}: cannot read it ({e.strerror})") from None


def _jsonl_documents(path: Path) -> Iterable[Document]:
    seen: set[str] = set()
    for n, row in jsonl_rows(path):
        if not isinstance(row.get("text"), str):
            raise EngrainError(f"{path}:{n}: a document needs \"text\" (a string)")
        doc_id = str(row.get("id", f"{path.name}:{n}"))
        if doc_id in seen:
            raise EngrainError(f"{path}:{n}: duplicate document id {doc_id!r}")
        seen.add(doc_id)
        yield Document(doc_id, row["text"])


# ---------------------------------------------------------------------------- questions


def load_questions(path: str | Path, doc_ids: Iterable[str] | None = None) -> list[Question]:
    """Multiple-choice questions from JSONL; ``doc_ids`` (when given) are the ids a question may name."""
    p = Path(path)
    if not p.is_file():
        raise EngrainError(f"questions file not found: {p}")
    known = set(doc_ids) if doc_ids is not None else None
    out = []
    for n, row in jsonl_rows(p):
        where = f"{p}:{n}"
        q, choices, answer = row.get("question"), row.get("choices"), row.get("answer")
        if not isinstance(q, str) or not q.strip():
            raise EngrainError(f"{where}: a question needs \"question\" (a non-empty string)")
        if not isinstance(choices, list) or len(choices) < 2 or not all(isinstance(c, str) and c.strip() for c in choices):
            raise EngrainError(f"{where}: \"choices\" must be a list of at least 2 non-empty strings")
        if not isinstance(answer, int) or isinstance(answer, bool) or not 0 <= answer < len(choices):
            raise EngrainError(f"{where}: \"answer\" must be the index of the right choice, 0 to {len(choices) - 1}; got {answer!r}")
        docs = row.get("docs", [])
        if not isinstance(docs, list):
            raise EngrainError(f"{where}: \"docs\" must be a list of document ids")
        docs = [str(d) for d in ([row["doc"]] if row.get("doc") is not None else []) + docs]
        missing = [d for d in docs if known is not None and d not in known]
        if missing:
            raise EngrainError(f"{where}: document {missing[0]!r} is not in the corpus")
        out.append(Question(where, q, tuple(choices), answer, tuple(dict.fromkeys(docs)), str(row.get("type", "question"))))
    if not out:
        raise EngrainError(f"{p}: no questions in it")
    return out
