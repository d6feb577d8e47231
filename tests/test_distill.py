"""Context distillation: the cached teacher, the prefix student at initialisation, the KL loss."""

from __future__ import annotations

import json

import pytest
import torch

from engrain.config import TrainConfig
from engrain.data import Prompter, sample_few_shot
from engrain.errors import EngrainError
from engrain.evaluation import score, score_uncached
from engrain.forward import encode_context, padding_side
from engrain.methods.distill import Distill, kl_divergence, teacher_outputs
from engrain.models import load_model
from engrain.params import ParamSpec, apply_params
from engrain.tasks import get_task, load_split
from engrain.methods import collate
from engrain.train import train_model


@pytest.fixture()
def setup(tiny_any_dir, data_dir):
    lm = load_model(str(tiny_any_dir), "fp32", "cpu")  # fresh: some tests attach adapters
    spec = get_task("rte")
    p = Prompter(spec, spec.prompt_format(), lm.tokenizer)
    demos = sample_few_shot(spec, load_split(spec, "train", data_dir), 4, 0)
    transfer = load_split(spec, "train", data_dir)[100:111]
    return lm, p, demos, transfer


def test_cached_teacher_equals_a_fresh_teacher_pass(setup):
    lm, p, demos, transfer = setup
    ctx, q, v = p.context_ids(demos), p.query_ids(transfer, True), p.verbalizer_ids()
    cached = teacher_outputs(lm.model, ctx, q, v, batch_size=4, pad_id=lm.tokenizer.pad_token_id, topk=5)
    fresh, _ = score_uncached(lm.model, ctx, q, v, batch_size=3, pad_id=lm.tokenizer.pad_token_id)
    torch.testing.assert_close(cached.verbalizer_logits, fresh, atol=1e-4, rtol=1e-4)
    full = lm.model(input_ids=torch.tensor([ctx + q[0]])).logits[0, -1].log_softmax(-1)
    values, ids = full.topk(5)
    assert cached.topk_ids[0].tolist() == ids.tolist()
    torch.testing.assert_close(cached.topk_logprobs[0], values, atol=1e-4, rtol=1e-4)


def prefix_student(lm, ctx, tokens=None):
    cache = encode_context(lm.model, ctx)
    return apply_params(lm.model, ParamSpec("prefix", prefix_tokens=tokens or 0), cache, len(ctx))


def test_prefix_student_at_init_reproduces_the_icl_teacher(setup):
    lm, p, demos, transfer = setup
    ctx, q, v = p.context_ids(demos), p.query_ids(transfer, True), p.verbalizer_ids()
    teacher, _ = score(lm.model, ctx, q, v, 4, lm.tokenizer.pad_token_id)
    student = prefix_student(lm, ctx)
    got, _ = score(student, [], q, v, 4, lm.tokenizer.pad_token_id)
    torch.testing.assert_close(got, teacher, atol=1e-4, rtol=1e-4)
    assert torch.equal(got.argmax(-1), teacher.argmax(-1))
    assert teacher.std(0).min() > 1e-3, "scores must vary between inputs, or this test proves nothing"


def test_a_shorter_prefix_starts_as_the_first_tokens_of_the_context(setup):
    """--prefix-tokens N: the Cartridges initialisation keeps the KV of the context's first N tokens."""
    lm, p, demos, transfer = setup
    ctx, q, v = p.context_ids(demos), p.query_ids(transfer, True), p.verbalizer_ids()
    n = len(ctx) // 3
    truncated, _ = score(lm.model, ctx[:n], q, v, 4, lm.tokenizer.pad_token_id)
    whole, _ = score(lm.model, ctx, q, v, 4, lm.tokenizer.pad_token_id)
    student = prefix_student(lm, ctx, n)
    assert student.peft_config["default"].num_virtual_tokens == n
    got, _ = score(student, [], q, v, 4, lm.tokenizer.pad_token_id)
    torch.testing.assert_close(got, truncated, atol=1e-4, rtol=1e-4)
    assert (got - whole).abs().max() > 1e-2, "the first third of the context must score differently from all of it"


def items(queries, examples) -> list[dict]:
    return [{"input_ids": ids, "label": ex["label"], "index": i} for i, (ids, ex) in enumerate(zip(queries, examples))]


@pytest.mark.parametrize("kind,kl", [("verbalizer", "forward"), ("verbalizer", "reverse"), ("topk", "forward")])
def test_kl_is_zero_when_student_is_teacher(setup, kind, kl):
    lm, p, demos, transfer = setup
    ctx, q, v = p.context_ids(demos), p.query_ids(transfer, True), p.verbalizer_ids()
    teacher = teacher_outputs(lm.model, ctx, q, v, 4, lm.tokenizer.pad_token_id, topk=8)
    student = prefix_student(lm, ctx)
    side = padding_side(student)  # as training pads: left would cut a Gemma student off its prefix
    batch = collate(items(q, transfer), lm.tokenizer.pad_token_id, side)
    loss = Distill(v, teacher, kind, kl, temperature=2.0).loss(student, batch)
    assert abs(loss.item()) < 1e-5
    # ... and not zero for a student without the context
    plain = collate(items(p.query_ids(transfer, False), transfer), lm.tokenizer.pad_token_id, side)
    assert Distill(v, teacher, kind, kl).loss(lm.model, plain).item() > 1e-3


def test_kl_divergence_values():
    t = torch.tensor([[0.8, 0.2]]).log()
    s = torch.tensor([[0.5, 0.5]]).log()
    fwd = 0.8 * torch.log(torch.tensor(0.8 / 0.5)) + 0.2 * torch.log(torch.tensor(0.2 / 0.5))
    rev = 0.5 * torch.log(torch.tensor(0.5 / 0.8)) + 0.5 * torch.log(torch.tensor(0.5 / 0.2))
    assert kl_divergence(t, s).item() == pytest.approx(fwd.item(), abs=1e-6)
    assert kl_divergence(t, s, reverse=True).item() == pytest.approx(rev.item(), abs=1e-6)
    assert kl_divergence(t, t).item() == pytest.approx(0.0, abs=1e-7)


def distill_cfg(tiny_model_dir, data_dir, out, **kw):
    base = dict(model=str(tiny_model_dir), task="rte", shots=4, method="distill", params="lora", epochs=6, lr=1e-2, warmup_ratio=0.0,
                transfer_size=24, limit=8, eval_sample=4, precision="fp32", data_dir=str(data_dir), out=str(out), progress=False)
    return TrainConfig(**{**base, **kw})


def test_kl_decreases_in_training_and_record_splits_teacher_time(tiny_model_dir, data_dir, tmp_path):
    rec, _, _ = train_model(distill_cfg(tiny_model_dir, data_dir, tmp_path))
    losses = [c["loss"] for c in rec["curve"]]
    assert losses[-1] < 0.7 * losses[0], losses
    t = rec["teacher"]
    assert t["seconds"] > 0 and t["transfer_examples"] == 24 and t["context_tokens"] > 0
    assert rec["measure"]["train"]["seconds"] > 0
    lines = {e["line"] for e in rec["train_examples"]}
    assert len(lines) == 4  # the demonstrations; the transfer set never contains them
    assert json.loads(open(rec["path"]).read())["teacher"] == t


@pytest.mark.parametrize("params,kw", [("prefix", {}), ("prefix", {"prefix_tokens": 8}), ("bitfit", {}), ("ia3", {}), ("full", {})])
def test_other_students_train_and_round_trip(tiny_model_dir, data_dir, tmp_path, params, kw):
    from engrain import EvalConfig, evaluate

    rec, _, _ = train_model(distill_cfg(tiny_model_dir, data_dir, tmp_path, params=params, epochs=1, transfer_size=8, lr=1e-3, **kw))
    if kw:
        assert rec["name"].startswith("train-rte-distill-prefix-p8-")
        from transformers import AutoConfig

        c = AutoConfig.from_pretrained(tiny_model_dir)
        per_token = 2 * c.num_hidden_layers * c.num_key_value_heads * (c.hidden_size // c.num_attention_heads)  # K and V
        assert rec["trainable_parameters"]["trainable"] == (8 - 1) * per_token  # the first token (attention sink) stays frozen
    ev = evaluate(EvalConfig(model=str(tiny_model_dir), task="rte", adapter=rec["adapter"]["path"], limit=8,
                             data_dir=str(data_dir), out=str(tmp_path / "ev"), progress=False, precision="fp32"))
    for split in ("rte", "hans"):
        assert ev["metrics"][split]["predicted_share"] == rec["metrics"][split]["predicted_share"]


@pytest.mark.parametrize("kw,message", [
    ({"temperature": 0.0}, r"--temperature must be > 0"),
    ({"alpha": 1.5}, r"--alpha must be in \[0, 1\]"),
    ({"shots": 0}, r"--shots must be an integer >= 1"),
    ({"transfer": "all"}, r"--transfer must be one of pool, shots"),
    ({"kl": "js"}, r"--kl must be one of forward, reverse"),
    ({"transfer_size": 0}, r"--transfer-size must be an integer >= 1"),
    ({"params": "prefix", "prefix_tokens": 1}, r"--prefix-tokens must be 0 \(the whole context\) or an integer >= 2"),
    ({"params": "lora", "prefix_tokens": 64}, r"--prefix-tokens applies to --params prefix, not lora"),
])
def test_bad_distill_options(kw, message):
    with pytest.raises(EngrainError, match=message):
        TrainConfig(model="/no/such/model", method="distill", **kw)


def test_empty_transfer_set(tiny_model_dir, tmp_path):
    data = tmp_path / "data" / "rte"
    data.mkdir(parents=True)
    rows = [{"premise": f"p{i}", "hypothesis": "h", "label": ["entailment", "not_entailment"][i % 2]} for i in range(4)]
    (data / "train.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    (data / "val.jsonl").write_text(json.dumps({"premise": "q", "hypothesis": "h", "label": "entailment"}))
    with pytest.raises(EngrainError, match="the transfer set is empty"):
        train_model(distill_cfg(tiny_model_dir, tmp_path / "data", tmp_path / "out", ood=False))


def test_prefix_longer_than_the_context_is_an_error(tiny_model_dir, data_dir, tmp_path):
    with pytest.raises(EngrainError, match=r"--prefix-tokens 100000 is more than the \d+ tokens of the 4 demonstrations"):
        train_model(distill_cfg(tiny_model_dir, data_dir, tmp_path, params="prefix", prefix_tokens=100000))
    assert not list(tmp_path.iterdir())


def test_context_too_long_is_an_error_before_compute(tiny_model_dir, data_dir, tmp_path):
    with pytest.raises(EngrainError, match=r"prompt too long for the model: \d+ context tokens"):
        train_model(distill_cfg(tiny_model_dir, data_dir, tmp_path, shots=200))
    assert not list(tmp_path.iterdir())


def test_the_transfer_set_holds_neither_demonstrations_nor_evaluation_data(tiny_model_dir, data_dir, tmp_path):
    from engrain.data import example_key
    from engrain.evaluation import eval_sets
    from engrain.methods.distill import transfer_set

    cfg = distill_cfg(tiny_model_dir, data_dir, tmp_path, transfer_size=100000, limit=None)
    spec = get_task("rte")
    sets = eval_sets(spec, cfg)
    evaluation = {example_key(s, ex) for s, exs, _ in sets for ex in exs}
    demos = sample_few_shot(spec, load_split(spec, "train", data_dir), 4, 0, exclude=evaluation)
    pool = transfer_set(cfg, spec, demos, evaluation)
    keys = [example_key(spec, ex) for ex in pool]
    train = {example_key(spec, ex) for ex in load_split(spec, "train", data_dir)}
    assert not set(keys) & {example_key(spec, d) for d in demos}
    assert not set(keys) & evaluation
    assert set(keys) == train - evaluation - {example_key(spec, d) for d in demos}  # everything else is in it
    used = evaluation | {example_key(spec, d) for d in demos}
    assert len(keys) == sum(example_key(spec, ex) not in used for ex in load_split(spec, "train", data_dir))  # every remaining row once


@pytest.mark.parametrize("temperature,alpha", [(1.0, 0.0), (2.0, 0.0), (0.5, 0.0), (2.0, 0.3), (1.0, 1.0)])
@pytest.mark.parametrize("kl", ["forward", "reverse"])
def test_distill_loss_values_for_temperature_and_alpha(setup, temperature, alpha, kl):
    """The loss is T^2 KL(softmax(t/T) || softmax(s/T)) mixed with alpha x CE(gold), from numbers worked out here."""
    lm, p, demos, transfer = setup
    v = p.verbalizer_ids()
    ids = [p.context_ids([]) + q for q in p.query_ids(transfer[:6], False)]
    batch = collate([{"input_ids": x, "label": i % 2, "index": i} for i, x in enumerate(ids)], lm.tokenizer.pad_token_id, padding_side(lm.model))
    g = torch.Generator().manual_seed(0)
    teacher = torch.randn(6, 2, generator=g) * 3  # teacher verbaliser logits, far from the student's
    method = Distill(v, type("T", (), {"verbalizer_logits": teacher})(), kl=kl, temperature=temperature, alpha=alpha)
    with torch.no_grad():
        got = method.loss(lm.model, batch).item()
        s = lm.model(**{k: batch[k] for k in ("input_ids", "attention_mask")}).logits
        last = batch["attention_mask"].cumsum(-1).argmax(-1) if padding_side(lm.model) == "right" else torch.full((6,), s.shape[1] - 1)
        s = s[torch.arange(6), last][:, v].double()  # (6, 2) student verbaliser logits
    pt, ps = (teacher.double() / temperature).softmax(-1), (s / temperature).softmax(-1)
    a, b = (pt, ps) if kl == "forward" else (ps, pt)
    kl_value = (a * (a / b).log()).sum(-1).mean().item()
    ce = torch.nn.functional.cross_entropy(s, batch["labels"]).item()
    want = (1 - alpha) * temperature**2 * kl_value + alpha * ce
    assert kl_value > 0.05 and want > 0
    assert got == pytest.approx(want, rel=1e-4, abs=1e-6)
