"""Multiple-choice question answering about documents: closed book (the question alone, after BOS) or
open book (the question's documents before it).

Each choice is scored as lm-evaluation-harness scores a loglikelihood request: the context (documents,
question) and the continuation (" " + choice) are tokenised **together**, and the continuation is what
comes after the context's own tokens. Tokenising a choice alone would give sentencepiece tokenizers
(Llama-2, Mistral, TinyLlama) a lone "▁" before every choice and shift each choice's per-token mean.
The documents shared by a question's choices (and by every question that names the same documents)
are encoded once: the rows' common token prefix is cached and reused.

Three rules turn the log-likelihoods into a choice, and every record keeps all three:
- ``sum``: the summed log-likelihood of the choice's tokens (lm-eval's ``acc``);
- ``token``: its mean per token;
- ``char``: the sum divided by the choice's length in characters (lm-eval's ``acc_norm``).
The headline (``HEADLINE``) is the sum: measured on facts v2 with smollm2-135m (docs/experiments.md),
open book scores highest by it and its picks are the least drawn to long or short choices.
"""

from __future__ import annotations

from collections import defaultdict
from typing import NamedTuple, Sequence

import torch

from engrain.documents.corpus import Question
from engrain.errors import EngrainError
from engrain.forward import continuation_logprobs, encode_context, pad, repeat_cache
from engrain.measure import Meter, matmul_peak

SEPARATOR = "\n\n"  # between the documents, and between them and the question
RULES = ("sum", "token", "char")
HEADLINE = "sum"


class ChoiceScores(NamedTuple):
    sums: list[float]  # summed log-probability of each choice's tokens
    tokens: list[int]  # how many tokens each choice's continuation has
    chars: list[int]  # each choice's length in characters


def prompt_text(q: Question) -> str:
    """A cloze (the verbatim questions: a sentence cut before its answer) as it is, a question as Q/A."""
    return q.question if not q.question.rstrip().endswith("?") else f"Question: {q.question}\nAnswer:"


def context_text(q: Question, documents: dict[str, str] | None) -> str:
    """What comes before the choice: the question's documents (open book) and the prompt."""
    if documents is None:
        return prompt_text(q)
    if not q.doc_ids:
        raise EngrainError(f"{q.id}: open book needs the question's documents, and it names none (give it \"doc\" or \"docs\")")
    return SEPARATOR.join(documents[d] for d in q.doc_ids) + SEPARATOR + prompt_text(q)


def encode_pair(tokenizer, context: str, continuation: str) -> tuple[list[int], list[int]]:
    """(context ids, continuation ids) as lm-evaluation-harness's ``_encode_pair``: trailing spaces of the
    context move to the continuation, the two are tokenised as one text and split after the context's
    own token count."""
    encode = lambda text: tokenizer(text, add_special_tokens=False)["input_ids"]  # noqa: E731
    spaces = len(context) - len(context.rstrip())
    if spaces:
        context, continuation = context[:-spaces], context[-spaces:] + continuation
    whole, n = encode(context + continuation), len(encode(context))
    if n >= len(whole):  # the continuation merged into the context's last token: score it on its own
        return encode(context), encode(continuation)
    return whole[:n], whole[n:]


def common_prefix(rows: Sequence[Sequence[int]]) -> int:
    n = min(map(len, rows))
    first = rows[0]
    for i in range(n):
        if any(r[i] != first[i] for r in rows):
            return i
    return n


@torch.no_grad()
def choice_scores(model, tokenizer, questions: Sequence[Question], documents: dict[str, str] | None = None,
                  batch_size: int = 16, bos: bool = True) -> list[ChoiceScores]:
    """Per question, the :class:`ChoiceScores` of its choices. With ``documents`` (id -> text) each question
    is asked after its own documents (open book); without, after BOS alone (closed book), or, with
    ``bos`` false, after nothing: a KV-prefix model's prefix holds BOS and comes first."""
    bos_ids = tokenizer("", add_special_tokens=True)["input_ids"] if bos else []
    groups: dict[tuple[str, ...], list[int]] = defaultdict(list)
    for i, q in enumerate(questions):
        groups[q.doc_ids if documents is not None else ()].append(i)
    out: list = [None] * len(questions)
    for doc_ids, idx in groups.items():
        rows = []  # (question index, choice index, token ids, where the choice starts)
        for i in idx:
            context = context_text(questions[i], documents)
            for c, choice in enumerate(questions[i].choices):
                ctx, cont = encode_pair(tokenizer, context, " " + choice)
                rows.append((i, c, bos_ids + ctx + cont, len(bos_ids) + len(ctx)))
        # the documents (open book) are every row's common start: encoded once, as a cache; the token before
        # each choice stays in its row, since its logits score the choice's first token
        n_past = min(common_prefix([r for _, _, r, _ in rows]), min(s for *_, s in rows) - 1) if doc_ids else 0
        cache = encode_context(model, rows[0][2][:n_past]) if n_past else None
        sums = {}
        for b in range(0, len(rows), batch_size):
            batch = rows[b : b + batch_size]
            ids, mask = pad([r[n_past:] for _, _, r, _ in batch], tokenizer.pad_token_id, "right")
            starts = torch.tensor([s - n_past for *_, s in batch])
            past = repeat_cache(cache, len(batch)) if cache is not None else None
            s, n = continuation_logprobs(model, ids.to(model.device), mask.to(model.device), starts.to(model.device), past, n_past)
            for (i, c, _, _), si, ni in zip(batch, s.tolist(), n.tolist()):
                sums[i, c] = (si, ni)
        for i in idx:
            choices = questions[i].choices
            out[i] = ChoiceScores([sums[i, c][0] for c in range(len(choices))], [sums[i, c][1] for c in range(len(choices))],
                                  [len(c) for c in choices])
    return out


def predict(scores: ChoiceScores, rule: str) -> int:
    """The chosen index under ``rule`` (sum, token or char)."""
    norm = {"sum": [1] * len(scores.sums), "token": scores.tokens, "char": scores.chars}[rule]
    values = [s / max(n, 1) for s, n in zip(scores.sums, norm)]
    return max(range(len(values)), key=values.__getitem__)


def qa_metrics(questions: Sequence[Question], scores: Sequence[ChoiceScores]) -> dict:
    """Accuracy by the headline rule, by each rule (``accuracy_sum`` / ``_token`` / ``_char``), chance, the same
    per question type, and how often each rule picks the longest choice (in characters) against how often
    the answer is the longest (``longest_picked``: a rule drawn to long choices picks it more often)."""
    picks = {rule: [predict(s, rule) for s in scores] for rule in RULES}
    longest = [max(range(len(q.choices)), key=lambda c: len(q.choices[c])) for q in questions]

    def acc(kind: str | None) -> dict:
        sel = [j for j, q in enumerate(questions) if kind is None or q.type == kind]
        rules = {f"accuracy_{r}": sum(picks[r][j] == questions[j].answer for j in sel) / len(sel) for r in RULES}
        return {"n": len(sel), "accuracy": rules[f"accuracy_{HEADLINE}"], **rules}

    return {**acc(None), "scoring": HEADLINE, "chance": sum(1 / len(q.choices) for q in questions) / len(questions),
            "longest_picked": {r: sum(p == lg for p, lg in zip(picks[r], longest)) / len(questions) for r in RULES},
            "longest_is_answer": sum(q.answer == lg for q, lg in zip(questions, longest)) / len(questions),
            "by_type": {t: acc(t) for t in sorted({q.type for q in questions})}}


def score_questions(lm, questions: Sequence[Question], documents: dict[str, str] | None, batch_size: int = 16,
                    model=None, bos: bool = True) -> tuple[dict, dict]:
    """Metrics and cost of answering ``questions`` with ``model`` (default ``lm.model``) in ``lm.dtype``;
    with ``documents``, open book; ``bos`` false for a KV-prefix model (:func:`choice_scores`)."""
    model = model if model is not None else lm.model
    peak = matmul_peak(lm.device, lm.dtype)
    with Meter(lm.device) as m, torch.autocast(lm.device.type, dtype=lm.dtype, enabled=lm.dtype != torch.float32):
        scores = choice_scores(model, lm.tokenizer, questions, documents, batch_size, bos)
    measure = {"seconds": m.seconds, "ms_per_question": m.seconds / len(questions) * 1000, **m.memory(),
               "open_book": documents is not None, "matmul_peak_tflops": peak / 1e12}
    return qa_metrics(questions, scores), measure
