"""Ask a model questions, or chat with it: the base model or one engrain trained (``--adapter RUN``, any
method but a classification head, any parameter set), closed book or with documents in the prompt
(``--context``), greedy or sampled, through the tokenizer's chat template where it has one.

`engrain ask` answers one question or a file of them (batched, left-padded ``model.generate``);
`engrain chat` keeps a conversation and streams each reply as it is generated (a transformers
``TextStreamer``). The model runs as evaluation runs it (engrain.params.load_trained, then
engrain.models.inference_copy in the compute dtype), so an answer comes from the model the records scored.

Without a chat template (``--chat-template none``, or a tokenizer that has none) a question is asked as the
closed-book scorer asks it, ``Question: ...\\nAnswer:`` (engrain.documents.qa.prompt_text), the form
``--qa-train`` trains; generation then stops at a blank line or at the next ``Question:``.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import torch

from engrain.errors import EngrainError

PLAIN_STOPS = ("\nQuestion:", "\n\n")  # where a plain Q/A answer ends


@dataclass
class Settings:
    max_new_tokens: int = 128
    temperature: float = 0.0  # 0: greedy
    top_p: float = 1.0
    seed: int = 0

    def check(self) -> None:
        if self.max_new_tokens < 1:
            raise EngrainError(f"--max-new-tokens must be an integer >= 1, got {self.max_new_tokens}")
        if self.temperature < 0:
            raise EngrainError(f"--temperature must be >= 0 (0: greedy), got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise EngrainError(f"--top-p must be in (0, 1], got {self.top_p}")


@dataclass
class Asker:
    """A loaded model and how it is asked: its chat template (None: plain Q/A) and optional documents."""

    lm: object  # engrain.models.LoadedModel, in the compute dtype
    template: str | None
    context: str | None = None  # documents put before the first question (open book)

    def prompt(self, turns: list[tuple[str, str]], question: str, context: bool = True) -> str:
        """The text the model continues: earlier (question, answer) turns, then ``question``; the documents
        (when given and ``context``) come before the first question, separated as open book separates them."""
        from engrain.chat import render
        from engrain.documents.qa import SEPARATOR

        docs = self.context + SEPARATOR if context and self.context else ""
        if self.template is None:
            past = "".join(f"Question: {q}\nAnswer: {a}{SEPARATOR}" for q, a in turns)
            return f"{docs}{past}Question: {question}\nAnswer:"
        messages = [m for q, a in turns for m in ({"role": "user", "content": q}, {"role": "assistant", "content": a})]
        messages.append({"role": "user", "content": question})
        messages[0] = {**messages[0], "content": docs + messages[0]["content"]}
        return render(self.lm.tokenizer, self.template, messages, generation=True)

    def encode(self, text: str) -> list[int]:
        """With the tokenizer's BOS, if it adds one (a template's own BOS text is left out: engrain.chat), as scoring reads it."""
        ids = self.lm.tokenizer(text, add_special_tokens=True)["input_ids"]
        if self.lm.max_length and len(ids) >= self.lm.max_length:
            raise EngrainError(f"the prompt is {len(ids)} tokens, the model's window {self.lm.max_length}: shorten --context "
                               "or the conversation (/reset)")
        return ids

    def generate(self, prompts: list[str], settings: Settings, streamer=None) -> list[str]:
        """One answer per prompt (a batch, left-padded), stripped of what follows its end."""
        from engrain.forward import pad

        tok, model = self.lm.tokenizer, self.lm.model
        ids, mask = pad([self.encode(p) for p in prompts], tok.pad_token_id, "left")
        eos = model.generation_config.eos_token_id if model.generation_config.eos_token_id is not None else tok.eos_token_id
        kw = {"max_new_tokens": settings.max_new_tokens, "pad_token_id": tok.pad_token_id, "eos_token_id": eos}
        kw.update({"do_sample": True, "temperature": settings.temperature, "top_p": settings.top_p} if settings.temperature > 0
                  else {"do_sample": False, "temperature": None, "top_p": None, "top_k": None})
        if self.template is None:
            kw.update(stop_strings=list(PLAIN_STOPS), tokenizer=tok)
        torch.manual_seed(settings.seed)
        with torch.inference_mode():
            out = model.generate(input_ids=ids.to(self.lm.device), attention_mask=mask.to(self.lm.device), streamer=streamer, **kw)
        return [self.finish(t) for t in tok.batch_decode(out[:, ids.shape[1]:], skip_special_tokens=True)]

    def finish(self, text: str) -> str:
        if self.template is None:
            for stop in PLAIN_STOPS:
                text = text.split(stop)[0]
        return text.strip()


def load(model: str, adapter: str | None, precision: str = "auto", device: str = "auto"):
    """The base ``model``, or the model trained in ``adapter`` (a run folder), in the compute dtype."""
    from engrain.models import inference_copy, load_model, resolve_dtype
    from engrain.params import load_trained, read_adapter_meta

    if adapter is None:
        return load_model(model, precision, device)
    if not Path(adapter).is_dir():
        raise EngrainError(f"--adapter: run folder not found: {adapter} (a folder `engrain train --save` wrote)")
    if read_adapter_meta(adapter)["method"] == "head":
        raise EngrainError(f"{adapter} is a classification-head run: it labels inputs (engrain eval --adapter {adapter}) and "
                           "writes no answers; ask its base model, or a pbft / distill / cpt / cft run")
    lm, _, _ = load_trained(adapter, device)
    lm.dtype = resolve_dtype(precision, lm.device)
    lm.model = inference_copy(lm.model, lm.dtype)
    return lm


def read_context(path: str | None) -> str | None:
    """Documents for the prompt: any corpus engrain reads (a folder, a .txt/.md file, a JSONL), joined as open book joins them."""
    if path is None:
        return None
    from engrain.documents import load_corpus
    from engrain.documents.qa import SEPARATOR

    return SEPARATOR.join(d.text for d in load_corpus(path))


def read_questions(path: str) -> list[str]:
    """A .txt file (one question a line) or a JSONL file of {"question": ...} (engrain's questions format included)."""
    p = Path(path)
    if not p.is_file():
        raise EngrainError(f"--questions: file not found: {path}")
    if p.suffix.lower() != ".jsonl":
        questions = [line.strip() for line in p.read_text().splitlines() if line.strip()]
    else:
        from engrain.tasks.loaders import jsonl_rows

        questions = []
        for n, row in jsonl_rows(p):
            if not isinstance(row.get("question"), str):
                raise EngrainError(f"{path}:{n}: expected an object with a \"question\" string")
            questions.append(row["question"])
    if not questions:
        raise EngrainError(f"--questions {path}: no questions in it")
    return questions


def ask(asker: Asker, questions: list[str], settings: Settings, compare: bool = False, batch_size: int = 8) -> list[dict]:
    """Each question's answer (``answer``), or with ``compare`` its closed-book and open-book answers."""
    rows = []
    for b in range(0, len(questions), batch_size):
        part = questions[b : b + batch_size]
        if compare:
            closed = asker.generate([asker.prompt([], q, context=False) for q in part], settings)
            opened = asker.generate([asker.prompt([], q) for q in part], settings)
            rows += [{"question": q, "closed_book": c, "open_book": o} for q, c, o in zip(part, closed, opened)]
        else:
            rows += [{"question": q, "answer": a} for q, a in zip(part, asker.generate([asker.prompt([], q) for q in part], settings))]
    return rows


class _Streamer:
    """Prints a reply as it is generated, holding back any text that may begin a stop string (plain Q/A)."""

    def __init__(self, asker: Asker, out=None):
        from transformers import TextStreamer

        self.asker, self.out, self.shown, self.text, self.done = asker, out or sys.stdout, 0, "", False
        streamer = self

        class Stream(TextStreamer):
            def on_finalized_text(self, text: str, stream_end: bool = False) -> None:
                streamer.add(text, stream_end)

        self.inner = Stream(asker.lm.tokenizer, skip_prompt=True, skip_special_tokens=True)

    def add(self, text: str, end: bool) -> None:
        self.text += text
        stops = PLAIN_STOPS if self.asker.template is None else ()
        cut = min([i for s in stops if (i := self.text.find(s)) >= 0] or [len(self.text)])
        hold = 0 if end else max([k for s in stops for k in range(1, len(s)) if self.text[:cut].endswith(s[:k])] or [0])
        if not self.done:
            self.out.write(self.text[self.shown : cut - hold].lstrip() if self.shown == 0 else self.text[self.shown : cut - hold])
            self.out.flush()
            self.shown = max(self.shown, cut - hold)
            self.done = cut < len(self.text)
        if end:
            self.out.write("\n")


def chat(asker: Asker, settings: Settings, lines=None, out=None) -> list[tuple[str, str]]:
    """Read a message a line (``/reset`` forgets the conversation, ``/exit`` or end of input ends it), stream
    each reply; returns the conversation since the last reset."""
    lines, out = lines or sys.stdin, out or sys.stdout
    turns: list[tuple[str, str]] = []
    interactive = getattr(lines, "isatty", lambda: False)()
    while True:
        if interactive:
            out.write("> ")
            out.flush()
        line = lines.readline()
        if not line or line.strip() == "/exit":
            return turns
        message = line.strip()
        if not message:
            continue
        if message == "/reset":
            turns = []
            out.write("(conversation reset)\n")
            continue
        streamer = _Streamer(asker, out)
        reply = asker.generate([asker.prompt(turns, message)], settings, streamer=streamer.inner)[0]
        turns.append((message, reply))
