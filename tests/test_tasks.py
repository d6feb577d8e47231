"""Every task loads with the right counts and labels; formats are consistent; bad files fail clearly."""

from __future__ import annotations

import json
from collections import Counter

import pytest

from engrain.errors import EngrainError
from engrain.tasks import TASKS, get_task, load_split

# (task, split) -> (rows, label counts), as read from ../shared/data (see its README).
EXPECTED = {
    ("rte", "train"): (2490, {"entailment": 1249, "not_entailment": 1241}),
    ("rte", "validation"): (277, {"entailment": 146, "not_entailment": 131}),
    # binarised: neutral dropped, contradiction -> not_entailment
    ("mnli", "train"): (6019, {"entailment": 3061, "not_entailment": 2958}),
    ("mnli", "validation"): (6692, {"entailment": 3479, "not_entailment": 3213}),
    ("mnli3", "train"): (8999, {"entailment": 3061, "neutral": 2980, "contradiction": 2958}),
    ("mnli3", "validation"): (9815, {"entailment": 3479, "neutral": 3123, "contradiction": 3213}),
    ("hans", "validation"): (15000, {"entailment": 7508, "not_entailment": 7492}),
    ("qqp", "train"): (8999, {"not_duplicate": 5747, "duplicate": 3252}),
    ("qqp", "validation"): (1000, {"not_duplicate": 623, "duplicate": 377}),
    ("paws-qqp", "validation"): (677, {"not_duplicate": 486, "duplicate": 191}),
    ("cola", "train"): (8551, {"unacceptable": 2528, "acceptable": 6023}),
    ("cola", "validation"): (527, {"unacceptable": 162, "acceptable": 365}),
    ("cola-ood", "validation"): (516, {"unacceptable": 162, "acceptable": 354}),
}


def test_every_split_is_covered():
    assert set(EXPECTED) == {(t, s) for t, spec in TASKS.items() for s in spec.splits}


@pytest.mark.parametrize("task,split", sorted(EXPECTED))
def test_split_counts_and_labels(data_dir, task, split):
    spec = get_task(task)
    examples = load_split(spec, split, data_dir)
    n, labels = EXPECTED[(task, split)]
    assert len(examples) == n
    assert Counter(spec.labels[ex["label"]] for ex in examples) == labels
    for ex in examples[:50]:
        assert all(isinstance(ex[f], str) and ex[f].strip() for f in spec.fields)


def test_hans_keeps_heuristics(data_dir):
    hans = load_split(get_task("hans"), "validation", data_dir)
    assert {ex["heuristic"] for ex in hans} == {"lexical_overlap", "subsequence", "constituent"}
    assert len({ex["subcase"] for ex in hans}) == 30


def test_quotes_are_literal_in_tsv(data_dir):
    # dev_matched.tsv has unbalanced quotes; csv quoting would merge lines and lose rows.
    rows = load_split(get_task("mnli3"), "validation", data_dir)
    assert any('"' in ex["premise"] for ex in rows)


def test_formats_use_only_task_fields_and_cover_labels():
    for spec in TASKS.values():
        for name, fmt in spec.formats.items():
            assert set(fmt.placeholders()) <= set(spec.fields), (spec.name, name)
            assert set(fmt.verbalizers) == set(spec.labels), (spec.name, name)
            assert not fmt.template.endswith(" "), "the verbaliser carries the space, not the prompt"
            assert all(v.startswith(" ") for v in fmt.verbalizers.values())
        assert spec.default_format in spec.formats


def test_ood_partners_share_fields_and_map_labels():
    for spec in TASKS.values():
        for partner in spec.ood:
            target = get_task(partner.task)
            assert target.fields == spec.fields
            names = [partner.label_map[lab] for lab in spec.labels] if partner.label_map else list(spec.labels)
            assert set(names) <= set(target.labels)


def test_braces_in_data_are_not_interpreted():
    fmt = get_task("rte").prompt_format("minimal")
    assert fmt.fill({"premise": "a {hypothesis} {0} }", "hypothesis": "b"}) == "a {hypothesis} {0} } b ?"


def test_custom_template_and_escaped_newline():
    fmt = get_task("rte").prompt_format("eval-harness", template="P: {premise}\\nH: {hypothesis}\\nA:")
    assert fmt.template == "P: {premise}\nH: {hypothesis}\nA:"
    assert fmt.verbalizers["entailment"] == " True"


def test_template_with_unknown_placeholder_is_rejected():
    with pytest.raises(EngrainError, match=r"\{question\} is not a field of task rte"):
        get_task("rte").prompt_format(template="{premise} {question}")


def test_unknown_task_suggests():
    with pytest.raises(EngrainError, match="Did you mean 'mnli'"):
        get_task("mlni")


# ---------------------------------------------------------------------------- bad files


def _write(root, rel, text):
    p = root / rel
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(text)
    return p


def test_missing_file(tmp_path):
    with pytest.raises(EngrainError, match=r"data file not found: .*rte/val.jsonl"):
        load_split(get_task("rte"), "validation", tmp_path)


def test_missing_data_dir(tmp_path):
    with pytest.raises(EngrainError, match="data folder not found"):
        load_split(get_task("rte"), "validation", tmp_path / "nope")


def test_missing_column_names_file_and_line(tmp_path):
    good = {"premise": "a", "hypothesis": "b", "label": "entailment"}
    _write(tmp_path, "rte/val.jsonl", json.dumps(good) + "\n" + json.dumps({"premise": "a", "label": "entailment"}) + "\n")
    with pytest.raises(EngrainError, match=r"val.jsonl:2: missing column 'hypothesis'"):
        load_split(get_task("rte"), "validation", tmp_path)


def test_unknown_label_names_file_and_line(tmp_path):
    rows = [{"premise": "a", "hypothesis": "b", "label": "entailment"}, {"premise": "a", "hypothesis": "b", "label": "maybe"}]
    _write(tmp_path, "rte/val.jsonl", "\n".join(map(json.dumps, rows)))
    with pytest.raises(EngrainError, match=r"val.jsonl:2: unknown label 'maybe'; expected one of 'entailment', 'not_entailment'"):
        load_split(get_task("rte"), "validation", tmp_path)


def test_malformed_json_line(tmp_path):
    _write(tmp_path, "rte/val.jsonl", '{"premise": "a"\n')
    with pytest.raises(EngrainError, match=r"val.jsonl:1: not valid JSON"):
        load_split(get_task("rte"), "validation", tmp_path)


def test_short_tsv_row(tmp_path):
    _write(tmp_path, "hans/hans_eval_dev.tsv", "gold_label\tsentence1\tsentence2\theuristic\nentailment\ta\n")
    with pytest.raises(EngrainError, match=r"hans_eval_dev.tsv:2: 2 tab-separated columns, expected 4"):
        load_split(get_task("hans"), "validation", tmp_path)


def test_tsv_missing_column(tmp_path):
    _write(tmp_path, "hans/hans_eval_dev.tsv", "label\tsentence1\tsentence2\nentailment\ta\tb\n")
    with pytest.raises(EngrainError, match=r"hans_eval_dev.tsv:2: missing column 'gold_label'"):
        load_split(get_task("hans"), "validation", tmp_path)


def test_task_not_on_hub_says_what_to_do():
    with pytest.raises(EngrainError, match=r"not on the Hugging Face hub .*; pass --data-dir"):
        load_split(get_task("paws-qqp"), "validation", None)


def test_hub_unreachable_is_one_clear_error(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    with pytest.raises(EngrainError, match=r"could not load nyu-mll/glue/rte \(validation\) from the hub: .*pass --data-dir"):
        load_split(get_task("rte"), "validation", None)
