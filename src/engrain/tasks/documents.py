"""Document tasks: a corpus to learn and multiple-choice questions about it, scored closed-book (or,
with --open-book, with each question's documents in context).

    facts[:SEED]   the generated fictional-knowledge benchmark (engrain.facts; world seed, default 0)
    qa             your own: --corpus (a folder of .txt/.md or a .jsonl of {id, text}) and --questions (JSONL)
"""

from __future__ import annotations

from dataclasses import dataclass

from engrain.documents import Document, Question, load_corpus, load_questions
from engrain.errors import EngrainError

DOC_TASKS = {"facts": "generated fictional people, organisations, places and products; verbatim, paraphrased and two-hop questions",
             "qa": "your own documents (--corpus) and multiple-choice questions about them (--questions)"}


def is_document_task(name: str) -> bool:
    return name.split(":")[0] in DOC_TASKS


@dataclass
class DocumentTask:
    name: str
    documents: list[Document]
    questions: list[Question]

    @property
    def texts(self) -> dict[str, str]:
        return {d.id: d.text for d in self.documents}


def load_document_task(name: str, corpus: str | None = None, questions: str | None = None) -> DocumentTask:
    base, _, seed = name.partition(":")
    if base == "facts":
        from engrain import facts

        if seed and not seed.isdigit():
            raise EngrainError(f"facts:SEED takes an integer seed (a generated world), got {seed!r}")
        docs, rows = facts.generate(int(seed or 0))
        qs = [Question(f"{name}:{i}", r["question"], tuple(r["choices"]), r["answer"], tuple(r["docs"]), r["type"])
              for i, r in enumerate(rows)]
        return DocumentTask(name, docs, qs)
    if corpus is None or questions is None:
        raise EngrainError("--task qa needs --corpus (your documents) and --questions (a JSONL of multiple-choice questions)")
    docs = load_corpus(corpus)
    return DocumentTask(name, docs, load_questions(questions, [d.id for d in docs]))
