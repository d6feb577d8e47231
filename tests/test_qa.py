"""Multiple-choice scoring: tokenised as lm-evaluation-harness does (context and choice together, split at the
context's tokens), with a BOS-adding and a sentencepiece-style tokenizer too; open book with a cached
document equals the concatenated prompt; the three scoring rules; --open-book on a question without documents."""

from __future__ import annotations

import pytest
import torch

from engrain.documents import Document, facts
from engrain.documents import Question
from engrain.forward import continuation_logprobs
from engrain.models import load_model
from engrain.documents.qa import SEPARATOR, ChoiceScores, QAPrompt, choice_scores, context_text, prompt_text, qa_metrics
from engrain.errors import EngrainError


@pytest.fixture()
def world():
    docs, rows = facts.generate(0, people=6, organisations=3, cities=3, products=2)
    questions = [Question(f"q{i}", r["question"], tuple(r["choices"]), r["answer"], tuple(r["docs"]), r["type"]) for i, r in enumerate(rows)]
    return {d.id: d.text for d in docs}, questions


def concatenated(model, tok, text: str, choice: str) -> tuple[float, int]:
    """Reference, as lm-eval builds a loglikelihood request: the prompt and the choice tokenised as one text
    (with the tokenizer's own special tokens), the choice being what follows the prompt's tokens; one
    sequence, no cache, no padding."""
    prompt = tok(text, add_special_tokens=True)["input_ids"]
    ids = tok(text + " " + choice, add_special_tokens=True)["input_ids"]  # split after len(prompt), as lm-eval's _encode_pair
    s, n = continuation_logprobs(model, torch.tensor([ids]), torch.ones(1, len(ids), dtype=torch.long), torch.tensor([len(prompt)]))
    return s.item(), n.item()


def test_open_book_with_a_cached_document_equals_the_concatenated_prompt(tiny_any_dir, world):
    """For a Llama and a Gemma 3 whose sliding window (8) is far shorter than the documents."""
    docs, questions = world
    lm = load_model(str(tiny_any_dir), "fp32", "cpu")
    qs = questions[:5] + [q for q in questions if q.type == "two-hop"][:3]
    got = choice_scores(lm.model, QAPrompt(lm.tokenizer), qs, docs, batch_size=5)
    for q, (sums, counts, _) in zip(qs, got):
        text = SEPARATOR.join(docs[d] for d in q.doc_ids) + SEPARATOR + prompt_text(q)
        for c, choice in enumerate(q.choices):
            s, n = concatenated(lm.model, lm.tokenizer, text, choice)
            assert counts[c] == n
            assert sums[c] == pytest.approx(s, abs=1e-3, rel=1e-4)


def test_closed_book_equals_the_question_alone(tiny, world):
    docs, questions = world
    got = choice_scores(tiny.model, QAPrompt(tiny.tokenizer), questions[:6], None, batch_size=7)
    for q, (sums, _, _) in zip(questions[:6], got):
        for c, choice in enumerate(q.choices):
            assert sums[c] == pytest.approx(concatenated(tiny.model, tiny.tokenizer, prompt_text(q), choice)[0], abs=1e-3, rel=1e-4)
    # the document in context changes the scores (or the open-book test proves nothing)
    opened = choice_scores(tiny.model, QAPrompt(tiny.tokenizer), questions[:6], docs)
    assert any(abs(a - b) > 1e-2 for x, y in zip(got, opened) for a, b in zip(x.sums, y.sums))


def test_with_a_bos_or_sentencepiece_tokenizer_choices_are_scored_as_lm_eval_does(tiny_bos_dir, world):
    """The tokenizer adds a BOS (both) and, sentencepiece-style, a "▁" before every text: a choice tokenised alone
    would start with a lone "▁" token that the joint tokenisation does not have."""
    docs, questions = world
    lm = load_model(str(tiny_bos_dir), "fp32", "cpu")
    tok = lm.tokenizer
    assert tok("", add_special_tokens=True)["input_ids"] == [tok.bos_token_id]
    qs = questions[:4] + [q for q in questions if q.type == "two-hop"][:2]
    for documents in (None, docs):
        got = choice_scores(lm.model, QAPrompt(tok), qs, documents, batch_size=3)
        for q, scores in zip(qs, got):
            text = context_text(q, documents)
            for c, choice in enumerate(q.choices):
                s, n = concatenated(lm.model, tok, text, choice)
                assert scores.tokens[c] == n and scores.sums[c] == pytest.approx(s, abs=1e-3, rel=1e-4)
                assert scores.chars[c] == len(choice)
    alone = sum(len(tok(" " + c, add_special_tokens=False)["input_ids"]) for q in qs for c in q.choices)
    joint = sum(sum(s.tokens) for s in choice_scores(lm.model, QAPrompt(tok), qs))
    if tok.convert_ids_to_tokens(tok(" x", add_special_tokens=False)["input_ids"])[0] == "▁":  # sentencepiece-style
        assert joint < alone  # the lone "▁" of every choice tokenised alone is gone


def test_open_book_refuses_a_question_without_documents():
    q = Question("q.jsonl:3", "Who?", ("a", "b"), 0)
    with pytest.raises(EngrainError, match=r"q\.jsonl:3: open book needs the question's documents, and it names none"):
        context_text(q, {"d": "text"})


def test_metrics_by_each_rule():
    qs = [Question("a", "?", ("xx", "y"), 0, (), "verbatim"), Question("b", "?", ("x", "yyyy", "z"), 2, (), "two-hop")]
    scores = [ChoiceScores([-4.0, -3.0], [4, 1], [2, 1]),  # sum -> 1; token -1 vs -3 -> 0; char -2 vs -3 -> 0
              ChoiceScores([-1.0, -2.0, -2.5], [1, 1, 5], [1, 4, 1])]  # sum -> 0; token -> 2; char -1, -.5, -2.5 -> 1
    m = qa_metrics(qs, scores)
    assert (m["accuracy_sum"], m["accuracy_token"], m["accuracy_char"]) == (0.0, 1.0, 0.5)
    assert m["accuracy"] == m[f"accuracy_{m['scoring']}"]
    assert m["chance"] == pytest.approx((1 / 2 + 1 / 3) / 2)
    assert m["by_type"]["two-hop"]["accuracy_token"] == 1.0 and m["by_type"]["two-hop"]["n"] == 1
    assert m["longest_is_answer"] == 0.5 and m["longest_picked"] == {"sum": 0.0, "token": 0.5, "char": 1.0}


def test_references_are_computed_once_per_model_and_recomputed_when_its_files_change(tiny_model_dir, tmp_path, monkeypatch, world):
    import shutil

    from engrain.documents import evaluate
    from engrain.tasks.documents import DocumentTask

    monkeypatch.setenv("ENGRAIN_RESULTS_CACHE", str(tmp_path / "cache"))
    folder = shutil.copytree(tiny_model_dir, tmp_path / "model")
    docs, questions = world
    task = DocumentTask("t", [Document(k, v) for k, v in docs.items()], questions[:4])
    calls = []
    real = evaluate.score_questions
    monkeypatch.setattr(evaluate, "score_questions", lambda *a, **k: calls.append(1) or real(*a, **k))
    lm = load_model(str(folder), "fp32", "cpu")
    first = evaluate.references(lm, task, task.questions, 4)
    assert evaluate.references(lm, task, task.questions, 4) == first and len(calls) == 2  # base and open book, once
    (folder / "config.json").write_text((folder / "config.json").read_text() + "\n")  # the model's files changed
    evaluate.references(lm, task, task.questions, 4)
    assert len(calls) == 4
    assert first["base"]["accuracy"] == qa_metrics(task.questions, choice_scores(lm.model, QAPrompt(lm.tokenizer), task.questions))["accuracy"]
