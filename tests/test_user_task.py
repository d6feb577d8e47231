"""Your own labelled task from a YAML file (engrain.tasks.user): files or a hub-style dataset, every method."""

from __future__ import annotations

import csv
import json

import pytest

from engrain.cli import main
from engrain.config import EvalConfig, TrainConfig
from engrain.errors import EngrainError
from engrain.evaluation import evaluate
from engrain.tasks import get_task, load_split
from engrain.train import train

GOOD = ["a warm and funny film", "the cast is wonderful", "I loved every minute", "a bright, clever story", "pure joy to watch"]
BAD = ["a dull and tired film", "the plot makes no sense", "I left halfway", "a cold, empty story", "a waste of an evening"]


def write_csv(path, rows):
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["review", "sentiment"])
        w.writeheader()
        w.writerows(rows)


@pytest.fixture
def task_file(tmp_path):
    rows = [{"review": f"{t} ({i})", "sentiment": s} for i in range(4) for t, s in [*((g, "positive") for g in GOOD),
                                                                                   *((b, "negative") for b in BAD)]]
    (tmp_path / "data").mkdir()
    write_csv(tmp_path / "data" / "train.csv", rows[:30])
    write_csv(tmp_path / "data" / "dev.csv", rows[30:])
    (tmp_path / "data" / "ood.jsonl").write_text("".join(json.dumps({"review": t, "sentiment": "positive" if t in GOOD else "negative"})
                                                         + "\n" for t in GOOD + BAD))
    f = tmp_path / "reviews.yaml"
    f.write_text("train: data/train.csv\nvalidation: data/dev.csv\ntext_fields: [review]\nlabel_field: sentiment\n"
                 "labels: [positive, negative]\nverbalizers: [' Yes', ' No']\ntemplate: 'Review: {review}\\nDid they like it?'\n"
                 "ood: {validation: data/ood.jsonl}\n")
    return f


def test_a_task_file_reads_its_files_with_labels_in_class_order(task_file):
    spec = get_task(str(task_file))
    assert spec.labels == ("positive", "negative") and spec.fields == ("review",)
    train_ex = load_split(spec, "train", "/ignored/data/dir")  # your files, whatever --data-dir says
    assert len(train_ex) == 30 and train_ex[0]["line"] == "train.csv:2"
    assert {ex["label"] for ex in train_ex if ex["review"].startswith(GOOD[0])} == {0}
    ood = get_task(spec.ood[0].task)
    assert [ex["label"] for ex in load_split(ood, "validation")] == [0] * 5 + [1] * 5
    assert spec.prompt_format().fill({"review": "ok"}) == "Review: ok\nDid they like it?"


@pytest.mark.parametrize("kw", [dict(method="pbft", params="lora"), dict(method="distill", params="lora"),
                                dict(method="head", params="lora")])
def test_icl_and_each_method_run_on_your_task(tiny_model_dir, task_file, tmp_path, kw):
    common = dict(model=str(tiny_model_dir), task=str(task_file), shots=4, precision="fp32", out=str(tmp_path / "runs"), progress=False)
    ev = evaluate(EvalConfig(**common))
    assert set(ev["metrics"]) == {str(task_file), f"{task_file}#ood"} and ev["metrics"][str(task_file)]["n"] == 10
    assert ev["name"].startswith("eval-reviews-icl-")
    rec = train(TrainConfig(**common, **kw, epochs=1, transfer_size=8, eval_sample=4, save=False))
    assert rec["metrics"][f"{task_file}#ood"]["n"] == 10 and rec["name"].startswith(f"train-reviews-{kw['method']}-lora")


@pytest.mark.parametrize("source", ["hub id", "dataset folder"])
def test_a_hub_dataset_with_class_labels(tiny_model_dir, tmp_path, hub_cache, source):
    """`data: ID` goes through datasets.load_dataset: a hub id (read from a local datasets cache, the hub offline) or
    a local dataset folder; a ClassLabel column's ids are read as its names."""
    import datasets

    feats = datasets.Features({"text": datasets.Value("string"), "label": datasets.ClassLabel(names=["neg", "pos"])})
    splits = {}
    for split, n in (("train", 12), ("validation", 6)):
        texts = [(GOOD + BAD)[i % 10] for i in range(n)]
        labels = [int(t in GOOD) for t in texts]
        texts = [f"{t} ({split} {i})" for i, t in enumerate(texts)]  # none read twice: evaluation examples are never trained on
        splits[split] = datasets.Dataset.from_dict({"text": texts, "label": labels}, features=feats)
    if source == "hub id":
        hub_cache("engrain-test/reviews", splits)
        data = "engrain-test/reviews"
    else:
        (tmp_path / "ds").mkdir()
        for split, ds in splits.items():
            ds.to_parquet(str(tmp_path / "ds" / f"{split}.parquet"))
        data = tmp_path / "ds"
    f = tmp_path / "t.yml"
    f.write_text(f"data: {data}\ntext_fields: text\nlabels: {{pos: positive, neg: negative}}\n"
                 "verbalizers: [' Yes', ' No']\ntemplate: '{text} Good?'\n")
    spec = get_task(str(f))
    exs = load_split(spec, "validation")
    assert len(exs) == 6 and all(ex["label"] == (0 if ex["text"].split(" (")[0] in GOOD else 1) for ex in exs)
    rec = train(TrainConfig(model=str(tiny_model_dir), task=str(f), method="pbft", params="lora", shots=4, epochs=1, eval_sample=4,
                            precision="fp32", out="", progress=False, save=False))
    assert rec["metrics"][str(f)]["n"] == 6


@pytest.mark.parametrize("body, message", [
    ("text_fields: [review]\nlabels: [a, b]\nverbalizers: [' A', ' B']\ntemplate: '{review}'\n", "missing the data"),
    ("data: d.csv\nlabels: [a, b]\nverbalizers: [' A', ' B']\ntemplate: '{review}'\n", "missing 'text_fields'"),
    ("data: d.csv\ntext_fields: review\nlabels: [a, b]\nverbalizers: [' A']\ntemplate: '{review}'\n", "1 verbalizers for 2 labels"),
    ("data: d.csv\ntext_fields: review\nlabels: [a, b]\nverbalizers: [' A', ' B']\ntemplate: '{reveiw}'\n",
     "format placeholder {reveiw} is not a field"),
    ("data: d.csv\ntext_fields: review\nlabels: [a, b]\nverbalisers: [' A', ' B']\ntemplate: '{review}'\n",
     "Did you mean 'verbalizers'?"),
])
def test_bad_task_files_are_one_line_errors(tmp_path, body, message, capsys):
    f = tmp_path / "bad.yaml"
    f.write_text(body)
    assert main(["eval", "--task", str(f), "--out", ""]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


def test_bad_data_names_the_line_and_suggests_the_column(task_file, tmp_path):
    (task_file.parent / "data" / "dev.csv").write_text("reveiw,sentiment\nfine,positive\n")
    with pytest.raises(EngrainError, match=r"dev.csv:2: column 'review'. Did you mean 'reveiw'\?"):
        load_split(get_task(str(task_file)), "validation")
    (task_file.parent / "data" / "dev.csv").write_text("review,sentiment\nfine,meh\n")
    with pytest.raises(EngrainError, match=r"dev.csv:2: label 'meh' is not one of the task's labels \(positive, negative\)"):
        load_split(get_task(str(task_file)), "validation")
    with pytest.raises(EngrainError, match="task file not found: /no/task.yaml"):
        get_task("/no/task.yaml")
