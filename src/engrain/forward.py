"""Forward-pass primitives shared by scoring, training and the methods: padded batches, position
ids after a cached context, last-token outputs, and the context's KV cache (computed once, read by
each batch of queries packed into one row).
"""

from __future__ import annotations

import contextlib
import copy
from typing import Sequence

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel


# cuDNN's SDPA backward (picked by default for bf16 on Hopper; torch 2.11 and later) returns NaN
# gradients when a mask is passed, the sequence length is 64 mod 128 and a row's attention is all
# masked or tiny, as a left pad's is: pytorch/pytorch#196678. On an H200 (torch 2.11) distill-LoRA in
# bf16 turned every weight NaN in its last epoch while the same run in fp32 (no cuDNN) trained clean;
# this is the likely cause, not yet confirmed by a rerun there. Training forwards on CUDA use the
# other kernels (memory-efficient where there is a mask; a backward runs the forward's kernel);
# inference keeps cuDNN, whose forward is right.
TRAINING_SDPA_BACKENDS = [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]


def training_attention(device: torch.device):
    """The attention kernels a training forward may use on ``device``: all but cuDNN's on CUDA."""
    return sdpa_kernel(TRAINING_SDPA_BACKENDS) if device.type == "cuda" else contextlib.nullcontext()


def length_sorted_batches(lengths: Sequence[int], batch_size: int) -> list[list[int]]:
    """Indices grouped into batches of similar length (longest first), so padding stays small."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]


def padding_side(model: torch.nn.Module) -> str:
    """Where a model's batches get their padding.

    Left by default: every prompt then ends at the last position, the only one that needs logits.
    Right for models with sliding-window attention (Gemma 3, Mistral): after a cached context (or a
    KV prefix) left padding leaves a gap of pads before each query, and a sliding-window layer counts
    those slots against its window, so it would stop seeing context tokens it should see. Right
    padding costs a few more logit rows per batch (one per distinct prompt length).
    """
    cfg = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    return "right" if getattr(cfg, "sliding_window", None) else "left"


def pad(seqs: Sequence[Sequence[int]], pad_id: int, side: str = "left") -> tuple[torch.Tensor, torch.Tensor]:
    """(B, T) ids and mask, padded on ``side`` to the longest sequence."""
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, s in enumerate(seqs):
        span = slice(width - len(s), width) if side == "left" else slice(0, len(s))
        ids[i, span] = torch.tensor(list(s), dtype=torch.long)
        mask[i, span] = 1
    return ids, mask


def positions(mask: torch.Tensor, offset: int = 0) -> torch.Tensor:
    """Position ids (B, T) of a padded batch that follows ``offset`` cached positions."""
    return (mask.cumsum(-1) - 1).clamp(min=0) + offset


def last_token_outputs(model: torch.nn.Module, ids: torch.Tensor, mask: torch.Tensor, past=None, n_past: int = 0,
                       hidden: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Logits (B, V) and, with ``hidden``, final hidden states (B, H) at each row's last real token.

    ``ids``/``mask`` are a padded batch (either side) running after ``n_past`` cached positions
    (``past``; a peft prefix adapter adds its own). Only the rows' distinct last positions get
    logits (``logits_to_keep`` as indices): one position when left-padded, never (B, T, V).
    """
    last = (mask * torch.arange(mask.shape[1], device=mask.device)).argmax(-1)  # (B,) each row's last real token
    keep, col = torch.unique(last, return_inverse=True)
    full_mask = mask
    if n_past:
        full_mask = torch.cat([torch.ones(len(ids), n_past, dtype=mask.dtype, device=mask.device), mask], dim=1)
    out = model(input_ids=ids, attention_mask=full_mask, position_ids=positions(mask, n_past), past_key_values=past,
                use_cache=past is not None, logits_to_keep=keep, output_hidden_states=hidden)
    rows = torch.arange(len(ids), device=ids.device)
    logits = out.logits[rows, col]  # (B, V)
    return logits, out.hidden_states[-1][rows, last] if hidden else None


@torch.no_grad()
def encode_context(model: torch.nn.Module, context_ids: Sequence[int]):
    """KV cache of the context (batch 1), or None for an empty context.

    Every layer keeps every position: a sliding-window layer still masks by its window (the model
    applies it from its config), but its cache is not trimmed, so the cache can also initialise a
    KV prefix of any length (the Cartridges initialisation)."""
    from transformers import DynamicCache

    if not context_ids:
        return None
    ids = torch.tensor([list(context_ids)], device=model.device)
    out = model(input_ids=ids, attention_mask=torch.ones_like(ids), past_key_values=DynamicCache(), use_cache=True,
                logits_to_keep=1)
    return out.past_key_values


def repeat_cache(cache, n: int):
    """``cache`` (batch 1) as a batch of ``n`` without copying it: each layer's keys and values are
    broadcast views, so the forward pass's concatenation with the queries' keys makes the only copy
    (a deep copy repeated to the batch would hold the context's KV twice during the forward)."""
    past = copy.copy(cache)
    past.layers = []
    for layer in cache.layers:
        view = copy.copy(layer)
        if getattr(layer, "keys", None) is not None and layer.keys.numel():
            view.keys = layer.keys.expand(n, *layer.keys.shape[1:])
            view.values = layer.values.expand(n, *layer.values.shape[1:])
        past.layers.append(view)
    return past


def last_outputs(
    model: torch.nn.Module,
    context_ids: Sequence[int],
    queries: Sequence[Sequence[int]],
    batch_size: int = 16,
    pad_id: int = 0,
    cache=None,
    hidden: bool = False,
    pack: bool | None = None,
):
    """Yield (indices, logits (B, V), hidden (B, H) or None) per batch of queries run after the context,
    at each query's last token.

    ``cache`` may hold the context's KV cache from :func:`encode_context` (computed here otherwise).
    After a context, a batch of queries runs packed into one row (:func:`packed_last_outputs`) where
    the model allows it (:func:`packs_queries`) and ``pack`` is True, or None (the default) and the
    batch's query tokens are at most :data:`PACK_MAX_RATIO` times the context's; otherwise, and without
    a context, as a batch padded on the model's :func:`padding_side`, each row after a view of the
    context's cache repeated to the batch size.
    """
    if cache is None:
        cache = encode_context(model, context_ids)
    n_ctx, dev, side = len(context_ids), model.device, padding_side(model)
    can_pack = cache is not None and pack is not False and packs_queries(model)
    for idx in length_sorted_batches([len(q) for q in queries], batch_size):
        if can_pack and (pack or sum(len(queries[i]) for i in idx) <= PACK_MAX_RATIO * n_ctx):
            yield (idx, *packed_last_outputs(model, cache, n_ctx, [queries[i] for i in idx], hidden))
            continue
        ids, mask = pad([queries[i] for i in idx], pad_id, side)
        past = repeat_cache(cache, len(idx)) if cache is not None else None
        yield (idx, *last_token_outputs(model, ids.to(dev), mask.to(dev), past, n_ctx if past is not None else 0, hidden))


PACK_MAX_RATIO = 2
"""Pack a batch after a context when its query tokens are at most this many times the context's. A
packed row's attention grows with the square of its length, a padded batch's cost with the copies of
the context's cache: measured on smollm2-135m, RTE, 2-core CPU, bf16 (query tokens / context tokens
-> packed / padded speed): 0.1-0.5 (k = 64) -> 1.7-1.9x; 0.2-1.8 (k = 16) -> 1.0-1.15x; 1.1-9.2 (k = 4)
-> 0.57-0.93x (batches of 4 to 32 queries of 83 tokens on average)."""


def packs_queries(model: torch.nn.Module) -> bool:
    """Whether :func:`packed_last_outputs` can run ``model``: SDPA attention (which takes a boolean 4D
    mask as it is), and, with sliding-window layers, a model that takes one mask per layer type."""
    cfg = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    if getattr(cfg, "_attn_implementation", None) != "sdpa":
        return False
    return not getattr(cfg, "sliding_window", None) or getattr(cfg, "model_type", "") in ("gemma3_text", "gemma3")


def packed_mask(n_ctx: int, lengths: Sequence[int], device, window: int | None = None) -> torch.Tensor:
    """(1, 1, L, n_ctx + L) boolean mask (True: attends) for queries of ``lengths`` (L in all) packed into one
    row after a cached context of ``n_ctx`` positions: each token sees the context and the earlier tokens of
    its own query, at positions n_ctx + its place in the query; with ``window``, only keys fewer than
    ``window`` positions back (a sliding-window layer's rule)."""
    seg = torch.repeat_interleave(torch.arange(len(lengths), device=device), torch.tensor(list(lengths), device=device))
    pos = torch.cat([torch.arange(n, device=device) for n in lengths]) + n_ctx  # (L,)
    key_seg = torch.cat([torch.full((n_ctx,), -1, device=device), seg])
    key_pos = torch.cat([torch.arange(n_ctx, device=device), pos])
    mask = ((key_seg[None, :] == -1) | (key_seg[None, :] == seg[:, None])) & (key_pos[None, :] <= pos[:, None])
    if window:
        mask &= pos[:, None] - key_pos[None, :] < window
    return mask[None, None]


def packed_last_outputs(model: torch.nn.Module, cache, n_ctx: int, queries: Sequence[Sequence[int]], hidden: bool = False):
    """As :func:`last_token_outputs` for a batch of queries after a cached context, run as one row: the
    queries are concatenated (no padding) and a block mask keeps each to the context and itself. The
    context's KV cache is then read once per forward pass, not copied once per query as a batch of B
    rows needs (B copies of a long context's keys and values dominate ICL's time at large k)."""
    dev, lengths = model.device, [len(q) for q in queries]
    ids = torch.tensor([[t for q in queries for t in q]], device=dev)
    pos = torch.cat([torch.arange(n, device=dev) for n in lengths])[None] + n_ctx
    cfg = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    mask = packed_mask(n_ctx, lengths, dev)
    if getattr(cfg, "sliding_window", None):  # one mask per layer type (Gemma 3)
        mask = {"full_attention": mask, "sliding_attention": packed_mask(n_ctx, lengths, dev, cfg.sliding_window)}
    last = torch.tensor(lengths, device=dev).cumsum(0) - 1  # each query's last token in the row
    out = model(input_ids=ids, attention_mask=mask, position_ids=pos, past_key_values=repeat_cache(cache, 1), use_cache=True,
                logits_to_keep=last, output_hidden_states=hidden)
    return out.logits[0], out.hidden_states[-1][0, last] if hidden else None


def continuation_logprobs(model: torch.nn.Module, ids: torch.Tensor, mask: torch.Tensor, starts: torch.Tensor,
                          past=None, n_past: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Sum of log-probabilities (B,) of each row's tokens from ``starts[b]`` on, and how many they are (B,).

    ``ids``/``mask`` (B, T) are right-padded rows running after ``n_past`` cached positions; token t of a
    row is scored by the logits at t - 1, so ``starts`` must be >= 1 (the continuation follows a prompt).
    """
    full_mask = mask
    if n_past:
        full_mask = torch.cat([torch.ones(len(ids), n_past, dtype=mask.dtype, device=mask.device), mask], dim=1)
    logits = model(input_ids=ids, attention_mask=full_mask, position_ids=positions(mask, n_past), past_key_values=past,
                   use_cache=past is not None).logits[:, :-1].float()  # (B, T-1, V)
    logp = logits.log_softmax(-1).gather(-1, ids[:, 1:, None])[..., 0]  # (B, T-1): log p(token t | tokens < t)
    cols = torch.arange(1, ids.shape[1], device=ids.device)
    scored = (cols[None, :] >= starts[:, None]) & mask[:, 1:].bool()  # (B, T-1)
    return (logp * scored).sum(-1), scored.sum(-1)


@torch.no_grad()
def sample_with_topk(model: torch.nn.Module, prompts: Sequence[Sequence[int]], max_new_tokens: int, eos_id: int | None,
                     pad_id: int, topk: int, temperature: float = 1.0, generators: Sequence[torch.Generator] | None = None):
    """Sample a continuation of each prompt (a batch, left-padded, decoded with the KV cache) and keep,
    at every generated position, the model's top-``topk`` next-token log-probabilities (full-vocabulary
    log-softmax at temperature 1, whatever ``temperature`` the sampling uses): the distribution each
    generated token was drawn from, so a distillation teacher needs no second pass over its own text.

    Returns per prompt (generated ids, topk log-probs (n, K), topk ids (n, K)); a row stops after its
    EOS (kept: the teacher predicted it) or at ``max_new_tokens``. ``temperature`` 0 decodes greedily.
    ``generators``: one per prompt, so that what a prompt samples does not depend on the batch it is in.
    """
    from transformers import DynamicCache

    dev = model.device
    ids, mask = pad(prompts, pad_id, "left")  # every row ends at the last column: the next token is one column for all
    ids, mask = ids.to(dev), mask.to(dev)
    out = model(input_ids=ids, attention_mask=mask, position_ids=positions(mask), past_key_values=DynamicCache(), use_cache=True,
                logits_to_keep=1)
    n, done = len(prompts), torch.zeros(len(prompts), dtype=torch.bool, device=dev)
    tokens, values, indices = [], [], []
    for _ in range(max_new_tokens):
        logp = out.logits[:, -1].float().log_softmax(-1)  # (B, V)
        v, i = logp.topk(topk, dim=-1)
        if temperature > 0:
            probs = (logp / temperature).softmax(-1).cpu()
            gens = generators or [None] * n
            nxt = torch.stack([torch.multinomial(probs[b], 1, generator=gens[b])[0] for b in range(n)]).to(dev)
        else:
            nxt = logp.argmax(-1)
        nxt = nxt.masked_fill(done, pad_id)
        tokens.append(nxt.cpu()), values.append(v.cpu()), indices.append(i.cpu())
        mask = torch.cat([mask, (~done).long()[:, None]], dim=1)
        done = done | (nxt == eos_id) if eos_id is not None else done
        if bool(done.all()):
            break
        out = model(input_ids=nxt[:, None], attention_mask=mask, position_ids=positions(mask)[:, -1:],
                    past_key_values=out.past_key_values, use_cache=True)
    tokens, values, indices = torch.stack(tokens, 1), torch.stack(values, 1), torch.stack(indices, 1)  # (B, S), (B, S, K)
    results = []
    for b in range(n):
        length = len(tokens[b])
        if eos_id is not None and (tokens[b] == eos_id).any():
            length = int((tokens[b] == eos_id).nonzero()[0]) + 1
        results.append((tokens[b, :length].tolist(), values[b, :length], indices[b, :length]))
    return results


def sample_by_length(model: torch.nn.Module, prompts: Sequence[Sequence[int]], max_new_tokens: int, eos_id: int | None, pad_id: int,
                     topk: int, temperature: float, generators: Sequence[torch.Generator], batch_size: int) -> list:
    """:func:`sample_with_topk` over many prompts, in batches of similar length (little padding), results in the
    prompts' order; one generator per prompt, so what a prompt samples does not depend on the batch size."""
    order = sorted(range(len(prompts)), key=lambda i: -len(prompts[i]))
    out: list = [None] * len(prompts)
    for b in range(0, len(order), batch_size):
        idx = order[b : b + batch_size]
        batch = sample_with_topk(model, [prompts[i] for i in idx], max_new_tokens, eos_id, pad_id, topk, temperature,
                                 [generators[i] for i in idx])
        for i, o in zip(idx, batch):
            out[i] = o
    return out
