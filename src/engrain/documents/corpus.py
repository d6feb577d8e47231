"""Documents to learn into weights, and the questions that test what was learned.

A corpus is a folder of .txt / .md files (every file below it, in sorted order; a file's id is its
path under the folder), a single .txt / .md file (one document), a JSONL file of
``{"id": ..., "text": ...}`` objects, or ``hf:DATASET_ID[:SPLIT]``, a Hugging Face dataset's rows
(``--text-field``, default ``text``; engrain.documents.chunking splits long documents).

Questions are JSONL (or ``hf:DATASET_ID[:SPLIT]`` with these columns): ``{"question": str, "choices": [str, ...], "answer": int (index into choices),
"doc": optional document id (or "docs": a list of them, e.g. both hops of a two-hop question),
"type": optional kind, e.g. verbatim / paraphrase / two-hop}``. Training questions (``--qa-train``) may also be
chat-formatted conversations, ``{"messages": [{"role": "user", "content": ...}, {"role": "assistant", ...}]}``
(TRL's format), trained through the chat template on the assistant's turns.

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


@dataclass(frozen=True)
class Conversation:
    """A chat-formatted training example (TRL's ``messages``: [{"role", "content"}, ...]), allowed in --qa-train files."""

    id: str  # file:line
    messages: tuple[dict, ...]


# ---------------------------------------------------------------------------- corpus


HUB = "hf:"  # hf:DATASET_ID[:SPLIT]: a Hugging Face dataset (or a local dataset folder) through datasets.load_dataset


def hub_rows(source: str, what: str) -> list[tuple[str, dict]]:
    """(where, row) of ``hf:ID[:SPLIT]`` (split default: train), read by ``datasets`` (its cache works offline)."""
    ident, _, split = source[len(HUB):].partition(":")
    split = split or "train"
    try:
        import datasets

        ds = datasets.load_dataset(ident, split=split)
    except Exception as e:  # offline, no such dataset or split: the user can only act on the message
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise EngrainError(f"could not load the {what} {source} (dataset {ident!r}, split {split!r}): {msg}") from None
    return [(f"{ident}:{split}:{n}", row) for n, row in enumerate(ds)]


def _field(row: dict, name: str, where: str, option: str):
    if name not in row:
        from engrain.errors import unknown

        raise EngrainError(f"{where}: no column {name!r} ({option}). " + str(unknown("column", name, row)).split(". ", 1)[-1])
    return row[name]


def load_corpus(path: str | Path, text_field: str = "text") -> list[Document]:
    """The documents of a folder of .txt/.md files, of a JSONL file, or of ``hf:DATASET[:SPLIT]`` (its
    ``text_field`` column; ids from an ``id`` column where it has one); refuses an empty corpus."""
    if str(path).startswith(HUB):
        rows = hub_rows(str(path), "corpus")
        docs = [Document(str(row.get("id", where)), str(_field(row, text_field, where, "--text-field"))) for where, row in rows]
        if len({d.id for d in docs}) != len(docs):
            raise EngrainError(f"{path}: its id column has duplicates")
        return _non_empty(docs, f"{path} (no rows with text)")
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
        raise EngrainError(f"corpus not found: {p} (expected a folder of .txt/.md files, a .txt/.md file, a .jsonl file or "
                           "hf:DATASET_ID[:SPLIT])")
    return _non_empty(docs, where)


def _non_empty(docs: list[Document], where: str) -> list[Document]:
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


def load_questions(path: str | Path, doc_ids: Iterable[str] | None = None, conversations: bool = False) -> list:
    """Multiple-choice questions from JSONL or ``hf:DATASET[:SPLIT]`` (the same fields as columns); ``doc_ids``
    (when given) are the ids a question may name. With ``conversations`` (training data), a row may instead be a
    chat-formatted :class:`Conversation` (``messages``)."""
    if str(path).startswith(HUB):
        rows, p = hub_rows(str(path), "questions"), str(path)
    else:
        p = Path(path)
        if not p.is_file():
            raise EngrainError(f"questions file not found: {p}")
        rows = ((f"{p}:{n}", row) for n, row in jsonl_rows(p))
    known = set(doc_ids) if doc_ids is not None else None
    out = []
    for where, row in rows:
        if conversations and row.get("messages") is not None:
            from engrain.chat import check_messages

            out.append(Conversation(where, tuple(check_messages(row["messages"], where))))
            continue
        q, choices, answer = row.get("question"), row.get("choices"), row.get("answer")
        if not isinstance(q, str) or not q.strip():
            also = " (or, as training data, \"messages\": a conversation)" if conversations else ""
            raise EngrainError(f"{where}: a question needs \"question\" (a non-empty string){also}")
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
