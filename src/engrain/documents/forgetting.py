"""What learning something costs elsewhere: a model's general abilities before and after training.

Two probes, the same for every run so that records compare:
- RTE 16-shot ICL accuracy on the 277 validation examples (demonstrations: seed 0, class-balanced), the
  project's own ICL scorer;
- perplexity on held-out general text: the first ``HELDOUT_TOKENS`` tokens of the MNLI validation
  premises (fiction, letters, government reports, travel guides, telephone speech), deduplicated, in
  file order, scored in windows of ``WINDOW`` tokens.
"""

from __future__ import annotations

import math

import torch

from engrain.data import Prompter, example_key, sample_few_shot
from engrain.forward import pad, positions
from engrain.measure import Meter
from engrain.tasks import get_task, load_split

VERSION = 2  # bump when the probes change (2: inference copies keep fp32 rotary frequencies) (cached results of the base model are keyed by it)
ICL_TASK, ICL_SHOTS, ICL_SEED = "rte", 16, 0
HELDOUT_TASK, HELDOUT_FIELD, HELDOUT_TOKENS, WINDOW = "mnli", "premise", 4096, 512


def heldout_tokens(tokenizer, data_dir=None, max_tokens: int = HELDOUT_TOKENS) -> list[int]:
    """The first ``max_tokens`` tokens of the held-out text (MNLI validation premises, deduplicated, in file order)."""
    spec = get_task(HELDOUT_TASK)
    seen, ids = set(), []
    for ex in load_split(spec, "validation", data_dir):
        text = ex[HELDOUT_FIELD].strip()
        if text in seen:
            continue
        seen.add(text)
        ids += tokenizer(text + "\n\n", add_special_tokens=False)["input_ids"]
        if len(ids) >= max_tokens:
            break
    return ids[:max_tokens]


def heldout_ids(tokenizer, data_dir=None, max_tokens: int = HELDOUT_TOKENS) -> list[list[int]]:
    """The held-out text as windows of at most WINDOW tokens (BOS first, where the tokenizer adds one)."""
    ids = heldout_tokens(tokenizer, data_dir, max_tokens)
    bos = tokenizer("", add_special_tokens=True)["input_ids"]
    width = WINDOW - len(bos)
    return [bos + ids[i : i + width] for i in range(0, len(ids), width)]


@torch.no_grad()
def perplexity(model, windows: list[list[int]], pad_id: int, batch_size: int = 4) -> float:
    """exp(mean next-token negative log-likelihood) over every window's tokens after its first."""
    nll, n = 0.0, 0
    for b in range(0, len(windows), batch_size):
        ids, mask = pad(windows[b : b + batch_size], pad_id, "right")
        ids, mask = ids.to(model.device), mask.to(model.device)
        logits = model(input_ids=ids, attention_mask=mask, position_ids=positions(mask)).logits[:, :-1].float()
        target = mask[:, 1:].bool()
        nll += torch.nn.functional.cross_entropy(logits[target], ids[:, 1:][target], reduction="sum").item()
        n += int(target.sum())
    return math.exp(nll / n)


def icl_accuracy(model, tokenizer, data_dir=None, batch_size: int = 16) -> float:
    from engrain.evaluation import metrics, score

    spec = get_task(ICL_TASK)
    prompter = Prompter(spec, spec.prompt_format(None, None), tokenizer)
    examples = load_split(spec, "validation", data_dir)
    exclude = {example_key(spec, ex) for ex in examples}
    demos = sample_few_shot(spec, load_split(spec, "train", data_dir), ICL_SHOTS, ICL_SEED, True, exclude)
    verb = prompter.verbalizer_ids()
    cls, top = score(model, prompter.context_ids(demos), prompter.query_ids(examples, with_context=True), verb, batch_size,
                     tokenizer.pad_token_id)
    return metrics(spec, examples, cls.argmax(-1), ~torch.isin(top, torch.tensor(verb)))["accuracy"]


def measure(model, lm, data_dir=None, batch_size: int = 16) -> dict:
    """Both probes on ``model`` (run in ``lm.dtype``) and what they took."""
    with Meter(lm.device) as m, torch.autocast(lm.device.type, dtype=lm.dtype, enabled=lm.dtype != torch.float32):
        windows = heldout_ids(lm.tokenizer, data_dir)
        ppl = perplexity(model, windows, lm.tokenizer.pad_token_id)
        acc = icl_accuracy(model, lm.tokenizer, data_dir, batch_size)
    return {f"{ICL_TASK}_icl{ICL_SHOTS}_accuracy": acc, "heldout_perplexity": ppl,
            "heldout_tokens": sum(len(w) for w in windows), "seconds": m.seconds}
