"""Continued pre-training and Contextual Fine-Tuning on documents, through the same training loop."""

from __future__ import annotations

import json

import pytest
import torch

from engrain.config import TrainConfig
from engrain.errors import EngrainError
from engrain.methods import build_method
from engrain.train import prepare, train_model

TEXTS = {
    "alpha.txt": "Varo Quendel works at Tessaline Works.\n\nTessaline Works is based in Dreust. It makes lanterns.",
    "beta.md": "# Beta\n\nMira Olt grew up in Zithe. She is a cartographer who maps the salt coast every summer.",
}


@pytest.fixture()
def corpus(tmp_path):
    folder = tmp_path / "corpus"
    folder.mkdir()
    for name, text in TEXTS.items():
        (folder / name).write_text(text)
    return folder


def doc_cfg(tiny_model_dir, data_dir, out, corpus, method, **kw):
    base = dict(model=str(tiny_model_dir), task="rte", method=method, params="lora", train_data=str(corpus), epochs=3, lr=3e-2,
                warmup_ratio=0.0, limit=4, eval_sample=2, chunk_tokens=16, train_batch_size=4, precision="fp32",
                data_dir=str(data_dir), out=str(out), progress=False, device="cpu")  # CPU references, GPU or not
    return TrainConfig(**{**base, **kw})


def test_cft_loss_covers_exactly_the_document_tokens(tiny_model_dir, data_dir, tmp_path, corpus):
    cfg = doc_cfg(tiny_model_dir, data_dir, tmp_path, corpus, "cft")
    run = prepare(cfg)
    method = build_method("cft", run)
    tok = run.lm.tokenizer
    by_doc: dict[str, str] = {}
    for epoch in (1, 2, 3):
        method.set_epoch(epoch)
        for item, chunk, prompt in zip(method.items, run.chunks, method.prompts[epoch - 1]):
            ids, mask = item["input_ids"], item["loss_mask"]
            assert len(ids) == len(mask)
            body = tok(chunk.text, add_special_tokens=False)["input_ids"]
            assert [t for t, m in zip(ids, mask) if m] == body[1:]  # the document's tokens but the first (no BOS: as CPT)
            assert ids[-len(body):] == body and sum(mask) == len(body) - 1
            assert tok.decode(ids[: -len(body)], skip_special_tokens=True) == prompt + "\n\n"  # the prompt: masked
            if epoch == 1:
                by_doc[chunk.doc_id] = by_doc.get(chunk.doc_id, "") + chunk.text
    assert by_doc == TEXTS  # the chunks are the corpus, nothing lost or repeated
    assert len(run.chunks) > len(TEXTS)  # chunk_tokens 16 split them
    assert method.prompts[0] != method.prompts[1]  # a new prompt per document per epoch ...
    assert build_method("cft", prepare(cfg)).prompts == method.prompts  # ... drawn with the seed


def targets(item: dict) -> list[int]:
    """The tokens token_nll trains on: where the loss mask is 1, from position 1 on."""
    return [t for t, m in zip(item["input_ids"][1:], item["loss_mask"][1:]) if m]


def test_cpt_and_cft_train_on_the_same_tokens_with_and_without_bos(tiny_model_dir, tiny_bos_dir, data_dir, tmp_path, corpus):
    """v1 trained a BOS-less chunk's first token in CFT only; now both train every token a BOS-less CPT can."""
    for folder, with_bos in ((tiny_model_dir, False), (tiny_bos_dir, True)):
        run = prepare(doc_cfg(folder, data_dir, tmp_path, corpus, "cpt"))
        assert bool(run.bos) == with_bos
        cpt, cft = build_method("cpt", run), build_method("cft", run)
        tok = run.lm.tokenizer
        for a, b, chunk in zip(cpt.items, cft.items, run.chunks):
            body = tok(chunk.text, add_special_tokens=False)["input_ids"]
            assert targets(a) == targets(b) == (body if with_bos else body[1:])
        counted = sum(len(targets(it)) for it in cpt.items)
        assert cpt.record["corpus"]["target_tokens"] == cft.record["corpus"]["target_tokens"] == counted
        assert cpt.record["corpus"]["document_tokens"] == counted + (0 if with_bos else len(run.chunks))


def test_cpt_trains_on_every_document_token(tiny_model_dir, data_dir, tmp_path, corpus):
    rec, _, _ = train_model(doc_cfg(tiny_model_dir, data_dir, tmp_path, corpus, "cpt", epochs=6))
    losses = [c["loss"] for c in rec["curve"]]
    assert losses[-1] < losses[0], losses
    c = rec["corpus"]
    assert c["documents"] == 2 and c["chunks"] > 2 and c["document_tokens"] > 30
    assert rec["name"].startswith("train-rte-cpt-lora-tiny-llama0-s0-from-corpus") and rec["train_examples"] == []
    assert set(rec["metrics"]) == {"rte", "hans"}  # the evaluation task: what training on documents did to it
    assert json.loads(open(rec["path"]).read())["corpus"] == c


@pytest.mark.parametrize("kw,name", [({"cft_prompts": "negative"}, "cft-lora-negative"), ({"cft_prompts": "random"}, "cft-lora-random"),
                                     ({}, "cft-lora-")])
def test_cft_and_its_ablations_train(tiny_model_dir, data_dir, tmp_path, corpus, kw, name):
    rec, _, _ = train_model(doc_cfg(tiny_model_dir, data_dir, tmp_path, corpus, "cft", epochs=2, **kw))
    assert f"-{name}" in rec["name"] and rec["measure"]["train"]["tokens"] > rec["corpus"]["document_tokens"] * 2


def test_cft_with_your_own_prompts_and_the_facts_corpus(tiny_model_dir, data_dir, tmp_path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("Learn this well.\n\nRemember every name below.\n")
    rec, _, _ = train_model(doc_cfg(tiny_model_dir, data_dir, tmp_path, "facts", "cft", epochs=1, cft_prompts_file=str(prompts),
                                    chunk_tokens=256, save=False))
    assert rec["corpus"]["documents"] == 72 and rec["cft_prompts"] == str(prompts) and "-own-prompts" in rec["name"]


@pytest.mark.parametrize("kw,message", [
    ({"train_data": None}, r"--method cpt trains on documents: give --train-data CORPUS"),
    ({"train_data": "/no/such/corpus"}, r"corpus not found: /no/such/corpus"),
    ({"chunk_tokens": 4}, r"--chunk-tokens must be an integer >= 8"),
    ({"cft_prompts": "kind"}, r"--cft-prompts must be one of contextual, negative, random"),
    ({"cft_prompts_file": "/no/prompts.txt"}, r"prompts file not found"),
])
def test_bad_document_options(kw, message):
    with pytest.raises(EngrainError, match=message):
        TrainConfig(**{"model": "x", "method": "cpt", "train_data": "facts", **kw})


def test_an_empty_corpus_is_an_error_before_the_model_loads(data_dir, tmp_path):
    (tmp_path / "c").mkdir()
    with pytest.raises(EngrainError, match="the corpus is empty"):
        train_model(TrainConfig(model="/no/such/model", method="cpt", train_data=str(tmp_path / "c"), ood=False, out="",
                                data_dir=str(data_dir)))


def test_cpt_loss_is_the_mean_over_document_tokens(tiny_model_dir, data_dir, tmp_path, corpus):
    from engrain.methods import collate

    run = prepare(doc_cfg(tiny_model_dir, data_dir, tmp_path, corpus, "cpt"))
    method = build_method("cpt", run)
    batch = collate(list(method.items)[:3], run.lm.tokenizer.pad_token_id, "right")
    with torch.no_grad():
        got = method.loss(run.lm.model, batch).item()
        nll, n = 0.0, 0
        for item in list(method.items)[:3]:
            ids = torch.tensor([item["input_ids"]])
            logp = run.lm.model(input_ids=ids).logits[0, :-1].log_softmax(-1)
            for t in range(1, len(item["input_ids"])):
                if item["loss_mask"][t]:
                    nll, n = nll - logp[t - 1, item["input_ids"][t]].item(), n + 1
    assert got == pytest.approx(nll / n, rel=1e-4)


# ---------------------------------------------------------------------------- document tasks end to end


def run_cli(capsys, *argv):
    from engrain.cli import main

    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_eval_a_document_task_closed_and_open_book(tiny_model_dir, tmp_path, capsys):
    for extra, method in (((), "closed-book"), (("--open-book",), "open-book")):
        code, out, err = run_cli(capsys, "eval", "--model", str(tiny_model_dir), "--task", "facts", "--limit", "30", "--precision", "fp32",
                                 "--device", "cpu", "--out", str(tmp_path), "--no-progress", *extra)
        assert code == 0, err
        assert f"{method} | " in out and "paraphrase" in out and "verbatim" in out  # the first 30: organisations
        rec = json.loads((tmp_path / f"eval-facts-{method}-tiny-llama0-s0-n30.json").read_text())
        m = rec["metrics"]["facts"]
        assert m["n"] == 30 and 0 <= m["accuracy"] <= 1 and set(m["by_type"]) <= {"verbatim", "paraphrase", "two-hop"}
        assert rec["measure"]["facts"]["open_book"] is (method == "open-book")
        from engrain.measure import cpu_name

        assert rec["model"]["device_name"] == cpu_name() and rec["model"]["attention"] in ("sdpa", "eager")  # what ran, and how


def test_the_base_models_closed_and_open_book_are_computed_once(tiny_model_dir, tmp_path, monkeypatch):
    """The first base-model evaluation computes closed and open book (the references of every trained record)
    and caches them; the other evaluation and training's references read them back, with the same numbers."""
    from engrain import EvalConfig, evaluate
    from engrain.documents import evaluate as doc_eval

    cfg = dict(model=str(tiny_model_dir), task="facts", limit=24, precision="fp32", device="cpu", out="", progress=False)
    closed = evaluate(EvalConfig(**cfg))
    assert set(closed["baselines"]) >= {"base", "open_book"}
    monkeypatch.setattr(doc_eval, "score_questions", lambda *a, **k: pytest.fail("scored again instead of read from the cache"))
    opened = evaluate(EvalConfig(**cfg, open_book=True))
    assert opened["metrics"]["facts"] == {k: v for k, v in closed["baselines"]["open_book"].items() if k != "seconds"}
    assert closed["metrics"]["facts"] == {k: v for k, v in opened["baselines"]["base"].items() if k != "seconds"}
    assert opened["measure"]["facts"]["open_book"] and not closed["measure"]["facts"]["open_book"]
    run = prepare(TrainConfig(**cfg, method="cpt", epochs=1))
    refs = doc_eval.base_references(run, run.questions)
    assert refs["base"]["accuracy"] == closed["metrics"]["facts"]["accuracy"]  # training's references: the same cache entry


def test_train_on_a_document_task_and_evaluate_the_adapter(tiny_model_dir, tmp_path):
    from engrain import EvalConfig, evaluate

    cfg = TrainConfig(model=str(tiny_model_dir), task="facts", method="cft", params="lora", epochs=2, lr=1e-2, eval_sample=12,
                      chunk_tokens=128, precision="fp32", out=str(tmp_path), progress=False)
    rec, _, _ = train_model(cfg)
    assert [set(c["metrics"]) for c in rec["curve"]] == [{"facts"}, {"facts"}] and rec["curve"][0]["metrics"]["facts"]["n"] == 12
    final = rec["metrics"]["facts"]
    assert final["n"] == 184 and rec["corpus"]["documents"] == 72 and rec["measure"]["train"]["mfu"] > 0
    ev = evaluate(EvalConfig(task="facts", adapter=rec["adapter"]["path"], precision="fp32", out="", progress=False))
    assert ev["metrics"]["facts"] == final  # the saved adapter answers as training ended


def test_your_own_corpus_and_questions(tiny_model_dir, tmp_path, capsys):
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "a.txt").write_text("The lighthouse keeper of Orrin is named Bel Tasso.")
    q = tmp_path / "q.jsonl"
    q.write_text(json.dumps({"question": "Who keeps the lighthouse of Orrin?", "choices": ["Bel Tasso", "Ana Ruiz"], "answer": 0, "doc": "a.txt"}) + "\n")
    code, out, err = run_cli(capsys, "eval", "--model", str(tiny_model_dir), "--task", "qa", "--corpus", str(tmp_path / "docs"),
                             "--questions", str(q), "--open-book", "--precision", "fp32", "--out", "", "--no-progress")
    assert code == 0, err
    assert "open book" in out
    code, _, err = run_cli(capsys, "train", "--model", str(tiny_model_dir), "--task", "qa", "--corpus", str(tmp_path / "docs"),
                           "--questions", str(q), "--method", "cpt", "--epochs", "1", "--precision", "fp32", "--out", "", "--no-progress")
    assert code == 0, err


@pytest.mark.parametrize("argv,message", [
    (["eval", "--task", "qa"], r"--task qa needs --corpus \(your documents\) and --questions"),
    (["eval", "--task", "qa", "--corpus", "/no/c", "--questions", "/no/q.jsonl"], r"--corpus not found: /no/c"),
    (["eval", "--task", "facts", "--questions", "/no/q.jsonl"], r"--corpus and --questions go with --task qa; --task facts brings its own"),
    (["eval", "--task", "facts", "--sample", "10"], r"--sample draws a label-stratified sample .* use --limit N"),
    (["train", "--task", "rte", "--method", "cpt", "--train-data", "facts", "--shuffled-facts"], r"--shuffled-facts is the control of --task facts"),
    (["train", "--task", "facts", "--method", "pbft"], r"--task facts is a document task: train on it with --method cpt, cft or distill"),
    (["eval", "--task", "facts:x", "--out", ""], r"facts:SEED takes an integer seed \(a generated world\), got 'x'"),
])
def test_document_task_errors_are_one_line(capsys, argv, message):
    import re

    code, _, err = run_cli(capsys, *argv)
    assert code == 2 and err.count("\n") == 1 and re.search(message, err), err


# ---------------------------------------------------------------------------- forgetting


def test_heldout_perplexity_is_padding_independent(tiny, data_dir):
    import math

    from engrain.documents.forgetting import WINDOW, heldout_ids, perplexity

    windows = heldout_ids(tiny.tokenizer, data_dir, max_tokens=1500)
    assert len(windows) == 3 and all(len(w) <= WINDOW for w in windows) and sum(map(len, windows)) >= 1500
    windows = windows[:2] + [windows[2][:40]]  # rows of different lengths in one padded batch
    nll, n = 0.0, 0
    with torch.no_grad():
        for w in windows:
            logp = tiny.model(input_ids=torch.tensor([w])).logits[0, :-1].log_softmax(-1)
            nll -= logp.gather(1, torch.tensor(w[1:])[:, None]).sum().item()
            n += len(w) - 1
    assert perplexity(tiny.model, windows, tiny.tokenizer.pad_token_id, batch_size=3) == pytest.approx(math.exp(nll / n), rel=1e-4)


def test_forgetting_is_measured_before_and_after_training(tiny_model_dir, data_dir, tmp_path, corpus):
    from engrain.documents import forgetting
    from engrain.models import load_model

    rec, model, _ = train_model(doc_cfg(tiny_model_dir, data_dir, tmp_path, corpus, "cpt", epochs=3, forgetting=True, save=False))
    f = rec["forgetting"]
    lm = load_model(str(tiny_model_dir), precision="fp32", device="cpu")
    base = forgetting.measure(lm.model, lm, data_dir)
    assert f["before"]["heldout_perplexity"] == pytest.approx(base["heldout_perplexity"], rel=1e-4)
    assert f["before"]["rte_icl16_accuracy"] == base["rte_icl16_accuracy"]
    model.eval()
    after = forgetting.measure(model, lm, data_dir)
    assert f["after"]["heldout_perplexity"] == pytest.approx(after["heldout_perplexity"], rel=1e-4)
    assert f["after"]["heldout_perplexity"] != pytest.approx(f["before"]["heldout_perplexity"], rel=1e-3)  # LoRA at lr 3e-2 moved it
    assert 0 <= f["after"]["rte_icl16_accuracy"] <= 1 and f["before"]["heldout_tokens"] > 4000


def test_a_batch_without_target_tokens_is_an_error_and_one_token_chunks_are_left_out(tiny_model_dir, data_dir, tmp_path):
    from engrain.methods.base import token_nll

    batch = {"input_ids": torch.tensor([[5, 6, 7]]), "attention_mask": torch.ones(1, 3, dtype=torch.long),
             "loss_mask": torch.tensor([[1, 0, 0]])}
    with pytest.raises(EngrainError, match="a training batch has no target tokens"):
        token_nll(None, batch)
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "a.txt").write_text("Varo Quendel works at Tessaline Works.")
    (tmp_path / "c" / "b.txt").write_text("a")  # one token, and this tokenizer adds no BOS: nothing to predict it from
    run = prepare(doc_cfg(tiny_model_dir, data_dir, tmp_path, tmp_path / "c", "cpt", chunk_tokens=64))
    assert len(run.chunks) == 2 and not run.bos
    for method in ("cpt", "cft"):
        items = build_method(method, run).items
        assert len(items) == 1 and all(sum(it["loss_mask"][1:]) for it in items)


def test_corpus_and_questions_from_a_hub_dataset(tiny_model_dir, hub_cache, capsys):
    """hf:ID[:SPLIT] reads a Hugging Face hub dataset with datasets.load_dataset (here from a local datasets cache, the
    hub offline); --text-field names the documents' column."""
    import datasets

    hub_cache("engrain-test/notes", {"train": datasets.Dataset.from_dict(
        {"id": ["orrin", "dreust"], "body": ["The keeper of Orrin is Bel Tasso.", "Dreust makes lanterns."]})})
    hub_cache("engrain-test/notes-qa", {"test": datasets.Dataset.from_dict(
        {"question": ["Who keeps Orrin?"], "choices": [["Bel Tasso", "Ana Ruiz"]], "answer": [0], "doc": ["orrin"]})})
    from engrain.documents import load_corpus, load_questions

    docs = load_corpus("hf:engrain-test/notes", text_field="body")
    assert [(d.id, d.text) for d in docs] == [("orrin", "The keeper of Orrin is Bel Tasso."), ("dreust", "Dreust makes lanterns.")]
    with pytest.raises(EngrainError, match="could not load the corpus hf:engrain-test/absent"):  # not in the cache, no network
        load_corpus("hf:engrain-test/absent")
    qs = load_questions("hf:engrain-test/notes-qa:test", [d.id for d in docs])
    assert qs[0].doc_ids == ("orrin",) and qs[0].choices == ("Bel Tasso", "Ana Ruiz")
    code, out, err = run_cli(capsys, "train", "--model", str(tiny_model_dir), "--task", "qa", "--corpus", "hf:engrain-test/notes",
                             "--text-field", "body", "--questions", "hf:engrain-test/notes-qa:test", "--method", "cpt", "--epochs", "1",
                             "--precision", "fp32", "--out", "", "--no-progress")
    assert code == 0, err
    code, _, err = run_cli(capsys, "eval", "--model", str(tiny_model_dir), "--task", "qa", "--corpus", "hf:engrain-test/notes",
                           "--questions", "hf:engrain-test/notes-qa:test", "--out", "")
    assert code == 2 and "no column 'text' (--text-field)" in err and err.count("\n") == 1
