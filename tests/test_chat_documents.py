"""Documents through a chat template: questions scored as the assistant's reply (engrain.documents.qa.QAPrompt),
--qa-train questions and chat-formatted conversations (``messages``) trained the same way (engrain.chat)."""

from __future__ import annotations

import json

import pytest
import torch

from engrain.chat import check_messages, conversation_item, render
from engrain.cli import main
from engrain.config import EvalConfig, TrainConfig
from engrain.documents import Question
from engrain.documents.qa import CLOZE_REQUEST, QAPrompt, choice_scores
from engrain.documents.evaluate import evaluate_documents
from engrain.errors import EngrainError
from engrain.train import prepare, train
from conftest import write_two_docs
from test_chat_template import BOS_FIRST, CHATML

DOCS = {"a": "Bel Tasso keeps the lighthouse of Orrin.", "b": "Dreust is a town on the salt coast."}
QUESTIONS = [Question("q:1", "Who keeps the lighthouse of Orrin?", ("Bel Tasso", "Ana Ruiz", "Tom Reed"), 0, ("a",), "paraphrase"),
             Question("q:2", "Dreust is a town on the", ("salt coast", "north shore"), 0, ("b",), "verbatim"),
             Question("q:3", "Which town is on the salt coast?", ("Dreust", "Orrin"), 0, ("b", "a"), "two-hop")]


def encode(tok, text):
    return tok(text, add_special_tokens=False)["input_ids"]


@pytest.mark.parametrize("open_book", [False, True])
def test_a_choice_is_the_assistants_reply_to_the_question_and_its_documents(tiny, open_book):
    tok, docs = tiny.tokenizer, DOCS if open_book else None
    prompt = QAPrompt(tok, CHATML)
    for q in QUESTIONS:
        before = "\n\n".join(DOCS[d] for d in q.doc_ids) + "\n\n" if open_book else ""
        for choice in q.choices:
            ids, start = prompt.pair(q, choice, docs)
            if q.type == "verbatim":  # a cloze: the assistant's reply starts with it, the choice continues it
                context = render(tok, CHATML, [{"role": "user", "content": before + CLOZE_REQUEST},
                                               {"role": "assistant", "content": q.question}], continue_final=True)
                whole = context + " " + choice
                assert context.endswith("<|assistant|>" + q.question) and "<|end|>" not in context.split("<|assistant|>")[-1]
            else:
                context = render(tok, CHATML, [{"role": "user", "content": before + q.question}], generation=True)
                whole = context + choice
                assert context.endswith("<|user|>" + before + q.question + "<|end|>\n<|assistant|>")
            assert ids == encode(tok, whole)  # the context and its choice, tokenised as one text
            assert tok.decode(ids[start:]).strip() == choice and start == len(encode(tok, context))


def test_chat_scores_are_the_log_likelihoods_of_the_reply_with_or_without_the_cached_documents(tiny):
    prompt, model = QAPrompt(tiny.tokenizer, CHATML), tiny.model
    for docs in (None, DOCS):
        got = choice_scores(model, prompt, QUESTIONS, docs, batch_size=2)
        for q, scores in zip(QUESTIONS, got):
            for c, choice in enumerate(q.choices):
                ids, start = prompt.pair(q, choice, docs)
                with torch.no_grad():
                    logp = torch.log_softmax(model(torch.tensor([ids])).logits[0].float(), -1)
                want = sum(logp[i - 1, ids[i]].item() for i in range(start, len(ids)))
                assert scores.sums[c] == pytest.approx(want, abs=1e-4) and scores.tokens[c] == len(ids) - start
    plain = choice_scores(model, QAPrompt(tiny.tokenizer), QUESTIONS)
    assert [s.sums for s in plain] != [s.sums for s in choice_scores(model, prompt, QUESTIONS)]  # the template changed the prompt


def test_a_templates_bos_is_not_doubled_and_a_kv_prefix_holds_it(tiny_bos_dir):
    from engrain.models import load_model

    tok = load_model(str(tiny_bos_dir), "fp32", "cpu").tokenizer
    ids, _ = QAPrompt(tok, BOS_FIRST).pair(QUESTIONS[0], "Bel Tasso")
    assert ids[0] == tok.bos_token_id and ids.count(tok.bos_token_id) == 1
    ids, _ = QAPrompt(tok, BOS_FIRST, bos=False).pair(QUESTIONS[0], "Bel Tasso")
    assert tok.bos_token_id not in ids


CONVERSATION = [{"role": "user", "content": "Who keeps the lighthouse of Orrin?"}, {"role": "assistant", "content": "Bel Tasso."},
                {"role": "user", "content": "Born when?"}, {"role": "assistant", "content": "In 1961."}]


def test_a_conversation_trains_the_assistants_turns_only(tiny):
    tok = tiny.tokenizer
    item = conversation_item(tok, CHATML, CONVERSATION, bos=[])
    assert item["input_ids"] == encode(tok, render(tok, CHATML, CONVERSATION))  # the whole conversation, as generation reads it
    trained = [t for t, m in zip(item["input_ids"], item["loss_mask"]) if m]
    assert tok.decode(trained) == "Bel Tasso.<|end|>\nIn 1961.<|end|>\n"  # each reply and its end of turn, no prompt
    with_bos = conversation_item(tok, CHATML, CONVERSATION, bos=[1])
    assert with_bos["input_ids"] == [1] + item["input_ids"] and with_bos["loss_mask"] == [0] + item["loss_mask"]


def test_conversation_errors_are_one_line(tiny):
    with pytest.raises(EngrainError, match="give a chat template"):
        conversation_item(tiny.tokenizer, None, CONVERSATION, [], "f.jsonl:1")
    rewriting = "{% for m in messages %}{% if loop.last %}[{{ m['content'] }}]{% else %}{{ m['content'] }}{% endif %}{% endfor %}"
    with pytest.raises(EngrainError, match="rewrites earlier turns"):
        conversation_item(tiny.tokenizer, rewriting, CONVERSATION, [])
    with pytest.raises(EngrainError, match="no assistant turn"):
        check_messages([{"role": "user", "content": "hi"}], "f.jsonl:2")
    with pytest.raises(EngrainError, match="f.jsonl:3: each message needs"):
        check_messages([{"role": "bot", "content": "hi"}], "f.jsonl:3")


@pytest.fixture
def chat_corpus(tmp_path):
    """A user's corpus, its scored question, and a --qa-train file mixing a question and a conversation."""
    root = write_two_docs(tmp_path)
    (root / "chat.jinja").write_text(CHATML)
    rows = [{"question": "Where is Dreust?", "choices": ["On the salt coast", "Inland"], "answer": 0},
            {"messages": [{"role": "user", "content": "What does the mill of Dreust make?"}, {"role": "assistant", "content": "Lanterns."}]}]
    (root / "train_qa.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root


def chat_cfg(tiny_model_dir, root, **kw):
    base = dict(model=str(tiny_model_dir), task="qa", corpus=str(root / "docs"), questions=str(root / "q.jsonl"), method="cpt",
                params="lora", epochs=2, lr=1e-2, precision="fp32", out=str(root / "runs"), progress=False, device="cpu",
                chat_template=str(root / "chat.jinja"), qa_train=str(root / "train_qa.jsonl"))
    return TrainConfig(**{**base, **kw})


def test_qa_train_questions_and_conversations_are_trained_as_the_template_asks(tiny_model_dir, chat_corpus):
    from engrain.methods import build_method

    run = prepare(chat_cfg(tiny_model_dir, chat_corpus))
    method = build_method("cpt", run)
    question, conversation = method.items[-2:]
    q = run.qa_train[0]
    ids, start = QAPrompt(run.lm.tokenizer, CHATML).pair(q, "On the salt coast")
    assert question["input_ids"] == ids and question["loss_mask"] == [0] * start + [1] * (len(ids) - start)
    assert conversation["input_ids"] == conversation_item(run.lm.tokenizer, CHATML, run.qa_train[1].messages, [])["input_ids"]
    assert method.record["qa_train"]["questions"] == 2


def test_a_document_run_through_a_chat_template_is_evaluated_as_it_trained(tiny_model_dir, chat_corpus):
    rec = train(chat_cfg(tiny_model_dir, chat_corpus))
    assert rec["config"]["chat_template"].endswith("chat.jinja") and "-chat-chat" in rec["name"]
    base = evaluate_documents(EvalConfig(model=str(tiny_model_dir), task="qa", corpus=str(chat_corpus / "docs"),
                                         questions=str(chat_corpus / "q.jsonl"), precision="fp32", out="", progress=False,
                                         chat_template=str(chat_corpus / "chat.jinja")))
    assert base["metrics"]["qa"]["accuracy_sum"] == rec["baselines"]["base"]["accuracy_sum"]  # references asked through the template
    again = evaluate_documents(EvalConfig(model=str(tiny_model_dir), task="qa", corpus=str(chat_corpus / "docs"),
                                          questions=str(chat_corpus / "q.jsonl"), adapter=rec["adapter"]["path"], precision="fp32",
                                          out="", progress=False))
    assert again["config"]["chat_template"] == rec["config"]["chat_template"]
    assert again["metrics"]["qa"]["accuracy"] == rec["metrics"]["qa"]["accuracy"]


def test_a_conversation_holding_a_scored_question_is_refused(tiny_model_dir, chat_corpus):
    leak = chat_corpus / "leak.jsonl"
    leak.write_text(json.dumps({"messages": [{"role": "user", "content": "Quiz: who keeps the lighthouse of Orrin?"},
                                             {"role": "assistant", "content": "Bel Tasso, of course."}]}) + "\n")
    with pytest.raises(EngrainError, match="1 of its questions are scored questions"):
        prepare(chat_cfg(tiny_model_dir, chat_corpus, qa_train=str(leak)))


@pytest.mark.parametrize("extra, message", [
    (["--chat-template", "none"], "is chat-formatted (\"messages\"): give a chat template"),
    (["--params", "prefix"], "--params prefix on documents starts as the corpus in plain text"),
])
def test_chat_document_cli_errors(tiny_model_dir, chat_corpus, extra, message, capsys):
    argv = ["train", "--model", str(tiny_model_dir), "--task", "qa", "--corpus", str(chat_corpus / "docs"), "--questions",
            str(chat_corpus / "q.jsonl"), "--method", "cpt", "--epochs", "1", "--precision", "fp32", "--out", str(chat_corpus / "runs"),
            "--no-progress", "--qa-train", str(chat_corpus / "train_qa.jsonl"), "--chat-template", str(chat_corpus / "chat.jinja"), *extra]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1
