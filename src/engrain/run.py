"""One training run's fixed parts (:class:`Run`): what ``engrain.train`` prepares and every method reads.

Its own module so that the methods (engrain.methods) and the training loop (engrain.train) both import it
and neither imports the other back.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from functools import cached_property

import torch

from engrain import models
from engrain.config import TrainConfig
from engrain.data import Prompter
from engrain.evaluation import check_fits
from engrain.forward import encode_context, training_attention
from engrain.tasks import TaskSpec


@dataclass
class Run:
    """What one training run is about, fixed before anything trains: the config, the evaluated task and
    its sets, the training data and its k examples, the model (fp32 master weights) and its prompts."""

    cfg: TrainConfig
    spec: TaskSpec | None  # evaluated (with its out-of-domain partners); None for a document task
    train_spec: TaskSpec | None  # trained on (cfg.train_data, default the task itself)
    sets: list  # [(spec, examples, label map)] evaluation sets
    exclude: set  # keys of every evaluation example: never trained on
    shots: list  # the k training examples
    acc: object  # accelerate.Accelerator
    lm: models.LoadedModel
    compute: torch.dtype  # what the matmuls run in (autocast)
    prompter: Prompter | None  # training prompts (train_spec's format)
    eval_prompter: Prompter | None  # evaluation prompts (spec's format)
    corpus: list | None = None  # documents to train on (cpt, cft, distill on documents), else None
    qa: object | None = None  # a document task (tasks.documents.DocumentTask): evaluated by its questions, closed book
    augment: dict | None = None  # the augmentation's manifest (--augment): the corpus above is the augmented one
    qa_train: list | None = None  # answered questions about other documents, trained on with the corpus (--qa-train)

    @property
    def as_icl(self) -> bool:
        """A prefix student starts as the ICL prompt: its KV prefix holds the context (BOS included), so
        its queries are the ICL queries (with the separator). On documents it starts as the open book
        with the whole corpus in the prompt."""
        return self.cfg.params == "prefix"

    @property
    def virtual_tokens(self) -> int:
        """KV prefix positions before every student input (prefix students), else 0."""
        return (self.cfg.prefix_tokens or len(self.context_ids)) if self.as_icl else 0

    @cached_property
    def bos_ids(self) -> list[int]:
        """The tokenizer's BOS, if it adds one (what starts every sequence the base model reads)."""
        return self.lm.tokenizer("", add_special_tokens=True)["input_ids"]

    @cached_property
    def bos(self) -> list[int]:
        """What precedes each student input: BOS, unless a KV prefix (which holds it) comes first."""
        return [] if self.as_icl else self.bos_ids

    @cached_property
    def qa_prompt(self):
        """How questions about documents are asked (scoring and --qa-train): plainly or through --chat-template."""
        from engrain.chat import chat_template
        from engrain.documents.qa import QAPrompt

        return QAPrompt(self.lm.tokenizer, chat_template(self.lm.tokenizer, self.cfg.chat_template), bos=not self.as_icl)

    @cached_property
    def context_ids(self) -> list[int]:
        """The k examples as ICL demonstrations: the distillation teacher's context, the prefix's initialisation.
        On documents (the prefix's initialisation): BOS, the corpus's documents and a blank line, as open book
        reads them, so that a question follows directly."""
        if self.corpus is not None:
            from engrain.documents.qa import SEPARATOR

            tok = lambda text: self.lm.tokenizer(text, add_special_tokens=False)["input_ids"]  # noqa: E731
            return self.bos_ids + tok(SEPARATOR.join(d.text for d in self.corpus)) + tok(SEPARATOR)
        return self.prompter.context_ids(self.shots)

    @cached_property
    def context_cache(self):
        """The context's KV cache on the base model, computed once (before any adapter is attached)."""
        with self.autocast():
            return encode_context(self.lm.model, self.context_ids)

    @cached_property
    def chunks(self) -> list:
        """The corpus split into chunks of at most cfg.chunk_tokens tokens (exactly its text, none repeated)."""
        from engrain.documents import chunk_documents

        count = lambda text: len(self.lm.tokenizer(text, add_special_tokens=False)["input_ids"])  # noqa: E731
        return chunk_documents(self.corpus, self.cfg.chunk_tokens, count)

    @cached_property
    def verbalizer_ids(self) -> list[int]:
        return self.prompter.verbalizer_ids()

    @contextlib.contextmanager
    def autocast(self):
        # bf16 compute is plain torch autocast rather than Accelerate's mixed_precision, whose process-wide
        # state cannot change between two runs in one process (a sweep mixing precisions, the Python API).
        device = self.acc.device
        with torch.autocast(device.type, dtype=self.compute, enabled=self.compute != torch.float32), training_attention(device):
            yield

    def labelled_items(self, examples: list) -> list[dict]:
        """Classification items: each example's prompt as the student reads it, and its gold label."""
        ids = self.prompter.query_ids(examples, with_context=self.as_icl)
        return [{"input_ids": self.bos + q, "label": ex["label"]} for q, ex in zip(ids, examples)]

    def eval_queries(self, sets) -> dict[str, list[list[int]]]:
        return {s.name: self.eval_prompter.query_ids(exs, with_context=self.as_icl) for s, exs, _ in sets}

    def check_fits(self, before: int, seqs) -> None:
        check_fits(before, seqs, self.lm.max_length)

    @property
    def questions(self) -> list:
        """A document task's scored questions (the first --limit of them)."""
        return self.qa.questions[: self.cfg.limit] if self.cfg.limit else self.qa.questions
