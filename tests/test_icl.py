"""ICL scoring invariants on a tiny random model (fp32, exact up to float error)."""

from __future__ import annotations

import json

import pytest
import torch

from engrain import EvalConfig, evaluate
from engrain.data import Prompter, sample_few_shot
from engrain.errors import EngrainError
from engrain.evaluation import map_predictions, mcc, metrics, score, score_uncached
from engrain.forward import encode_context, packed_mask, packs_queries
from engrain.tasks import get_task, load_split


@pytest.fixture(scope="module")
def rte_prompts(tiny, data_dir):
    spec = get_task("rte")
    demos = sample_few_shot(spec, load_split(spec, "train", data_dir), 4, 0)
    val = load_split(spec, "validation", data_dir)[:13]
    p = Prompter(spec, spec.prompt_format(), tiny.tokenizer)
    return p, demos, val


def plain_last_logits(model, ids):
    """Logits at the last position of one unpadded sequence: the ground truth."""
    return model(input_ids=torch.tensor([ids])).logits[0, -1].float()


def test_prefix_cached_equals_uncached(tiny, rte_prompts):
    p, demos, val = rte_prompts
    ctx, q, v = p.context_ids(demos), p.query_ids(val, True), p.verbalizer_ids()
    assert len({len(x) for x in q}) > 3, "queries of different lengths exercise the padding"
    a, top_a = score(tiny.model, ctx, q, v, batch_size=4, pad_id=tiny.tokenizer.pad_token_id)
    b, top_b = score_uncached(tiny.model, ctx, q, v, batch_size=5, pad_id=tiny.tokenizer.pad_token_id)
    torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)
    assert torch.equal(top_a, top_b)
    # ... and both equal running every prompt alone, unpadded.
    for i in (0, 7, 12):
        ref = plain_last_logits(tiny.model, ctx + q[i])
        torch.testing.assert_close(a[i], ref[v], atol=1e-4, rtol=1e-4)
    assert a.std(0).min() > 1e-3, "the tiny model must give input-dependent scores, or this test proves nothing"


def test_cached_scores_equal_each_prompt_alone_for_every_model_family(tiny_any_dir, data_dir, device_precision):
    """Padding must never sit between the cached context and a query: a sliding-window layer (Gemma 3)
    counts its window in cache slots, pads included, so a padded gap would hide context tokens. On CPU,
    and on CUDA in fp32 and bf16 where there is a GPU (tolerances: conftest.logit_tolerance)."""
    from conftest import logit_tolerance

    from engrain.models import load_model

    device, precision = device_precision
    lm = load_model(str(tiny_any_dir), precision, device)
    spec = get_task("rte")
    demos = sample_few_shot(spec, load_split(spec, "train", data_dir), 4, 0)
    val = load_split(spec, "validation", data_dir)[:13]
    p = Prompter(spec, spec.prompt_format(), lm.tokenizer)
    ctx, q, v = p.context_ids(demos), p.query_ids(val, True), p.verbalizer_ids()
    window = getattr(lm.model.config, "sliding_window", None)
    assert window is None or len(ctx) > 4 * window, "the context must outgrow the sliding window"
    assert packs_queries(lm.model), "both families can run queries packed into one row"
    a, top = score(lm.model, ctx, q, v, batch_size=4, pad_id=lm.tokenizer.pad_token_id)
    b, _ = score_uncached(lm.model, ctx, q, v, batch_size=5, pad_id=lm.tokenizer.pad_token_id)
    c, _ = score(lm.model, ctx, q, v, batch_size=4, pad_id=lm.tokenizer.pad_token_id, pack=False)  # a padded batch after the cache
    d, _ = score(lm.model, ctx, q, v, batch_size=4, pad_id=lm.tokenizer.pad_token_id, pack=True)  # packed into one row
    with torch.no_grad():
        ref = torch.stack([lm.model(input_ids=torch.tensor([ctx + x], device=lm.device)).logits[0, -1].float().cpu() for x in q])
    tol = logit_tolerance(device, precision, ref[:, v])
    torch.testing.assert_close(a, ref[:, v], **tol)
    torch.testing.assert_close(b, ref[:, v], **tol)
    torch.testing.assert_close(c, ref[:, v], **tol)
    torch.testing.assert_close(d, ref[:, v], **tol)
    if precision == "fp32":  # bf16 rounding may flip a near-tie of the full-vocabulary argmax
        assert torch.equal(top, ref.argmax(-1))
    assert a.std(0).min() > 1e-3, "scores must vary between inputs, or this test proves nothing"


def test_packed_mask_keeps_each_query_to_the_context_and_itself():
    """Context of 2, queries of 2 and 1 tokens at positions 2, 3 and 2; keys: ctx0 ctx1 q0t0 q0t1 q1t0."""
    full = [[1, 1, 1, 0, 0], [1, 1, 1, 1, 0], [1, 1, 0, 0, 1]]
    window2 = [[0, 1, 1, 0, 0], [0, 0, 1, 1, 0], [0, 1, 0, 0, 1]]  # keys fewer than 2 positions back
    assert packed_mask(2, [2, 1], "cpu")[0, 0].int().tolist() == full
    assert packed_mask(2, [2, 1], "cpu", window=2)[0, 0].int().tolist() == window2


def test_default_packs_a_batch_only_when_the_context_dominates(tiny, rte_prompts, monkeypatch):
    """pack=None packs a batch whose query tokens are at most PACK_MAX_RATIO x the context's; pack=True always."""
    from engrain import forward

    p, demos, val = rte_prompts
    ctx, q = p.context_ids(demos), p.query_ids(val, True)
    packed_sizes, real = [], forward.packed_last_outputs

    def counting(model, cache, n_ctx, queries, hidden=False):
        packed_sizes.append(sum(map(len, queries)))
        return real(model, cache, n_ctx, queries, hidden)

    monkeypatch.setattr(forward, "packed_last_outputs", counting)

    def run(batch_size, pack=None):
        packed_sizes.clear()
        list(forward.last_outputs(tiny.model, ctx, q, batch_size, tiny.tokenizer.pad_token_id, pack=pack))
        return list(packed_sizes)

    assert len(run(1)) == len(q), "one query is always shorter than twice a 4-shot context"
    big = forward.PACK_MAX_RATIO * len(ctx)
    assert sum(map(len, q)) > big, "all queries together must outgrow the limit, or this test proves nothing"
    assert run(len(q)) == [] and run(len(q), pack=True) == [sum(map(len, q))]
    mixed = run(4)
    assert 0 < len(mixed) and all(n <= big for n in mixed)
    assert run(4, pack=False) == []


@pytest.mark.parametrize("batch_size", [1, 3, 16])
def test_batch_size_does_not_change_scores(tiny, rte_prompts, batch_size):
    p, demos, val = rte_prompts
    ctx, q, v = p.context_ids(demos), p.query_ids(val, True), p.verbalizer_ids()
    ref, _ = score(tiny.model, ctx, q, v, batch_size=13)
    got, _ = score(tiny.model, ctx, q, v, batch_size=batch_size)
    torch.testing.assert_close(got, ref, atol=1e-4, rtol=1e-4)


def test_cache_is_reused_not_mutated(tiny, rte_prompts):
    p, demos, val = rte_prompts
    ctx, q, v = p.context_ids(demos), p.query_ids(val, True), p.verbalizer_ids()
    cache = encode_context(tiny.model, ctx)
    first, _ = score(tiny.model, ctx, q, v, 4, cache=cache)
    assert cache.get_seq_length() == len(ctx)
    again, _ = score(tiny.model, ctx, q, v, 4, cache=cache)
    torch.testing.assert_close(first, again)


def test_zero_shot_equals_plain_evaluation(tiny, rte_prompts):
    p, _, val = rte_prompts
    ctx, q, v = p.context_ids([]), p.query_ids(val, False), p.verbalizer_ids()
    got, _ = score(tiny.model, ctx, q, v, batch_size=4)
    for i, qi in enumerate(q):
        torch.testing.assert_close(got[i], plain_last_logits(tiny.model, ctx + qi)[v], atol=1e-4, rtol=1e-4)


def test_split_tokenisation_equals_whole_prompt(tiny, rte_prompts):
    p, demos, val = rte_prompts
    for ex in val[:5]:
        whole = tiny.tokenizer(p.context_text(demos) + p.query_text(ex, True))["input_ids"]
        assert whole == p.context_ids(demos) + p.query_ids([ex], True)[0]


def test_prompt_shape(rte_prompts):
    p, demos, val = rte_prompts
    text = p.context_text(demos) + p.query_text(val[0], True)
    blocks = text.split("\n\n")
    assert len(blocks) == len(demos) + 1
    assert all(b.endswith((" Yes", " No")) for b in blocks[:-1])
    assert blocks[-1].endswith("answer:") and "\\n" not in text


def test_verbaliser_must_be_one_token(tiny):
    from engrain.tasks import PromptFormat

    spec = get_task("rte")
    fmt = PromptFormat("{premise} {hypothesis}", {"entailment": " Yes", "not_entailment": " Nopezzzqx"})
    with pytest.raises(EngrainError, match="verbaliser ' Nopezzzqx' .* tokens"):
        Prompter(spec, fmt, tiny.tokenizer).verbalizer_ids()


# ---------------------------------------------------------------------------- metrics


def test_mcc_known_values():
    assert mcc(torch.tensor([[5, 0], [0, 5]])) == pytest.approx(1.0)
    assert mcc(torch.tensor([[0, 5], [5, 0]])) == pytest.approx(-1.0)
    assert mcc(torch.tensor([[5, 0], [5, 0]])) == 0.0  # constant prediction
    # tp=3 fn=1 fp=2 tn=4 -> (3*4-2*1)/sqrt(5*5*4*6)
    assert mcc(torch.tensor([[3, 1], [2, 4]])) == pytest.approx(10 / (5 * 5 * 4 * 6) ** 0.5)


def test_hans_breakdown():
    spec = get_task("hans")
    exs = [
        {"label": 0, "heuristic": "lexical_overlap"},
        {"label": 1, "heuristic": "lexical_overlap"},
        {"label": 1, "heuristic": "subsequence"},
        {"label": 1, "heuristic": "subsequence"},
    ]
    m = metrics(spec, exs, torch.tensor([0, 0, 1, 0]), torch.tensor([False, False, False, True]))
    assert m["accuracy"] == 0.5
    assert m["by_heuristic"]["lexical_overlap"] == {"entailment": 1.0, "not_entailment": 0.0, "all": 0.5}
    assert m["by_heuristic"]["subsequence"] == {"not_entailment": 0.5, "all": 0.5}
    assert m["non_verbalizer_rate"] == 0.25
    assert m["per_label_accuracy"] == pytest.approx({"entailment": 1.0, "not_entailment": 1 / 3})


def test_three_way_predictions_map_to_hans():
    pred = torch.tensor([0, 1, 2, 0])
    got = map_predictions(pred, get_task("mnli3"), get_task("hans"), {"entailment": "entailment", "neutral": "not_entailment", "contradiction": "not_entailment"})
    assert got.tolist() == [0, 1, 1, 0]


# ---------------------------------------------------------------------------- end to end


def test_evaluate_end_to_end(tiny_model_dir, data_dir, tmp_path, device_precision):
    from engrain.models import default_batch_size

    device, precision = device_precision
    cfg = EvalConfig(model=str(tiny_model_dir), task="rte", shots=4, limit=12, precision=precision, device=device,
                     data_dir=str(data_dir), out=str(tmp_path), progress=False)
    rec = evaluate(cfg)
    assert rec["model"]["device"].startswith(device) and rec["model"]["dtype"] == {"fp32": "float32", "bf16": "bfloat16"}[precision]
    assert rec["model"]["attention"] == "sdpa"
    assert rec["config"]["batch_size"] == default_batch_size(torch.device(device)) == {"cpu": 16, "cuda": 64}[device]
    assert set(rec["metrics"]) == {"rte", "hans"}
    assert rec["metrics"]["rte"]["n"] == 12 and rec["metrics"]["hans"]["n"] == 12
    assert "by_heuristic" in rec["metrics"]["hans"]
    assert len(rec["demonstrations"]) == 4
    m = rec["measure"]["rte"]
    assert m["seconds"] > 0 and m["tokens_per_s"] > 0 and m["peak_memory_mb"] > 0 and 0 < m["mfu"] < 1
    on_disk = json.loads((tmp_path / f"{rec['name']}.json").read_text())
    assert on_disk["metrics"] == rec["metrics"]
    assert on_disk["config"]["shots"] == 4 and "torch" in on_disk["versions"]


def test_context_longer_than_window_is_a_clear_error(tiny_model_dir, data_dir, tmp_path):
    cfg = EvalConfig(model=str(tiny_model_dir), task="rte", shots=200, limit=2, precision="fp32", data_dir=str(data_dir), out=str(tmp_path), progress=False)
    with pytest.raises(EngrainError, match=r"prompt too long for the model: \d+ context tokens \+ \d+ .* window of 4096"):
        evaluate(cfg)
    assert not list(tmp_path.iterdir()), "no record for a failed run"
