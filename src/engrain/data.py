"""Few-shot sampling and prompt building (text -> token ids)."""

from __future__ import annotations

import random
from collections import defaultdict
from dataclasses import dataclass
from typing import Iterable, Sequence

from engrain.chat import chat_template, render
from engrain.errors import EngrainError
from engrain.tasks import Example, PromptFormat, TaskSpec

SEPARATOR = "\n\n"  # between demonstrations, and between the last demonstration and the query


def example_key(spec: TaskSpec, ex: Example) -> tuple[str, ...]:
    """Identity of an example by its text (used to keep demonstrations out of the evaluation data)."""
    return tuple(" ".join(str(ex[f]).split()).lower() for f in spec.fields)


def sample_few_shot(
    spec: TaskSpec,
    train: Sequence[Example],
    k: int,
    seed: int,
    balanced: bool = True,
    exclude: Iterable[tuple[str, ...]] = (),
) -> list[Example]:
    """k demonstrations from ``train``, seeded and (by default) class-balanced.

    Balanced: each class gets k // C examples and the remainder goes to classes picked by the seed.
    Examples whose text appears in ``exclude`` (the evaluation sets) are never chosen. Uses
    ``random.Random(seed)`` on the file order, so the same seed gives the same examples anywhere.
    """
    if k < 0:
        raise EngrainError(f"--shots must be >= 0, got {k}")
    if k == 0:
        return []
    excluded = set(exclude)
    pool = [ex for ex in train if example_key(spec, ex) not in excluded]
    if k > len(pool):
        raise EngrainError(
            f"--shots {k} is larger than the {spec.name} train split ({len(pool)} usable examples"
            f"{', after removing those in the evaluation data' if len(pool) < len(train) else ''})"
        )
    rng = random.Random(seed)
    if not balanced:
        chosen = rng.sample(pool, k)
    else:
        by_class: dict[int, list[Example]] = defaultdict(list)
        for ex in pool:
            by_class[ex["label"]].append(ex)
        n_cls = len(spec.labels)
        per = [k // n_cls] * n_cls
        for c in rng.sample(range(n_cls), k % n_cls):
            per[c] += 1
        chosen = []
        for c in range(n_cls):
            if per[c] > len(by_class[c]):
                raise EngrainError(
                    f"--shots {k} needs {per[c]} examples of class {spec.labels[c]!r} for a balanced sample, "
                    f"the {spec.name} train split has {len(by_class[c])}; lower --shots or pass --no-balanced"
                )
            chosen += rng.sample(by_class[c], per[c])
        rng.shuffle(chosen)
    return chosen


def stratified_sample(spec: TaskSpec, examples: Sequence[Example], n: int | None, seed: int) -> list[Example]:
    """A seeded sample of at most n examples with the shares of each stratum kept, in file order.

    Strata are the gold label crossed with the task's breakdown columns (HANS: heuristic); each
    stratum gets its proportional share (3,000 of the local 15,000 HANS pairs: 491-511 per
    heuristic x label, as the cells hold 2,456-2,555).
    """
    if n is None or n >= len(examples):
        return list(examples)
    strata: dict[tuple, list[int]] = defaultdict(list)
    for i, ex in enumerate(examples):
        strata[(ex["label"], *(ex[c] for c in spec.breakdown))].append(i)
    keys = sorted(strata)
    # Proportional quotas that sum to exactly n (largest remainder).
    exact = [n * len(strata[k]) / len(examples) for k in keys]
    quota = [int(q) for q in exact]
    for j in sorted(range(len(keys)), key=lambda j: quota[j] - exact[j])[: n - sum(quota)]:
        quota[j] += 1
    rng, keep = random.Random(seed), []
    for k, q in zip(keys, quota):
        keep += rng.sample(strata[k], q)
    return [examples[i] for i in sorted(keep)]


@dataclass
class Prompter:
    """Turns examples into token ids for one task, format and tokenizer.

    The context is the demonstrations joined by ``SEPARATOR`` (no trailing separator); each query
    starts with the separator when there is a context. Splitting there keeps the tokens equal to
    tokenising the whole prompt at once for byte-level BPE tokenizers (the separator's newlines
    stay with the query, as they would in one string).
    """

    spec: TaskSpec
    fmt: PromptFormat
    tokenizer: object

    def answer(self, label: str) -> str:
        """What the model writes for ``label``: its verbaliser (" Yes")."""
        return self.fmt.verbalizers[label]

    def demo_text(self, ex: Example) -> str:
        return self.fmt.fill(ex) + self.answer(self.spec.labels[ex["label"]])

    def context_text(self, demos: Sequence[Example]) -> str:
        return SEPARATOR.join(self.demo_text(d) for d in demos)

    def query_text(self, ex: Example, with_context: bool) -> str:
        return (SEPARATOR if with_context else "") + self.fmt.fill(ex)

    def context_ids(self, demos: Sequence[Example]) -> list[int]:
        """Token ids of the context, with the tokenizer's BOS (if it adds one); may be empty."""
        return self.tokenizer(self.context_text(demos), add_special_tokens=True)["input_ids"]

    def query_ids(self, examples: Sequence[Example], with_context: bool) -> list[list[int]]:
        texts = [self.query_text(ex, with_context) for ex in examples]
        return self.tokenizer(texts, add_special_tokens=False)["input_ids"]

    def verbalizer_ids(self) -> list[int]:
        """One token id per label, in label order; each verbaliser must be a single token."""
        ids = []
        for label in self.spec.labels:
            text = self.answer(label)
            toks = self.tokenizer(text, add_special_tokens=False)["input_ids"]
            if len(toks) != 1:
                raise EngrainError(
                    f"verbaliser {text!r} (label {label}) is {len(toks)} tokens for this tokenizer; "
                    "choose a format whose verbalisers are single tokens"
                )
            ids.append(toks[0])
        if len(set(ids)) != len(ids):
            raise EngrainError(f"two labels share a verbaliser token in this format: {self.fmt.verbalizers}")
        return ids


@dataclass
class ChatPrompter(Prompter):
    """Prompts through a chat template (``--chat-template``, for instruct models): each demonstration a user turn
    (its pattern) and an assistant turn (its answer: the verbaliser without its leading space, "Yes"); the query
    a user turn and the generation prompt, so the answer token is the assistant's first. The context is the
    demonstrations' turns, the query what the template adds after them; the template must render a conversation
    as its earlier turns followed by the new ones (ChatML and most templates do; refused otherwise). Where the
    tokenizer adds a BOS itself, a BOS the template writes is left out (never two)."""

    template: str = ""

    def answer(self, label: str) -> str:
        return self.fmt.verbalizers[label].strip()

    def render(self, turns: list[tuple[str, str | None]], generation: bool) -> str:
        messages = [m for user, reply in turns for m in
                    ({"role": "user", "content": user}, *([{"role": "assistant", "content": reply}] if reply is not None else []))]
        return render(self.tokenizer, self.template, messages, generation)

    def context_text(self, demos: Sequence[Example]) -> str:
        return self.render([(self.fmt.fill(d), self.answer(self.spec.labels[d["label"]])) for d in demos], False) if demos else ""

    def query_text(self, ex: Example, with_context: bool) -> str:
        query = [(self.fmt.fill(ex), None)]
        if not with_context:
            return self.render(query, True)
        before = [("A question.", "An answer.")]
        head, whole = self.render(before, False), self.render(before + query, True)
        if not whole.startswith(head):
            raise EngrainError("this chat template does not render a conversation as its earlier turns followed by the new one, "
                               "so demonstrations cannot be cached apart from the query: use --chat-template none")
        return whole[len(head):]


def make_prompter(spec: TaskSpec, fmt: PromptFormat, tokenizer, chat: str = "none") -> Prompter:
    """A plain Prompter, or a ChatPrompter when ``chat`` (none / auto / FILE) names a template."""
    template = chat_template(tokenizer, chat)
    return Prompter(spec, fmt, tokenizer) if template is None else ChatPrompter(spec, fmt, tokenizer, template)
