"""Asking and chatting with a base or trained model (engrain.ask; `engrain ask`, `engrain chat`)."""

from __future__ import annotations

import io
import json

import pytest
import torch

from engrain.ask import Asker, Settings, _Streamer, ask, chat, load
from engrain.cli import main
from engrain.config import TrainConfig
from engrain.chat import chat_template
from engrain.train import train_model

from conftest import write_two_docs

TEMPLATE = ("{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}\n{% endfor %}"
            "{% if add_generation_prompt %}<|assistant|>{% endif %}")


@pytest.fixture(scope="module")
def cft_run(tiny_model_dir, tmp_path_factory):
    """A CFT-LoRA run on a folder of two .md files, saved: what a user would then ask."""
    root = write_two_docs(tmp_path_factory.mktemp("asked"))
    q = root / "q.jsonl"
    cfg = TrainConfig(model=str(tiny_model_dir), task="qa", corpus=str(root / "docs"), questions=str(q), method="cft",
                      params="lora", epochs=2, lr=1e-2, precision="fp32", out=str(root / "runs"), progress=False, save=True)
    rec, _, _ = train_model(cfg)
    return root, rec["adapter"]["path"]


def greedy_by_hand(model, ids: list[int], n: int, eos: int) -> list[int]:
    """Greedy decoding as the definition: append the argmax of the last position's logits, no cache."""
    out = list(ids)
    with torch.no_grad():
        for _ in range(n):
            nxt = int(model(input_ids=torch.tensor([out])).logits[0, -1].argmax())
            if nxt == eos:
                break
            out.append(nxt)
    return out[len(ids):]


def test_answers_are_greedy_decoding_of_the_trained_model_batched_or_not(cft_run):
    _, adapter = cft_run
    lm = load("unused", adapter, "fp32", "cpu")
    asker = Asker(lm, None)
    settings = Settings(max_new_tokens=12)
    questions = ["Who keeps the lighthouse of Orrin?", "What does the mill of Dreust make, and where is the town?", "Bel?"]
    batched = [r["answer"] for r in ask(asker, questions, settings, batch_size=3)]
    alone = [r["answer"] for q in questions for r in ask(asker, [q], settings)]
    assert batched == alone  # left padding changes nothing
    tok = lm.tokenizer
    for q, a in zip(questions, alone):
        ids = tok(asker.prompt([], q), add_special_tokens=True)["input_ids"]
        assert asker.prompt([], q) == f"Question: {q}\nAnswer:"  # as the closed-book scorer and --qa-train ask
        assert a == asker.finish(tok.decode(greedy_by_hand(lm.model, ids, 12, tok.eos_token_id), skip_special_tokens=True))


def test_prompts_with_a_chat_template_context_and_history(tiny, tmp_path):
    template_file = tmp_path / "t.jinja"
    template_file.write_text(TEMPLATE)
    assert chat_template(tiny.tokenizer, "auto") is None  # the tiny tokenizer has none: plain Q/A
    asker = Asker(tiny, chat_template(tiny.tokenizer, str(template_file)), context="Doc one.\n\nDoc two.")
    assert asker.prompt([("Hi?", "Hello.")], "Who?") == \
        "<|user|>Doc one.\n\nDoc two.\n\nHi?\n<|assistant|>Hello.\n<|user|>Who?\n<|assistant|>"
    assert asker.prompt([], "Who?", context=False) == "<|user|>Who?\n<|assistant|>"
    plain = Asker(tiny, None, context="Doc.")
    assert plain.prompt([("A?", "a")], "B?") == "Doc.\n\nQuestion: A?\nAnswer: a\n\nQuestion: B?\nAnswer:"


def test_a_plain_prompt_starts_with_the_tokenizers_bos_and_a_templated_one_with_the_templates(tiny_bos_dir):
    from engrain.models import load_model

    lm = load_model(str(tiny_bos_dir), "fp32", "cpu")
    bos = lm.tokenizer.bos_token_id
    plain = Asker(lm, None)
    assert plain.encode(plain.prompt([], "Who?"))[:1] == [bos]  # as the scorer reads every prompt
    templated = Asker(lm, "{{ bos_token }}{% for m in messages %}{{ m['content'] }}{% endfor %}")
    ids = templated.encode(templated.prompt([], "Who?"))
    assert ids[0] == bos and ids[1] != bos  # the template's BOS, not a second one


def test_the_streamer_prints_the_reply_and_holds_back_a_stop_string(tiny):
    out = io.StringIO()
    s = _Streamer(Asker(tiny, None), out)
    for chunk in [" Bel Tasso", " keeps it.", "\n", "\nQuestion: who", " else?"]:
        s.add(chunk, False)
        assert "\n" not in out.getvalue()  # a newline might begin a stop string: not shown yet
    s.add("", True)
    assert out.getvalue() == "Bel Tasso keeps it.\n"
    templated = io.StringIO()
    t = _Streamer(Asker(tiny, TEMPLATE), templated)
    t.add("Line one.\n\nLine two.", True)  # a template's reply ends at EOS only
    assert templated.getvalue() == "Line one.\n\nLine two.\n"


def test_chat_streams_each_reply_keeps_the_conversation_and_resets(cft_run, tiny_model_dir):
    _, adapter = cft_run
    asker = Asker(load("unused", adapter, "fp32", "cpu"), None)
    out = io.StringIO()
    turns = chat(asker, Settings(max_new_tokens=8), lines=io.StringIO("Who keeps it?\n/reset\nWho?\nAnd then?\n/exit\nnever\n"), out=out)
    shown = out.getvalue().split("\n")
    assert [q for q, _ in turns] == ["Who?", "And then?"]  # the reset forgot the first; /exit ended before "never"
    assert shown[1] == "(conversation reset)" and shown[2:4] == [a for _, a in turns]  # streamed = the replies kept
    # the second question is asked after the first turn, as the model's history
    assert asker.generate([asker.prompt(turns[:1], "And then?")], Settings(max_new_tokens=8))[0] == turns[1][1]


def test_ask_and_compare_from_the_cli(cft_run, tiny_model_dir, capsys):
    root, adapter = cft_run
    assert main(["ask", "--adapter", adapter, "--precision", "fp32", "--max-new-tokens", "6", "Who keeps the lighthouse?"]) == 0
    assert capsys.readouterr().out.strip() != ""
    assert main(["ask", "--model", str(tiny_model_dir), "--precision", "fp32", "--max-new-tokens", "6", "--context",
                 str(root / "docs"), "--compare", "Who keeps the lighthouse?"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("closed book:") and lines[1].startswith("open book:")
    out = root / "answers.jsonl"
    assert main(["ask", "--adapter", adapter, "--precision", "fp32", "--max-new-tokens", "4", "--questions", str(root / "q.jsonl"),
                 "--out", str(out), "--temperature", "0.8", "--top-p", "0.9"]) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["question"] for r in rows] == ["Who keeps the lighthouse of Orrin?"] and isinstance(rows[0]["answer"], str)


def test_chat_from_the_cli(cft_run, monkeypatch, capsys):
    _, adapter = cft_run
    monkeypatch.setattr("sys.stdin", io.StringIO("Hello?\n"))
    assert main(["chat", "--adapter", adapter, "--precision", "fp32", "--max-new-tokens", "4"]) == 0
    assert "plain Question/Answer turns" in capsys.readouterr().err


@pytest.mark.parametrize("argv, message", [
    (["ask"], "give one question, or --questions FILE"),
    (["ask", "Q?", "--questions", "q.txt"], "give one question, or --questions FILE"),
    (["ask", "Q?", "--compare"], "--compare puts the closed-book answer beside the open-book one: give --context"),
    (["ask", "--questions", "/no/q.txt"], "--questions: file not found: /no/q.txt"),
    (["ask", "Q?", "--temperature", "-1"], "--temperature must be >= 0"),
    (["ask", "Q?", "--top-p", "0"], "--top-p must be in (0, 1]"),
    (["ask", "Q?", "--context", "/no/docs"], "corpus not found: /no/docs"),
    (["ask", "Q?", "--adapter", "/no/run"], "--adapter: run folder not found: /no/run"),
    (["chat", "--max-new-tokens", "0"], "--max-new-tokens must be an integer >= 1"),
])
def test_bad_ask_options_are_one_line_errors(argv, message, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


def test_a_head_run_and_a_missing_template_are_refused(tiny_model_dir, tmp_path, capsys):
    head = tmp_path / "head-run"
    head.mkdir()
    (head / "engrain.json").write_text(json.dumps({"method": "head", "params": "lora", "base_model": str(tiny_model_dir)}))
    assert main(["ask", "Q?", "--adapter", str(head)]) == 2
    assert "is a classification-head run" in capsys.readouterr().err
    assert main(["ask", "Q?", "--model", str(tiny_model_dir), "--chat-template", "/no/t.jinja"]) == 2
    assert "--chat-template must be auto, none or a Jinja template file" in capsys.readouterr().err
