"""Multiple-choice scoring: open-book with a cached document equals the concatenated prompt; closed-book metrics."""

from __future__ import annotations

import pytest
import torch

from engrain.documents import facts
from engrain.documents import Question
from engrain.forward import continuation_logprobs
from engrain.models import load_model
from engrain.documents.qa import SEPARATOR, choice_scores, prompt_text, qa_metrics


@pytest.fixture()
def world():
    docs, rows = facts.generate(0, people=6, organisations=3, cities=3, products=2)
    questions = [Question(f"q{i}", r["question"], tuple(r["choices"]), r["answer"], tuple(r["docs"]), r["type"]) for i, r in enumerate(rows)]
    return {d.id: d.text for d in docs}, questions


def concatenated(model, tok, text: str, choice: str) -> tuple[float, int]:
    """Reference: the whole prompt and the choice in one sequence, no cache, no padding."""
    prompt = tok(text, add_special_tokens=True)["input_ids"]
    ids = prompt + tok(" " + choice, add_special_tokens=False)["input_ids"]
    s, n = continuation_logprobs(model, torch.tensor([ids]), torch.ones(1, len(ids), dtype=torch.long), torch.tensor([len(prompt)]))
    return s.item(), n.item()


def test_open_book_with_a_cached_document_equals_the_concatenated_prompt(tiny_any_dir, world):
    """For a Llama and a Gemma 3 whose sliding window (8) is far shorter than the documents."""
    docs, questions = world
    lm = load_model(str(tiny_any_dir), "fp32", "cpu")
    qs = questions[:5] + [q for q in questions if q.type == "two-hop"][:3]
    got = choice_scores(lm.model, lm.tokenizer, qs, docs, batch_size=5)
    for q, (sums, counts) in zip(qs, got):
        text = SEPARATOR.join(docs[d] for d in q.doc_ids) + SEPARATOR + prompt_text(q)
        for c, choice in enumerate(q.choices):
            s, n = concatenated(lm.model, lm.tokenizer, text, choice)
            assert counts[c] == n
            assert sums[c] == pytest.approx(s, abs=1e-3, rel=1e-4)


def test_closed_book_equals_the_question_alone(tiny, world):
    docs, questions = world
    got = choice_scores(tiny.model, tiny.tokenizer, questions[:6], None, batch_size=7)
    for q, (sums, _) in zip(questions[:6], got):
        for c, choice in enumerate(q.choices):
            assert sums[c] == pytest.approx(concatenated(tiny.model, tiny.tokenizer, prompt_text(q), choice)[0], abs=1e-3, rel=1e-4)
    # the document in context changes the scores (or the open-book test proves nothing)
    opened = choice_scores(tiny.model, tiny.tokenizer, questions[:6], docs)
    assert any(abs(a - b) > 1e-2 for (x, _), (y, _) in zip(got, opened) for a, b in zip(x, y))


def test_metrics_normalised_and_not():
    qs = [Question("a", "?", ("x", "y"), 0, (), "verbatim"), Question("b", "?", ("x", "y", "z"), 2, (), "two-hop")]
    scores = [([-4.0, -3.0], [4, 1]), ([-1.0, -2.0, -2.5], [1, 1, 5])]  # normalised: -1 vs -3; -1, -2, -0.5
    m = qa_metrics(qs, scores)
    assert m["accuracy"] == 1.0 and m["accuracy_unnormalised"] == 0.0
    assert m["chance"] == pytest.approx((1 / 2 + 1 / 3) / 2)
    assert m["by_type"]["two-hop"] == {"n": 1, "accuracy": 1.0, "accuracy_unnormalised": 0.0}
