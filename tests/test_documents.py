"""Documents and questions: corpus files, chunking that loses and duplicates nothing, the generated
facts benchmark, and one-line errors for bad files."""

from __future__ import annotations

import json
import random

import pytest

from engrain.documents import Document, chunk_documents, chunk_text, load_corpus, load_questions
from engrain.errors import EngrainError


def words(text: str) -> int:  # a stand-in token count: whitespace-separated words, plus one per newline
    return len(text.split()) + text.count("\n")


def random_text(rng: random.Random) -> str:
    def sentence():
        return " ".join(rng.choice(["alpha", "beta", "gamma", "delta", "x" * rng.randint(1, 40)]) for _ in range(rng.randint(1, 30))) + rng.choice(".!?")

    paragraphs = [" ".join(sentence() for _ in range(rng.randint(1, 8))) for _ in range(rng.randint(1, 6))]
    return rng.choice(["", "  ", "\n"]) + rng.choice(["\n\n", "\n\n\n", "\n \n"]).join(paragraphs) + rng.choice(["", "\n"])


@pytest.mark.parametrize("seed", range(40))
def test_chunks_concatenate_back_to_the_text_and_fit(seed):
    rng = random.Random(seed)
    text, limit = random_text(rng), rng.choice([8, 12, 30, 80, 400])
    chunks = chunk_text(text, limit, words)
    assert "".join(chunks) == text  # nothing lost, nothing duplicated, order kept
    assert all(words(c) <= limit for c in chunks)
    assert all(c for c in chunks)


def test_chunks_break_at_paragraphs_when_paragraphs_fit():
    paras = [" ".join(f"w{p}{i}" for i in range(10)) + "." for p in range(5)]
    text = "\n\n".join(paras)
    chunks = chunk_text(text, 25, words)
    assert "".join(chunks) == text
    assert all(c.rstrip("\n").endswith(".") for c in chunks)  # every cut is at a paragraph end
    assert len(chunks) == 3  # 2 + 2 + 1 paragraphs of 10-11 words


def test_chunk_documents_with_a_real_tokenizer(tiny):
    count = lambda t: len(tiny.tokenizer(t, add_special_tokens=False)["input_ids"])  # noqa: E731
    docs = [Document("a", "Short one."), Document("b", "\n\n".join(f"Paragraph {i} says something about cats." * 3 for i in range(20)))]
    chunks = chunk_documents(docs, 64, count)
    assert [c.text for c in chunks if c.doc_id == "a"] == ["Short one."]
    b = [c for c in chunks if c.doc_id == "b"]
    assert "".join(c.text for c in b) == docs[1].text and [c.index for c in b] == list(range(len(b))) and len(b) > 3
    assert all(count(c.text) <= 64 for c in b)


def test_a_corpus_folder_and_a_jsonl_corpus(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "b.md").write_text("# B\n\nsecond")
    (tmp_path / "a.txt").write_text("first")
    (tmp_path / "sub" / "c.txt").write_text("third")
    (tmp_path / "skip.json").write_text("{}")
    (tmp_path / "empty.txt").write_text("  \n")
    assert [(d.id, d.text) for d in load_corpus(tmp_path)] == [("a.txt", "first"), ("b.md", "# B\n\nsecond"), ("sub/c.txt", "third")]
    f = tmp_path / "corpus.jsonl"
    f.write_text(json.dumps({"id": "x", "text": "one"}) + "\n\n" + json.dumps({"text": "two"}) + "\n")
    assert [(d.id, d.text) for d in load_corpus(f)] == [("x", "one"), ("corpus.jsonl:3", "two")]


@pytest.mark.parametrize("make,message", [
    (lambda p: p / "nothing", r"corpus not found: .*nothing"),
    (lambda p: (p / "d").mkdir() or p / "d", r"the corpus is empty: .*d \(no \.txt or \.md files with text\)"),
    (lambda p: (p / "bin.txt").write_bytes(b"ok \xff\xfe bad") and p, r"bin\.txt: not UTF-8 text \(byte 3\)"),
    (lambda p: (p / "c.jsonl").write_text('{"id": 1, "text": "a"}\n{"id": 1, "text": "b"}\n') and p / "c.jsonl", r"c\.jsonl:2: duplicate document id '1'"),
    (lambda p: (p / "c.jsonl").write_text('{"id": 1}\n') and p / "c.jsonl", r"c\.jsonl:1: a document needs \"text\""),
    (lambda p: (p / "c.jsonl").write_text('{"id": 1, "text": "a"\n') and p / "c.jsonl", r"c\.jsonl:1: not valid JSON"),
])
def test_bad_corpora_are_one_line_errors(tmp_path, make, message):
    with pytest.raises(EngrainError, match=message) as e:
        load_corpus(make(tmp_path))
    assert "\n" not in str(e.value)


def write_questions(path, *rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_questions_load(tmp_path):
    f = write_questions(tmp_path / "q.jsonl", {"question": "Q?", "choices": ["a", "b"], "answer": 1, "doc": "d1", "type": "verbatim"},
                        {"question": "R?", "choices": ["a", "b", "c"], "answer": 0, "docs": ["d1", "d2"]})
    qs = load_questions(f, ["d1", "d2"])
    assert [(q.answer, q.doc_ids, q.type) for q in qs] == [(1, ("d1",), "verbatim"), (0, ("d1", "d2"), "question")]


@pytest.mark.parametrize("row,message", [
    ({"question": "Q?", "choices": ["a", "b"], "answer": 2}, r"q\.jsonl:1: \"answer\" must be the index of the right choice, 0 to 1; got 2"),
    ({"question": "Q?", "choices": ["a", "b"], "answer": -1}, r"got -1"),
    ({"question": "Q?", "choices": ["a", "b"], "answer": "a"}, r"got 'a'"),
    ({"question": "Q?", "choices": ["a"], "answer": 0}, r"\"choices\" must be a list of at least 2"),
    ({"question": "", "choices": ["a", "b"], "answer": 0}, r"a question needs \"question\""),
    ({"question": "Q?", "choices": ["a", "b"], "answer": 0, "doc": "nope"}, r"q\.jsonl:1: document 'nope' is not in the corpus"),
    ({"question": "Q?", "choices": ["a", "b"], "answer": 0, "docs": ["d1", "zz"]}, r"document 'zz' is not in the corpus"),
])
def test_bad_questions_are_one_line_errors(tmp_path, row, message):
    with pytest.raises(EngrainError, match=message):
        load_questions(write_questions(tmp_path / "q.jsonl", row), ["d1"])


# ---------------------------------------------------------------------------- PubMedQA


def test_pubmedqa_trains_on_the_non_test_abstracts_and_asks_the_test_questions(data_dir):
    from engrain.tasks.documents import load_document_task

    task = load_document_task("pubmedqa", data_dir=data_dir)
    assert len(task.documents) == 1000 and len(task.corpus) == 500 and len(task.questions) == 500
    test = {q.doc_ids[0] for q in task.questions}
    assert not test & {d.id for d in task.corpus}  # never train on a test abstract
    q = task.questions[0]
    assert q.choices == ("yes", "no", "maybe") and q.type == q.choices[q.answer] and q.doc_ids[0] in task.texts


def test_pubmedqa_without_its_files_is_one_line(tmp_path):
    from engrain.tasks.documents import load_document_task

    with pytest.raises(EngrainError, match=r"--task pubmedqa needs .*ori_pqal\.json .*pass --data-dir or set ENGRAIN_DATA"):
        load_document_task("pubmedqa", data_dir=tmp_path)


def test_a_malformed_pubmedqa_file_is_one_line(tmp_path):
    from engrain.tasks.documents import load_document_task

    (tmp_path / "pubmedqa").mkdir()
    (tmp_path / "pubmedqa" / "ori_pqal.json").write_text(json.dumps({"1": {"QUESTION": "Q?"}}))  # no CONTEXTS
    (tmp_path / "pubmedqa" / "test_ground_truth.json").write_text(json.dumps({"1": "yes"}))
    with pytest.raises(EngrainError, match=r"not laid out as PubMedQA PQA-L .*KeyError") as e:
        load_document_task("pubmedqa", data_dir=tmp_path)
    assert "\n" not in str(e.value)


def test_a_single_text_file_is_a_one_document_corpus(tmp_path):
    f = tmp_path / "notes.md"
    f.write_text("# Notes\n\nThe lamp is green.")
    assert [(d.id, d.text) for d in load_corpus(f)] == [("notes.md", "# Notes\n\nThe lamp is green.")]
    (tmp_path / "blank.txt").write_text("\n")
    with pytest.raises(EngrainError, match=r"the corpus is empty: .*blank\.txt"):
        load_corpus(tmp_path / "blank.txt")
