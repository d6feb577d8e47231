"""Corpus augmentation (engrain.documents.augment) and access-pattern training (--qa-train)."""

from __future__ import annotations

import json

import pytest

from engrain.cli import main
from engrain.config import TrainConfig
from engrain.documents import Document, facts, load_corpus
from engrain.documents import augment as aug
from engrain.errors import EngrainError
from engrain.methods import build_method
from engrain.train import prepare, train_model

DOCS = [
    Document("p1", "Varo Quendel is a potter. Varo Quendel works at Tessaline Works. Varo Quendel was born in 1961."),
    Document("o1", "Tessaline Works is based in Dreust. Tessaline Works makes lanterns."),
    Document("c1", "Dreust is a town on the salt coast."),
]


def test_names_and_the_faithfulness_filter():
    assert aug.names("Founded in 1920, Rioxaend Cooperative has its headquarters in Stesi.") == {"Rioxaend Cooperative", "Stesi"}
    assert aug.names("Varo Quendel works at Tessaline Works.") == {"Varo Quendel", "Tessaline Works"}
    source = DOCS[0].text
    assert aug.faithful("Born in 1961, Varo Quendel is a potter employed by Tessaline Works.", source)
    assert not aug.faithful("Varo Quendel, born in 1961, works at Morvane Mills.", source)  # an invented name
    assert not aug.faithful("Varo Quendel was born in 1967.", source)  # an invented number


def test_parse_kinds():
    assert [str(k) for k in aug.parse("permute:4, link")] == ["permute:4", "link:1"]
    assert aug.slug(aug.parse("permute:4,link")) == "permute4-link1"
    for bad, message in (("shuffle", "unknown kind 'shuffle'"), ("permute:0", "N must be an integer >= 1"), ("link,link:2", "twice")):
        with pytest.raises(EngrainError, match=message):
            aug.parse(bad)


def test_permute_gives_other_orders_of_the_same_sentences():
    out = aug.permute(DOCS, 3, seed=0)
    person = [t for d, t in out if d == "p1"]
    assert len(person) == 3 and len(set(person)) == 3 and DOCS[0].text not in person
    assert all(sorted(aug.sentences(t)) == sorted(aug.sentences(DOCS[0].text)) for t in person)
    assert [t for d, t in out if d == "c1"] == []  # one sentence: no other order
    assert aug.permute(DOCS, 3, seed=0) == out and aug.permute(DOCS, 3, seed=1) != out  # by seed


def test_link_puts_documents_sharing_a_name_in_one_text():
    partners = aug.links(DOCS, 2)
    assert partners["p1"] == ["o1"]  # Tessaline Works
    assert partners["o1"] == ["c1", "p1"] or partners["o1"] == ["p1", "c1"]
    texts = dict(((d, t) for d, t in aug.link(DOCS, 1, 0)))
    assert texts["p1"] == DOCS[0].text + "\n\n" + DOCS[1].text


def test_rewindow_keeps_the_sentences_in_corpus_order():
    stream = [s for d in DOCS for s in aug.sentences(d.text)]
    for _, text in aug.rewindow(DOCS, 2, 0):
        parts = aug.sentences(text)
        start = stream.index(parts[0])
        assert parts == stream[start : start + len(parts)]


def test_model_free_augmentation_is_cached_and_the_same_from_a_task_or_its_files(tmp_path):
    """Only the documents' text is read: the facts task's corpus and the same texts loaded from a file
    augment to the same corpus (the generator's structured world is never used)."""
    from engrain.tasks.documents import load_document_task

    task_docs = load_document_task("facts").corpus
    paths = facts.write(tmp_path / "facts", 0)
    file_docs = load_corpus(paths["corpus"])
    a, m1 = aug.augment(task_docs, "permute:2,link:2,rewindow", seed=0)
    b, m2 = aug.augment(file_docs, "permute:2,link:2,rewindow", seed=0)
    assert a == b and not m1["cache_hit"] and m2["cache_hit"]  # the second: read from the cache
    assert a[: len(task_docs)] == task_docs and len(a) > 3 * len(task_docs)
    assert m1["kinds_made"]["permute"]["texts"] > 0 and m1["kinds_made"]["link"]["texts"] > 0


def test_generated_texts_are_filtered_and_deduplicated(monkeypatch):
    replies = iter([" Varo Quendel, a potter born in 1961, is employed by Tessaline Works.\n\nText: more",
                    " Varo Quendel works for Morvane Mills.",  # invented name: dropped
                    " Varo Quendel, a potter born in 1961, is employed by Tessaline Works."])  # a duplicate: dropped

    def fake(lm, prompts, max_new_tokens, temperature, seed, batch_size=8):
        return [next(replies) for _ in prompts], 30

    monkeypatch.setattr(aug, "generate_texts", fake)
    lm = type("LM", (), {"name": "fake", "source": "fake", "dtype": "fp32", "device": type("D", (), {"type": "cpu"})()})()
    docs, manifest = aug.augment(DOCS[:1], "paraphrase:3", seed=0, generator=lm)
    assert [d.text for d in docs[1:]] == ["Varo Quendel, a potter born in 1961, is employed by Tessaline Works."]
    assert manifest["kinds_made"]["paraphrase"] == {"n": 3, "texts": 1, "dropped": 2}
    assert manifest["generator"]["generated_tokens"] == 30


def test_clean_keeps_whole_question_answer_pairs():
    generated = " Where does Varo Quendel work?\nA: At Tessaline Works.\nQ: When was he born?\nA: In 1961.\nQ: What"
    assert aug.clean("qa", "Q:", generated) == ("Q: Where does Varo Quendel work?\nA: At Tessaline Works.\n"
                                               "Q: When was he born?\nA: In 1961.")
    assert aug.clean("implications", "-", " He makes pots.\n- Tessaline Works has a potter.\n\nText: x") == (
        "- He makes pots.\n- Tessaline Works has a potter.")


def test_generated_augmentation_with_a_tiny_model_is_deterministic_by_seed(tiny_model_dir, tmp_path, monkeypatch, capsys):
    args = ["augment", str(tmp_path / "c.jsonl"), "--kinds", "paraphrase:2,entities", "--generator", str(tiny_model_dir),
            "--gen-tokens", "8", "--precision", "fp32", "--device", "cpu"]
    (tmp_path / "c.jsonl").write_text("".join(json.dumps({"id": d.id, "text": d.text}) + "\n" for d in DOCS))
    assert main([*args, "--out", str(tmp_path / "a")]) == 0
    manifest = json.loads((tmp_path / "a" / "manifest.json").read_text())
    assert not manifest["cache_hit"] and manifest["generator"]["generated_tokens"] > 0
    made = sum(v["texts"] + v["dropped"] for v in manifest["kinds_made"].values())
    assert made == 2 * len(DOCS) + 3  # two paraphrases per document, one entity text each (every document has two names)
    monkeypatch.setenv("ENGRAIN_RESULTS_CACHE", str(tmp_path / "other-cache"))  # a cold cache: generated again, the same
    assert main([*args, "--out", str(tmp_path / "b")]) == 0
    assert (tmp_path / "a" / "corpus.jsonl").read_text() == (tmp_path / "b" / "corpus.jsonl").read_text()
    assert main([*args, "--out", str(tmp_path / "b"), "--seed", "1"]) == 0
    assert json.loads((tmp_path / "b" / "manifest.json").read_text())["key"] != manifest["key"]


@pytest.mark.parametrize("argv, message", [
    (["augment", "/no/corpus", "--out", "x", "--kinds", "permute"], "corpus not found"),
    (["augment", "facts", "--out", "x", "--kinds", "mix"], "unknown kind 'mix'"),
    (["augment", "facts", "--out", "x", "--kinds", ""], "give at least one of"),
    (["train", "--task", "rte", "--augment", "permute"], "--augment applies to training on documents"),
    (["train", "--task", "facts", "--method", "cpt", "--generator", "x"], "--generator writes --augment's generated texts"),
    (["train", "--task", "facts", "--method", "cpt", "--augment", "permute:x"], "N must be an integer"),
    (["train", "--task", "facts", "--method", "cpt", "--qa-train", "/no/q.jsonl"], "--qa-train: questions file not found"),
    (["train", "--task", "facts", "--method", "cpt", "--qa-first", "2"], "--qa-first orders the --qa-train questions"),
    (["train", "--task", "facts", "--method", "cpt", "--qa-train", "train", "--no-qa-mix"], "give --qa-first N (N >= 1) too"),
    (["train", "--task", "facts", "--method", "cpt", "--qa-train", "train", "--qa-first", "-1"], "--qa-first must be an integer >= 0"),
    (["train", "--task", "rte", "--no-qa-mix"], "--no-qa-mix orders the --qa-train questions"),
])
def test_bad_augment_options_are_one_line_errors(argv, message, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


def facts_cfg(tiny_model_dir, tmp_path, **kw):
    base = dict(model=str(tiny_model_dir), task="facts", method="cpt", params="lora", epochs=1, lr=1e-2, limit=8, eval_sample=4,
                train_batch_size=8, precision="fp32", out=str(tmp_path), progress=False, device="cpu", save=False)
    return TrainConfig(**{**base, **kw})


def test_qa_train_items_are_the_scored_continuations_of_other_questions(tiny_model_dir, tmp_path):
    from engrain.documents.qa import encode_pair, prompt_text

    run = prepare(facts_cfg(tiny_model_dir, tmp_path, qa_train="train"))
    tested = {q.question for q in run.qa.questions}
    assert run.qa_train and not tested & {q.question for q in run.qa_train}  # the train half: no scored question
    method = build_method("cpt", run)
    documents, questions = method.items[: -len(run.qa_train)], method.items[-len(run.qa_train):]
    assert len(documents) == len(run.chunks)
    tok = run.lm.tokenizer
    for item, q in zip(questions, run.qa_train):
        ctx, cont = encode_pair(tok, prompt_text(q), " " + q.choices[q.answer])
        assert item["input_ids"] == run.bos + ctx + cont
        assert [t for t, m in zip(item["input_ids"], item["loss_mask"]) if m] == cont  # the loss: the answer only
    assert method.record["qa_train"]["questions"] == len(run.qa_train)
    assert method.record["corpus"]["target_tokens"] == sum(sum(it["loss_mask"][1:]) for it in documents)  # documents only


def test_qa_train_refuses_scored_questions(tiny_model_dir, tmp_path):
    b = facts.build(0)
    leak = tmp_path / "leak.jsonl"
    leak.write_text("".join(json.dumps(q) + "\n" for q in b.train_questions[:3] + b.questions[:1]))
    with pytest.raises(EngrainError, match="1 of its questions are scored questions"):
        prepare(facts_cfg(tiny_model_dir, tmp_path, qa_train=str(leak)))
    with pytest.raises(EngrainError, match="--task pubmedqa has none"):
        from engrain.tasks.documents import qa_train_questions

        qa_train_questions("train", None, "pubmedqa")


@pytest.mark.parametrize("method", ["cpt", "cft", "distill"])
def test_augmented_and_qa_trained_runs_end_to_end(tiny_model_dir, tmp_path, method):
    extra = {"gen_tokens": 4, "samples_per_chunk": 1} if method == "distill" else {}
    rec, _, _ = train_model(facts_cfg(tiny_model_dir, tmp_path, method=method, augment="permute:1,link", qa_train="train", **extra))
    assert rec["name"].startswith(f"train-facts-{method}-lora") and "-aug-permute1-link1-qa" in rec["name"]
    assert rec["augment"]["kinds"] == ["permute:1", "link:1"] and rec["augment"]["new_texts"] > 0
    assert rec["corpus"]["documents"] > 72  # the augmented corpus's texts are what was trained
    assert rec["qa_train"]["questions"] == 184 and rec["measure"]["augment"]["share_of_training"] >= 0
    assert rec["metrics"]["facts"]["n"] == 8 and "gap_recovery" in rec["metrics"]["facts"]


def test_qa_first_trains_the_questions_alone_first_then_the_documents(tiny_model_dir, tmp_path, monkeypatch):
    """--qa-first N --no-qa-mix (pre-instruction tuning's two-stage order): N epochs whose batches are exactly the
    question items, under a plain next-token loss, then the method's epochs on the documents alone."""
    import engrain.train as tr
    from engrain.methods.base import token_nll
    from engrain.methods.cpt import qa_items

    cfg = facts_cfg(tiny_model_dir, tmp_path, qa_train="train", qa_first=1, qa_mix=False)
    run = prepare(facts_cfg(tiny_model_dir, tmp_path, qa_train="train"))
    questions = {tuple(it["input_ids"]) for it in qa_items(run)}
    documents = {tuple(it["input_ids"]) for it in build_method("cpt", run).items} - questions
    seen, step = [], tr.train_step

    def spy(run, loop, batch, loss_fn=None):
        rows = [tuple(ids[m.bool()].tolist()) for ids, m in zip(batch["input_ids"], batch["attention_mask"])]
        seen.append((loss_fn or loop.method.loss, rows))
        step(run, loop, batch, loss_fn)

    monkeypatch.setattr(tr, "train_step", spy)
    rec, _, _ = train_model(cfg)
    first = -(-len(questions) // cfg.train_batch_size)
    assert "-qa-first1-unmixed-" in rec["name"] and rec["measure"]["train"]["steps"] == len(seen)
    assert all(fn is token_nll and set(rows) <= questions for fn, rows in seen[:first])
    assert sorted(r for _, rows in seen[:first] for r in rows) == sorted(questions)  # each question once
    assert all(set(rows) <= documents for _, rows in seen[first:]) and len(seen) == first + -(-len(documents) // 8)
    assert [p.get("stage") for p in rec["curve"]] == ["questions", None] and [p["epoch"] for p in rec["curve"]] == [1, 2]
    assert rec["qa_train"]["first_epochs"] == 1 and rec["qa_train"]["mixed"] is False


def test_qa_first_then_cft_epochs_with_the_questions_mixed(tiny_model_dir, tmp_path):
    rec, _, _ = train_model(facts_cfg(tiny_model_dir, tmp_path, method="cft", qa_train="train", qa_first=1, epochs=2))
    assert "-qa-first1-" in rec["name"] and "unmixed" not in rec["name"]
    assert [p.get("stage") for p in rec["curve"]] == ["questions", None, None]  # CFT's own epochs 1 and 2 follow
    assert rec["qa_train"]["mixed"] is True
