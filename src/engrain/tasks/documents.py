"""Document tasks: a corpus to learn and multiple-choice questions about it, scored closed-book (or,
with --open-book, with each question's documents in context).

    facts[:SEED]   the generated fictional-knowledge benchmark, v2 (engrain.documents.facts; world seed,
                   default 0): the test half's questions; every document is learnt
    facts-v1[:SEED] the first version (engrain.documents.facts_v1), kept for the records made with it
    pubmedqa       PubMedQA PQA-L: train on the abstracts of the 500 non-test PMIDs, answer the 500 test
                   questions yes / no / maybe (open book: with their own abstract)
    qa             your own: --corpus (a folder of .txt/.md or a .jsonl of {id, text}) and --questions (JSONL)
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from engrain.documents import Document, Question, load_corpus, load_questions
from engrain.errors import EngrainError

DOC_TASKS = {"facts": "generated fictional people, organisations, places and products; verbatim, paraphrased and two-hop questions "
                      "about the test half of the entities (v2: no prior beats chance)",
             "facts-v1": "the first version of facts (superseded: a frequency prior answers 44% of it); for its old records",
             "pubmedqa": "PubMedQA PQA-L: the 500 non-test abstracts to learn, the 500 test questions (yes / no / maybe)",
             "qa": "your own documents (--corpus) and multiple-choice questions about them (--questions)"}


def is_document_task(name: str) -> bool:
    return name.split(":")[0] in DOC_TASKS


@dataclass
class DocumentTask:
    name: str
    documents: list[Document]  # every document a question may name (open book)
    questions: list[Question]
    train_documents: list[Document] | None = None  # what cpt/cft learn, when not all of them (PubMedQA: not the test abstracts)
    train_questions: list[Question] | None = None  # questions about other entities than the scored ones (facts v2's train half)
    control: list[Document] | None = None  # the shuffled-facts corpus (facts v2): same words and value counts, wrong facts

    @property
    def corpus(self) -> list[Document]:
        return self.train_documents if self.train_documents is not None else self.documents

    @property
    def texts(self) -> dict[str, str]:
        return {d.id: d.text for d in self.documents}


def load_pubmedqa(data_dir: str | Path | None) -> DocumentTask:
    """PQA-L from a folder laid out like ../shared/data (pubmedqa/ori_pqal.json and test_ground_truth.json,
    as in the pubmedqa/pubmedqa repository): the official test split is the PMIDs of test_ground_truth.json."""
    from engrain.tasks.loaders import default_data_dir

    folder = Path(data_dir or default_data_dir() or ".") / "pubmedqa"
    files = [folder / "ori_pqal.json", folder / "test_ground_truth.json"]
    missing = [f for f in files if not f.is_file()]
    if missing:
        raise EngrainError(f"--task pubmedqa needs {missing[0]} (pubmedqa/pubmedqa's data/ori_pqal.json and "
                           "test_ground_truth.json): pass --data-dir or set ENGRAIN_DATA")
    try:
        items, test = (json.loads(f.read_text(encoding="utf-8")) for f in files)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise EngrainError(f"{folder}: not valid PubMedQA JSON ({e})") from None
    choices = ("yes", "no", "maybe")
    try:
        docs = {pmid: Document(pmid, "\n\n".join(item["CONTEXTS"])) for pmid, item in items.items()}
        questions = [Question(f"pubmedqa:{pmid}", items[pmid]["QUESTION"], choices, choices.index(answer), (pmid,), answer)
                     for pmid, answer in test.items()]
    except (KeyError, TypeError, AttributeError, ValueError) as e:
        raise EngrainError(f"{folder}: not laid out as PubMedQA PQA-L (each PMID with QUESTION and CONTEXTS, test answers "
                           f"yes/no/maybe of PMIDs in ori_pqal.json): {type(e).__name__} {e}") from None
    return DocumentTask("pubmedqa", list(docs.values()), questions, [d for pmid, d in docs.items() if pmid not in test])


def _questions(name: str, rows: list[dict]) -> list[Question]:
    return [Question(f"{name}:{i}", r["question"], tuple(r["choices"]), r["answer"], tuple(r["docs"]), r["type"]) for i, r in enumerate(rows)]


def load_facts(name: str, version: str, seed: int) -> DocumentTask:
    if version == "facts-v1":
        from engrain.documents import facts_v1

        docs, rows = facts_v1.generate(seed)
        return DocumentTask(name, docs, _questions(name, rows))
    from engrain.documents import facts

    b = facts.build(seed)
    return DocumentTask(name, b.documents, _questions(name, b.questions), train_questions=_questions(f"{name}:train", b.train_questions),
                        control=b.control)


def qa_train_questions(source: str, task: DocumentTask | None, task_name: str) -> list:
    """--qa-train: the task's own train half (``train``) or a file of questions (and conversations); refuses any
    scored question, asked as a question or inside a conversation (its text in a user turn, its answer in the reply)."""
    if source == "train":
        if task is None or not task.train_questions:
            raise EngrainError(f"--qa-train train takes the task's train half of questions, and --task {task_name} has none "
                               "(facts v2 has); give a questions file")
        questions = task.train_questions
    else:
        questions = load_questions(source, conversations=True)
    norm = lambda text: " ".join(text.split()).lower()  # noqa: E731
    scored = [(norm(q.question), norm(q.choices[q.answer])) for q in task.questions] if task else []
    scored_keys = set(scored)

    def leaks(item) -> bool:
        if isinstance(item, Question):
            return (norm(item.question), norm(item.choices[item.answer])) in scored_keys
        turns = item.messages
        return any(t["role"] == "user" and r["role"] == "assistant" and q in norm(t["content"]) and a in norm(r["content"])
                   for t, r in zip(turns, turns[1:]) for q, a in scored)

    leaked = [q for q in questions if leaks(q)]
    if leaked:
        first = leaked[0].question if isinstance(leaked[0], Question) else leaked[0].id
        raise EngrainError(f"--qa-train {source}: {len(leaked)} of its questions are scored questions of --task {task_name} "
                           f"(first: {first!r}): training on them would score memorised answers")
    return questions


def load_document_task(name: str, corpus: str | None = None, questions: str | None = None, data_dir=None,
                       text_field: str = "text") -> DocumentTask:
    base, _, seed = name.partition(":")
    if base == "pubmedqa":
        return load_pubmedqa(data_dir)
    if base in ("facts", "facts-v1"):
        if seed and not seed.isdigit():
            raise EngrainError(f"{base}:SEED takes an integer seed (a generated world), got {seed!r}")
        return load_facts(name, base, int(seed or 0))
    if corpus is None or questions is None:
        raise EngrainError("--task qa needs --corpus (your documents) and --questions (a JSONL of multiple-choice questions)")
    docs = load_corpus(corpus, text_field)
    return DocumentTask(name, docs, load_questions(questions, [d.id for d in docs]))
