"""Labelled tasks through a chat template (--chat-template; engrain.data.ChatPrompter)."""

from __future__ import annotations

import pytest

from engrain.cli import main
from engrain.config import EvalConfig, TrainConfig
from engrain.data import ChatPrompter, make_prompter, sample_few_shot
from engrain.evaluation import evaluate
from engrain.tasks import get_task, load_split
from engrain.train import train

CHATML = ("{% for m in messages %}{% if loop.first and m['role'] != 'system' %}<|system|>Be brief.\n{% endif %}"
          "<|{{ m['role'] }}|>{{ m['content'] }}<|end|>\n{% endfor %}{% if add_generation_prompt %}<|assistant|>{% endif %}")
BOS_FIRST = "{{ bos_token }}" + CHATML


@pytest.fixture
def template(tmp_path):
    f = tmp_path / "chat.jinja"
    f.write_text(CHATML)
    return f


@pytest.fixture
def yn_task(tmp_path, data_dir):
    """RTE's files with one-letter answers: "Y" / "N" are single tokens of the tiny tokenizer ("Yes" is not, unspaced)."""
    f = tmp_path / "rte_yn.yaml"
    f.write_text(f"train: {data_dir / 'rte' / 'train.jsonl'}\nvalidation: {data_dir / 'rte' / 'val.jsonl'}\n"
                 "text_fields: [premise, hypothesis]\nlabels: [entailment, not_entailment]\nverbalizers: [' Y', ' N']\n"
                 "template: '{premise}\\nQuestion: {hypothesis} Yes or no?'\n")
    return str(f)


def test_context_and_query_tokens_are_the_whole_conversations(tiny, template, yn_task):
    spec = get_task(yn_task)
    p = make_prompter(spec, spec.prompt_format(), tiny.tokenizer, str(template))
    assert isinstance(p, ChatPrompter) and p.answer("entailment") == "Y"
    demos = sample_few_shot(spec, load_split(spec, "train"), 4, 0)
    query = load_split(spec, "validation")[:3]
    for ex in query:
        whole = p.render([(p.fmt.fill(d), p.answer(spec.labels[d["label"]])) for d in demos] + [(p.fmt.fill(ex), None)], True)
        assert p.context_text(demos) + p.query_text(ex, True) == whole
        assert whole.endswith("<|assistant|>") and whole.count("<|user|>") == 5 and whole.count("<|assistant|>Y<|end|>") + \
            whole.count("<|assistant|>N<|end|>") == 4
        ids = tiny.tokenizer(whole, add_special_tokens=False)["input_ids"]
        assert p.context_ids(demos) + p.query_ids([ex], True)[0] == ids  # the split changes no token
    assert p.query_text(query[0], False) == p.render([(p.fmt.fill(query[0]), None)], True)
    assert p.verbalizer_ids() == [tiny.tokenizer("Y", add_special_tokens=False)["input_ids"][0],
                                  tiny.tokenizer("N", add_special_tokens=False)["input_ids"][0]]


def test_a_templates_bos_is_not_doubled(tiny_bos_dir, yn_task):
    from engrain.models import load_model

    lm = load_model(str(tiny_bos_dir), "fp32", "cpu")
    spec = get_task(yn_task)
    p = ChatPrompter(spec, spec.prompt_format(), lm.tokenizer, BOS_FIRST)
    demos = sample_few_shot(spec, load_split(spec, "train"), 2, 0)
    ids = p.context_ids(demos)
    assert ids[0] == lm.tokenizer.bos_token_id and ids[1] != lm.tokenizer.bos_token_id


def test_icl_and_pbft_through_a_chat_template_and_the_adapter_keeps_it(tiny_model_dir, template, yn_task, tmp_path):
    common = dict(model=str(tiny_model_dir), task=yn_task, shots=4, limit=8, ood=False, precision="fp32", out=str(tmp_path),
                  progress=False, chat_template=str(template))
    ev = evaluate(EvalConfig(**common))
    assert ev["name"].endswith("-chat-chat-n8") and ev["metrics"][yn_task]["n"] == 8
    rec = train(TrainConfig(**common, method="pbft", params="lora", epochs=2, lr=1e-2, eval_sample=4))
    assert rec["config"]["chat_template"] == str(template) and "-chat-chat" in rec["name"]
    again = evaluate(EvalConfig(model=str(tiny_model_dir), task=yn_task, adapter=rec["adapter"]["path"], limit=8, ood=False,
                                precision="fp32", out="", progress=False))
    assert again["metrics"][yn_task] == rec["metrics"][yn_task] and again["config"]["chat_template"] == str(template)  # evaluated through the template it trained with


@pytest.mark.parametrize("argv, message", [
    (["eval", "--task", "rte", "--chat-template", "/no/t.jinja"], "--chat-template must be none, auto or a Jinja template file"),
])
def test_bad_chat_templates_are_one_line_errors(argv, message, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1
