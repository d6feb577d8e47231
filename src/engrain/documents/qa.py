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
from dataclasses import dataclass
from functools import cached_property
from typing import NamedTuple, Sequence

import torch

from engrain.documents.corpus import Question
from engrain.errors import EngrainError
from engrain.forward import continuation_logprobs, encode_context, pad, repeat_cache
from engrain.measure import Meter, matmul_peak
from engrain.shard import sharded, world

SEPARATOR = "\n\n"  # between the documents, and between them and the question
CLOZE_REQUEST = "Complete the sentence."  # a chat template's user turn before a cloze (QAPrompt)
RULES = ("sum", "token", "char")
HEADLINE = "sum"


class ChoiceScores(NamedTuple):
    sums: list[float]  # summed log-probability of each choice's tokens
    tokens: list[int]  # how many tokens each choice's continuation has
    chars: list[int]  # each choice's length in characters


def is_cloze(q: Question) -> bool:
    """A verbatim question is a sentence cut before its answer (a cloze); the others end with "?"."""
    return not q.question.rstrip().endswith("?")


def prompt_text(q: Question) -> str:
    """A cloze as it is, a question as Q/A."""
    return q.question if is_cloze(q) else f"Question: {q.question}\nAnswer:"


def documents_text(q: Question, documents: dict[str, str] | None) -> str:
    """Open book: the question's documents and the separator that precedes the question; closed book: nothing."""
    if documents is None:
        return ""
    if not q.doc_ids:
        raise EngrainError(f"{q.id}: open book needs the question's documents, and it names none (give it \"doc\" or \"docs\")")
    return SEPARATOR.join(documents[d] for d in q.doc_ids) + SEPARATOR


def context_text(q: Question, documents: dict[str, str] | None) -> str:
    """What comes before the choice: the question's documents (open book) and the prompt."""
    return documents_text(q, documents) + prompt_text(q)


def encode_pair(tokenizer, context: str, continuation: str) -> tuple[list[int], list[int]]:
    """(context ids, continuation ids) as lm-evaluation-harness's ``_encode_pair``: trailing spaces of the
    context move to the continuation, the two are tokenised as one text and split after the context's
    own token count."""
    spaces = len(context) - len(context.rstrip())
    if spaces:
        context, continuation = context[:-spaces], context[-spaces:] + continuation
    return split_pair(tokenizer, context, continuation)


def split_pair(tokenizer, context: str, continuation: str) -> tuple[list[int], list[int]]:
    """``context + continuation`` tokenised as one text, split after the context's own token count."""
    encode = lambda text: tokenizer(text, add_special_tokens=False)["input_ids"]  # noqa: E731
    whole, n = encode(context + continuation), len(encode(context))
    if n >= len(whole):  # the continuation merged into the context's last token: score it on its own
        return encode(context), encode(continuation)
    return whole[:n], whole[n:]


@dataclass(frozen=True)
class QAPrompt:
    """How a question is put to the model, the same for scoring and for --qa-train. Plain text (``template``
    None): BOS, the documents (open book), then :func:`prompt_text` and " " + the choice. Through a chat
    template (``--chat-template``, instruct models): the documents and the question are the user's turn and
    the choice is the assistant's reply; a cloze is the start of the assistant's reply (the user asks
    :data:`CLOZE_REQUEST`) and the choice continues it. ``bos`` false: a KV prefix holds BOS (engrain.chat
    says how a template's own BOS is handled)."""

    tokenizer: object
    template: str | None = None
    bos: bool = True

    @cached_property
    def bos_ids(self) -> list[int]:
        return self.tokenizer("", add_special_tokens=True)["input_ids"] if self.bos else []

    def pair(self, q: Question, choice: str, documents: dict[str, str] | None = None) -> tuple[list[int], int]:
        """The token ids of ``choice`` asked as ``q`` (``documents``: open book), and where the choice starts."""
        if self.template is None:
            ctx, cont = encode_pair(self.tokenizer, context_text(q, documents), " " + choice)
        else:
            ctx, cont = split_pair(self.tokenizer, *self.chat_texts(q, documents, choice))
        return self.bos_ids + ctx + cont, len(self.bos_ids) + len(ctx)

    def chat_texts(self, q: Question, documents: dict[str, str] | None, choice: str) -> tuple[str, str]:
        from engrain.chat import render

        docs = documents_text(q, documents)
        if is_cloze(q):
            messages = [{"role": "user", "content": docs + CLOZE_REQUEST}, {"role": "assistant", "content": q.question.rstrip()}]
            return render(self.tokenizer, self.template, messages, continue_final=True), " " + choice
        return render(self.tokenizer, self.template, [{"role": "user", "content": docs + q.question}], generation=True), choice


def common_prefix(rows: Sequence[Sequence[int]]) -> int:
    n = min(map(len, rows))
    first = rows[0]
    for i in range(n):
        if any(r[i] != first[i] for r in rows):
            return i
    return n


@torch.no_grad()
def choice_scores(model, prompt: QAPrompt, questions: Sequence[Question], documents: dict[str, str] | None = None,
                  batch_size: int = 16) -> list[ChoiceScores]:
    """Per question, the :class:`ChoiceScores` of its choices, asked as ``prompt`` asks them. With ``documents``
    (id -> text) each question is asked after its own documents (open book); without, closed book."""
    tokenizer = prompt.tokenizer
    groups: dict[tuple[str, ...], list[int]] = defaultdict(list)
    for i, q in enumerate(questions):
        groups[q.doc_ids if documents is not None else ()].append(i)
    out: list = [None] * len(questions)
    for doc_ids, idx in groups.items():
        rows = []  # (question index, choice index, token ids, where the choice starts)
        for i in idx:
            for c, choice in enumerate(questions[i].choices):
                rows.append((i, c, *prompt.pair(questions[i], choice, documents)))
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
                    model=None, prompt: QAPrompt | None = None) -> tuple[dict, dict]:
    """Metrics and cost of answering ``questions`` with ``model`` (default ``lm.model``) in ``lm.dtype``, asked as
    ``prompt`` asks (default: plain text after BOS); with ``documents``, open book."""
    prompt = prompt or QAPrompt(lm.tokenizer)
    model = model if model is not None else lm.model
    peak = matmul_peak(lm.device, lm.dtype)
    with Meter(lm.device) as m, torch.autocast(lm.device.type, dtype=lm.dtype, enabled=lm.dtype != torch.float32):
        # under `accelerate launch` each process scores its shard of the questions (engrain.shard)
        scores = sharded(lambda part: choice_scores(model, prompt, part, documents, batch_size), questions)
    measure = {"seconds": m.seconds, "ms_per_question": m.seconds / len(questions) * 1000 * world()[1], **m.memory(),
               "open_book": documents is not None, "matmul_peak_tflops": peak / 1e12}
    return qa_metrics(questions, scores), measure
