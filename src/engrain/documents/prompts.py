"""Contextual prompts for Contextual Fine-Tuning (Choi et al., ICLR 2025): a short "how to learn
this" instruction put before each training document; the loss is on the document's tokens only.

The ten styles follow the paper's list, written here in our own words; ``negative`` prompts (that
discourage learning) and ``random`` text of a similar length are the paper's ablations. One prompt
is drawn per document per epoch, from a generator seeded by (seed, epoch), so a run is repeatable.
"""

from __future__ import annotations

import random
from pathlib import Path

from engrain.errors import EngrainError

CONTEXTUAL: dict[str, str] = {
    "application of knowledge": "Read the following with an eye to using it: think about where each fact would help solve a real problem.",
    "in-depth exploration": "Study the following closely. Go beyond the surface and work out how each part connects to the rest.",
    "reflective thinking": "As you read the following, pause on each point and ask yourself what it means and why it holds.",
    "creative interpretation": "Read the following and imagine new situations where these facts would matter; picture them vividly.",
    "summarisation and synthesis": "Read the following and distil it: which few statements capture everything, and how do they fit together?",
    "focus on key concepts": "In the following text, pick out the central names, facts and relations, and commit them to memory.",
    "contextual understanding": "Place the following in its wider setting: who and what it is about, and how it relates to what you know.",
    "critical analysis": "Examine the following carefully: which claims does it make, what supports them, and what follows from them?",
    "question-based learning": "Read the following as if preparing for an exam: for each sentence, ask which question it answers.",
    "comparative learning": "As you read the following, compare each entity with the others: what do they share, where do they differ?",
}

# Ablation: prompts that tell the model not to learn (the paper's "negative" contextual prompts).
NEGATIVE: list[str] = [
    "The following text is unreliable and unimportant; there is no need to remember any of it.",
    "Skim the following without attention: none of it will ever matter again.",
    "Ignore the content below; it is filler with no meaning worth keeping.",
    "Do not try to learn from the following. Its facts are made up and should be forgotten at once.",
    "The following is noise. Treat every statement in it as irrelevant.",
]

_RANDOM_WORDS = ("river stone window quiet lantern orbit copper meadow signal velvet harbor thistle engine "
                 "paper silver garden tunnel amber falcon candle marble pepper violet anchor").split()


def random_prompt(rng: random.Random, words: int = 20) -> str:
    """The random-text ablation: words with no instruction in them, about as long as a contextual prompt."""
    return " ".join(rng.choice(_RANDOM_WORDS) for _ in range(words)).capitalize() + "."


def load_prompts(path: str | Path) -> list[str]:
    """User prompts: one per non-empty line of a UTF-8 text file."""
    p = Path(path)
    try:
        lines = p.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise EngrainError(f"prompts file not found: {p}") from None
    except UnicodeDecodeError:
        raise EngrainError(f"{p}: not UTF-8 text") from None
    prompts = [line.strip() for line in lines if line.strip()]
    if not prompts:
        raise EngrainError(f"{p}: no prompts in it (one per line)")
    return prompts


PROMPT_SETS = ("contextual", "negative", "random")


def prompt_pool(kind: str, path: str | None = None) -> list[str] | None:
    """The prompts to draw from: a file's, or a built-in set; None means fresh random text per draw."""
    if path:
        return load_prompts(path)
    if kind == "contextual":
        return list(CONTEXTUAL.values())
    if kind == "negative":
        return list(NEGATIVE)
    if kind == "random":
        return None
    raise EngrainError(f"--cft-prompts must be one of {', '.join(PROMPT_SETS)}, got {kind!r}")


def draw(pool: list[str] | None, n_docs: int, seed: int, epoch: int) -> list[str]:
    """One prompt per document for ``epoch``: seeded, so the same run draws the same prompts."""
    rng = random.Random(f"cft:{seed}:{epoch}")
    return [rng.choice(pool) if pool is not None else random_prompt(rng) for _ in range(n_docs)]
