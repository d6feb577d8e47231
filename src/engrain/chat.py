"""Chat templates (``--chat-template none|auto|FILE``): which template, a conversation rendered through it,
and a conversation as a training item whose loss covers the assistant's turns only.

One rule for BOS everywhere (labelled prompts, documents questions, conversations, ``engrain ask``): where the
tokenizer adds a BOS itself, the BOS text a template writes is left out of the rendered text, so that the
text encoded with the tokenizer's special tokens holds exactly one BOS (never two, as Gemma's template and
tokenizer would give together).
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from engrain.errors import EngrainError

ROLES = ("system", "user", "assistant")


def chat_template(tokenizer, choice: str) -> str | None:
    """``auto``: the tokenizer's own template, if it has one (else None: plain text); ``none``; or a Jinja file's."""
    if choice == "none":
        return None
    if choice == "auto":
        return getattr(tokenizer, "chat_template", None) or None
    path = Path(choice)
    if not path.is_file():
        raise EngrainError(f"--chat-template must be auto, none or a Jinja template file; file not found: {choice}")
    return path.read_text()


def adds_bos(tokenizer) -> bool:
    return bool(tokenizer("", add_special_tokens=True)["input_ids"])


def render(tokenizer, template: str, messages: Sequence[dict], generation: bool = False, continue_final: bool = False) -> str:
    """``messages`` through ``template``, without the template's BOS text where the tokenizer adds one (module
    docstring); ``generation`` adds the assistant's turn opening, ``continue_final`` leaves the last (assistant)
    message open, so that what follows continues it."""
    text = tokenizer.apply_chat_template(list(messages), chat_template=template, tokenize=False,
                                         add_generation_prompt=generation, continue_final_message=continue_final)
    bos = tokenizer.bos_token
    if bos and text.startswith(bos) and adds_bos(tokenizer):
        text = text[len(bos):]
    return text


def check_messages(messages, where: str) -> list[dict]:
    """A conversation as TRL's ``messages`` format has it: a list of {"role", "content"} with at least one
    assistant turn; one-line errors naming ``where``."""
    if not isinstance(messages, list) or not messages:
        raise EngrainError(f"{where}: \"messages\" must be a non-empty list of {{\"role\", \"content\"}} objects")
    for m in messages:
        if not isinstance(m, dict) or m.get("role") not in ROLES or not isinstance(m.get("content"), str):
            raise EngrainError(f"{where}: each message needs \"role\" ({', '.join(ROLES)}) and \"content\" (a string); got {m!r}"[:300])
    if not any(m["role"] == "assistant" for m in messages):
        raise EngrainError(f"{where}: the conversation has no assistant turn, so nothing to train on")
    return [{"role": m["role"], "content": m["content"]} for m in messages]


def needs_template(where: str) -> str:
    return (f"{where} is chat-formatted (\"messages\"): give a chat template (--chat-template auto, with a tokenizer that has "
            "one, or a Jinja file)")


def conversation_item(tokenizer, template: str | None, messages: Sequence[dict], bos: Sequence[int], where: str = "a conversation") -> dict:
    """A conversation as a training item: ``bos`` (the tokenizer's BOS, unless a KV prefix holds it), then the
    rendered conversation; the loss covers each assistant turn's tokens, its end-of-turn marker included (what
    TRL's ``assistant_only_loss`` trains), never the prompts. Each span is tokenised on its own, cut where the
    template's renders of the conversation so far end, so a prompt's tokens are exactly those generation reads."""
    if template is None:
        raise EngrainError(needs_template(where))
    encode = lambda text: tokenizer(text, add_special_tokens=False)["input_ids"]  # noqa: E731
    ids, mask, done = list(bos), [0] * len(bos), ""
    for i, m in enumerate(messages):
        if m["role"] != "assistant":
            continue
        cut = [(render(tokenizer, template, messages[:i], generation=True), 0), (render(tokenizer, template, messages[: i + 1]), 1)]
        for text, target in cut:
            if not text.startswith(done):
                raise EngrainError("this chat template does not render a conversation as its earlier turns followed by the new "
                                   "ones (it rewrites earlier turns), so assistant turns cannot be cut out for the loss")
            span = encode(text[len(done):])
            ids += span
            mask += [target] * len(span)
            done = text
    return {"input_ids": ids, "loss_mask": mask}
