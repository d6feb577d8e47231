"""Context distillation of documents: a teacher with the chunk in context generates the transfer set
(batched, KV-cached sampling) and its top-k distributions are the student's targets."""

from __future__ import annotations

import pytest
import torch

from engrain.config import TrainConfig
from engrain.errors import EngrainError
from engrain.forward import sample_with_topk
from engrain.methods import build_method, collate
from engrain.methods.distill_docs import SEEDS, topk_kl
from engrain.train import prepare, train_model

from test_documents_train import TEXTS, corpus, doc_cfg  # noqa: F401  (the corpus fixture)


def test_sampled_targets_are_the_model_distribution_at_each_generated_token(tiny_any_dir):
    """The top-k log-probs kept while sampling (left-padded batch, KV cache) equal those of one unpadded
    forward pass over prompt + generated text: the teacher needs no second pass. The Gemma 3 prompts
    are longer than its 8-token sliding window."""
    from engrain.models import load_model

    lm = load_model(str(tiny_any_dir), precision="fp32", device="cpu")
    tok, model = lm.tokenizer, lm.model
    texts = ["The cat sat on the mat. A dog ran in the park.", "Is this true?", "A dog ran in the park. The cat sat on the mat. Yes"]
    prompts = [tok(t, add_special_tokens=True)["input_ids"] for t in texts]
    gens = lambda: [torch.Generator().manual_seed(i) for i in range(len(prompts))]  # noqa: E731
    outs = sample_with_topk(model, prompts, 12, None, tok.pad_token_id, 5, 1.0, gens())
    for prompt, (ids, values, indices) in zip(prompts, outs):
        assert len(ids) == 12 and values.shape == indices.shape == (12, 5)
        with torch.no_grad():
            logp = model(input_ids=torch.tensor([prompt + ids])).logits[0].float().log_softmax(-1)
        ref_values, ref_ids = logp[len(prompt) - 1 : len(prompt) - 1 + len(ids)].topk(5, dim=-1)
        torch.testing.assert_close(values, ref_values, atol=1e-4, rtol=1e-4)
        assert torch.equal(indices, ref_ids)
    again = sample_with_topk(model, prompts, 12, None, tok.pad_token_id, 5, 1.0, gens())
    assert [o[0] for o in again] == [o[0] for o in outs]  # seeded
    alone = [sample_with_topk(model, [p], 12, None, tok.pad_token_id, 5, 1.0, [g])[0] for p, g in zip(prompts, gens())]
    assert [o[0] for o in alone] == [o[0] for o in outs]  # a prompt samples the same text whatever batch it is in
    greedy = sample_with_topk(model, prompts, 12, None, tok.pad_token_id, 5, 0.0)
    assert all(g[0] == g[2][:, 0].tolist() for g in greedy)  # temperature 0: each token is the top-1


def test_sampling_stops_each_row_at_its_eos(tiny):
    tok = tiny.tokenizer
    prompts = [tok("Is this true?")["input_ids"], tok("The cat sat")["input_ids"]]
    first = sample_with_topk(tiny.model, prompts, 6, None, tok.pad_token_id, 3, 0.0)
    eos = first[0][0][2]  # pretend the third greedy token of row 0 is the EOS
    outs = sample_with_topk(tiny.model, prompts, 6, eos, tok.pad_token_id, 3, 0.0)
    assert outs[0][0] == first[0][0][:3] and len(outs[0][1]) == 3  # the EOS is kept, nothing after it
    cut = first[1][0].index(eos) + 1 if eos in first[1][0] else 6
    assert outs[1][0] == first[1][0][:cut]


def test_the_transfer_set_does_not_depend_on_the_batch_size(tiny_model_dir, data_dir, tmp_path, corpus):
    """The scoring batch size differs between CPU (16) and GPU (64) defaults: the texts must not follow it."""
    texts = []
    for batch_size in (1, 5):
        run = prepare(doc_cfg(tiny_model_dir, data_dir, tmp_path, corpus, "distill", gen_tokens=8, batch_size=batch_size))
        texts.append(build_method("distill", run).transfer_texts(run.lm.tokenizer))
    assert texts[0] == texts[1] and len(set(texts[0])) > 1


def test_transfer_items_hold_the_seed_and_generated_text_never_the_chunk(tiny_model_dir, data_dir, tmp_path, corpus):
    cfg = doc_cfg(tiny_model_dir, data_dir, tmp_path, corpus, "distill", samples_per_chunk=len(SEEDS), gen_tokens=10, chunk_tokens=24)
    run = prepare(cfg)
    method = build_method("distill", run)
    tok = run.lm.tokenizer
    assert len(method.items) == len(SEEDS) * len(run.chunks) and len(run.chunks) > 2
    seeds = set(SEEDS) - {""} | {"\n\n"}  # the continuation seed: the student reads the blank line the teacher saw
    for item, (values, ids) in zip(method.items, method.targets):
        head = [t for t, m in zip(item["input_ids"], item["loss_mask"]) if not m]
        assert tok.decode(head, skip_special_tokens=True) in seeds  # BOS and a seed prompt: no chunk text
        n = sum(item["loss_mask"])
        assert 1 <= n <= 10 and values.shape == ids.shape == (n, cfg.topk)  # one target per generated token
        assert item["loss_mask"][-n:] == [1] * n and item["loss_mask"][0] == 0  # a target has a token before it
    t = method.record["teacher"]
    assert t["samples"] == len(method.items) and t["generated_tokens"] == sum(sum(it["loss_mask"]) for it in method.items)
    assert t["seconds"] > 0 and t["generated_tokens_per_s"] > 0
    assert build_method("distill", prepare(cfg)).transfer_texts(tok) == method.transfer_texts(tok)  # seeded


def test_the_loss_is_zero_when_the_student_is_the_teacher_it_was_given(tiny_model_dir, data_dir, tmp_path, corpus):
    """Replace the targets by the student's own top-k at each generated token: a mean KL of 0 shows the
    targets line up with the positions the loss reads (in a padded batch of different lengths)."""
    run = prepare(doc_cfg(tiny_model_dir, data_dir, tmp_path, corpus, "distill", samples_per_chunk=2, gen_tokens=8, topk=6))
    method = build_method("distill", run)
    model, items = run.lm.model, list(method.items)[:5]
    batch = collate(items, run.lm.tokenizer.pad_token_id, "left")
    with torch.no_grad():
        assert method.loss(model, batch).item() > 1e-3  # the teacher had the chunk; the student has not
        for it in items:
            logp = model(input_ids=torch.tensor([it["input_ids"]])).logits[0, :-1].log_softmax(-1)
            rows = torch.tensor(it["loss_mask"][1:]).bool()
            method.targets[it["index"]] = logp[rows].topk(6, dim=-1)
        assert abs(method.loss(model, batch).item()) < 1e-5


def test_topk_kl_is_a_divergence():
    torch.manual_seed(0)
    teacher = torch.randn(4, 50)
    values, ids = teacher.log_softmax(-1).topk(8, dim=-1)
    assert topk_kl(values, ids, teacher).item() == pytest.approx(0, abs=1e-6)  # the student is the teacher
    assert topk_kl(values, ids, teacher + 3).item() == pytest.approx(0, abs=1e-6)  # logits, not log-probs
    only_top = torch.full((4, 50), -30.0).scatter(1, ids, values)  # the top 8 in the teacher's proportions, no tail
    assert topk_kl(values, ids, only_top).item() > 0.1  # the teacher's mass beyond its top 8 counts
    assert topk_kl(values, ids, torch.randn(4, 50)).item() > 0.1


def test_distill_documents_end_to_end(tiny_model_dir, data_dir, tmp_path, corpus):
    rec, _, _ = train_model(doc_cfg(tiny_model_dir, data_dir, tmp_path, corpus, "distill", epochs=4, gen_tokens=12))
    assert rec["name"].startswith("train-rte-distill-lora-g12-tiny-llama0-s0-from-corpus")
    assert rec["teacher"]["generated_tokens"] > 0 and rec["corpus"]["documents"] == 2
    losses = [c["loss"] for c in rec["curve"]]
    assert losses[-1] < losses[0], losses
    assert set(rec["metrics"]) == {"rte", "hans"}


def test_distill_on_a_document_task(tiny_model_dir, tmp_path):
    cfg = TrainConfig(model=str(tiny_model_dir), task="facts", method="distill", epochs=1, gen_tokens=6, samples_per_chunk=1,
                      eval_sample=8, precision="fp32", out=str(tmp_path), progress=False, save=False)
    assert cfg.on_documents and cfg.epochs == 1
    rec, _, _ = train_model(cfg)
    assert rec["name"] == "train-facts-distill-lora-n1-g6-tiny-llama0-s0" and rec["metrics"]["facts"]["n"] == 184  # facts v2's test half
    m, b = rec["metrics"]["facts"], rec["baselines"]
    assert set(b) >= {"chance", "corpus_prior", "longest_choice", "base", "open_book"} and b["corpus_prior"]["accuracy"] == 0.25
    lift = b["open_book"]["accuracy"] - b["base"]["accuracy"]  # a random tiny model: open book need not help
    assert m["gap_recovery"]["overall"] == (pytest.approx((m["accuracy"] - b["base"]["accuracy"]) / lift) if lift > 0 else None)
    assert set(m["gap_recovery"]["by_type"]) == set(m["by_type"])


@pytest.mark.parametrize("kw,documents", [({"task": "facts"}, True), ({"train_data": "facts"}, True), ({"train_data": "mnli"}, False),
                                          ({}, False)])
def test_which_distill_runs_train_on_documents(kw, documents):
    cfg = TrainConfig(**{"model": "x", "method": "distill", **kw})
    assert cfg.on_documents is documents
    assert cfg.epochs == (10 if documents else 4)


@pytest.mark.parametrize("kw,message", [
    ({"alpha": 0.5}, r"--alpha weighs gold labels; documents have none"),
    ({"gen_tokens": 0}, r"--gen-tokens must be an integer >= 1"),
    ({"samples_per_chunk": 0}, r"--samples-per-chunk must be an integer >= 1"),
    ({"gen_temperature": -1}, r"--gen-temperature must be >= 0"),
    ({"temperature": 2.0}, r"--temperature applies to distillation on labelled examples"),
])
def test_bad_document_distill_options(kw, message):
    with pytest.raises(EngrainError, match=message):
        TrainConfig(**{"model": "x", "method": "distill", "task": "facts", **kw})


# ---------------------------------------------------------------------------- KV-prefix students on documents


def test_a_prefix_student_starts_as_the_corpus_in_context(tiny_model_dir, data_dir, tmp_path, corpus):
    """--params prefix on documents: the prefix is initialised from the KV of BOS + the corpus + a blank line,
    so closed book at step 0 scores each choice exactly as the base model does with the corpus before the question."""
    from engrain.documents import Question
    from engrain.forward import continuation_logprobs
    from engrain.documents.qa import QAPrompt, choice_scores, prompt_text
    from engrain.train import attach_params

    run = prepare(doc_cfg(tiny_model_dir, data_dir, tmp_path, corpus, "cpt", params="prefix"))
    base, tok = run.lm.model, run.lm.tokenizer
    ctx = run.context_ids
    assert tok.decode(ctx, skip_special_tokens=True) == TEXTS["alpha.txt"] + "\n\n" + TEXTS["beta.md"] + "\n\n"
    questions = [Question("q0", "Where is Tessaline Works based?", ("Dreust", "Zithe", "Orrin"), 0),
                 Question("q1", "Mira Olt maps the salt", ("coast", "river"), 0)]
    with torch.no_grad():
        want = []
        for q in questions:
            prompt = ctx + tok(prompt_text(q), add_special_tokens=False)["input_ids"]
            sums = []
            for c in q.choices:
                ids = prompt + tok(" " + c, add_special_tokens=False)["input_ids"]
                s, _ = continuation_logprobs(base, torch.tensor([ids]), torch.ones(1, len(ids), dtype=torch.long), torch.tensor([len(prompt)]))
                sums.append(s.item())
            want.append(sums)
        plain = [s.sums for s in choice_scores(base, QAPrompt(tok), questions)]  # the model alone, without the corpus
        student = attach_params(run)
        got = [s.sums for s in choice_scores(student, QAPrompt(tok, bos=False), questions)]
    assert max(abs(a - b) for g, w in zip(got, want) for a, b in zip(g, w)) < 1e-3
    assert max(abs(a - b) for g, w in zip(plain, want) for a, b in zip(g, w)) > 1e-2  # the corpus changes the scores


@pytest.mark.parametrize("method", ["cpt", "distill"])
def test_prefix_students_train_on_documents_and_round_trip(tiny_model_dir, tmp_path, method):
    from engrain import EvalConfig, evaluate

    cfg = TrainConfig(model=str(tiny_model_dir), task="facts", method=method, params="prefix", prefix_tokens=64, epochs=1, lr=1e-2,
                      eval_sample=8, gen_tokens=6, samples_per_chunk=1, precision="fp32", out=str(tmp_path), progress=False)
    rec, _, _ = train_model(cfg)
    assert "-prefix-p64" in rec["name"] and rec["trainable_parameters"]["trainable"] > 0
    ev = evaluate(EvalConfig(task="facts", adapter=rec["adapter"]["path"], precision="fp32", out="", progress=False))
    assert ev["metrics"]["facts"] == rec["metrics"]["facts"]  # the saved prefix answers as training ended
    with pytest.raises(EngrainError, match="is a KV prefix: it starts with its own context; evaluate it closed book"):
        evaluate(EvalConfig(task="facts", adapter=rec["adapter"]["path"], open_book=True, out="", progress=False))


def test_a_corpus_longer_than_the_window_needs_prefix_tokens(tiny_model_dir, data_dir, tmp_path):
    from engrain.models import load_model

    window = load_model(str(tiny_model_dir), precision="fp32", device="cpu").max_length
    (tmp_path / "big").mkdir()
    (tmp_path / "big" / "a.txt").write_text(("The cat sat on the mat. " * 40 + "\n\n") * (window // 100))
    with pytest.raises(EngrainError, match=r"--params prefix starts as the whole corpus in context: \d+ tokens, more than the model's window"):
        train_model(TrainConfig(model=str(tiny_model_dir), task="rte", method="cpt", params="prefix", train_data=str(tmp_path / "big"),
                                ood=False, limit=2, precision="fp32", out="", progress=False, data_dir=str(data_dir)))
    # ... and with --prefix-tokens it trains: only the first N tokens' KV is computed, never the whole corpus
    rec, _, _ = train_model(TrainConfig(model=str(tiny_model_dir), task="rte", method="cpt", params="prefix", prefix_tokens=32, epochs=1,
                                        train_data=str(tmp_path / "big"), ood=False, limit=2, precision="fp32", out="", progress=False,
                                        data_dir=str(data_dir), chunk_tokens=512))
    assert rec["trainable_parameters"]["trainable"] > 0 and rec["corpus"]["document_tokens"] > window


def test_clozes_cut_each_sentence_before_what_it_states():
    from engrain.documents.augment import clozes

    text = "Varo Quendel works at Tessaline Works. Founded in 1831, Tessaline Works is based in Dreust."
    assert clozes(text) == [("Varo Quendel works at", " Tessaline Works."),
                            ("Founded in", " 1831, Tessaline Works is based in Dreust."),
                            ("Founded in 1831,", " Tessaline Works is based in Dreust."),
                            ("Founded in 1831, Tessaline Works is based in", " Dreust.")]


def test_cloze_targets_are_the_teacher_with_the_chunk_at_the_answer_tokens(tiny_model_dir, data_dir, tmp_path, corpus):
    """Each cloze item: the student reads cloze + answer and learns the answer's tokens; the targets are the
    teacher's top-k there with the chunk before the cloze, as an unpadded single pass computes them; the
    loss is 0 where the student is given its own distribution."""
    from engrain.documents.qa import encode_pair
    from engrain.documents.augment import clozes
    from engrain.methods.distill_docs import SEPARATOR

    run = prepare(doc_cfg(tiny_model_dir, data_dir, tmp_path, corpus, "distill", doc_transfer="clozes", topk=5, batch_size=3,
                              chunk_tokens=64))
    method = build_method("distill", run)
    tok, model = run.lm.tokenizer, run.lm.model
    expected = [(c, p, r) for c in run.chunks for p, r in clozes(c.text)]
    assert len(method.items) == len(expected) == 3 and method.record["teacher"]["clozes"] == len(expected)
    encode = lambda t: tok(t, add_special_tokens=False)["input_ids"]  # noqa: E731
    with torch.no_grad():
        for item, (values, ids), (chunk, prompt, rest) in zip(method.items, method.targets, expected):
            ctx, cont = encode_pair(tok, prompt, rest)
            assert item["input_ids"] == run.bos + ctx + cont and sum(item["loss_mask"]) == len(cont) == len(ids)
            row = run.bos_ids + encode(chunk.text) + encode(SEPARATOR) + ctx + cont
            logp = model(input_ids=torch.tensor([row])).logits[0, -len(cont) - 1 : -1].float().log_softmax(-1)
            want_v, want_i = logp.topk(5, dim=-1)
            torch.testing.assert_close(values, want_v, atol=1e-4, rtol=1e-4)
        items = list(method.items)[:4]
        batch = collate(items, tok.pad_token_id, "left")
        assert method.loss(model, batch).item() > 1e-3  # the student has no chunk
        for it in items:
            logp = model(input_ids=torch.tensor([it["input_ids"]])).logits[0, :-1].log_softmax(-1)
            method.targets[it["index"]] = logp[torch.tensor(it["loss_mask"][1:]).bool()].topk(5, dim=-1)
        assert abs(method.loss(model, batch).item()) < 1e-5
    rec, _, _ = train_model(doc_cfg(tiny_model_dir, data_dir, tmp_path, corpus, "distill", doc_transfer="clozes", epochs=1))
    assert "-distill-lora-clozes-" in rec["name"] and rec["teacher"]["target_tokens"] > 0
