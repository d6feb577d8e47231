"""The built-in tasks. Formats follow uds-lsv/llmft (minimal, gpt-3, eval-harness) without its bugs."""

from __future__ import annotations

from engrain.tasks.spec import HubSource, LocalSource, OODPartner, PromptFormat, Split, TaskSpec

# ---------------------------------------------------------------------------- NLI (2-way and 3-way)

ENT, NOT = "entailment", "not_entailment"
NLI2 = (ENT, NOT)
NLI3 = ("entailment", "neutral", "contradiction")
PH = ("premise", "hypothesis")

NLI2_FORMATS = {
    "minimal": PromptFormat("{premise} {hypothesis} ?", {ENT: " Yes", NOT: " No"}),
    "gpt-3": PromptFormat("{premise} question: {hypothesis} Yes or No? answer:", {ENT: " Yes", NOT: " No"}),
    "eval-harness": PromptFormat(
        "{premise}\nQuestion: {hypothesis} True or False?\nAnswer:", {ENT: " True", NOT: " False"}
    ),
}
NLI3_FORMATS = {
    "minimal": PromptFormat(
        "{premise} {hypothesis} ?", {"entailment": " Yes", "neutral": " Maybe", "contradiction": " No"}
    ),
    "gpt-3": PromptFormat(
        "{premise} question: {hypothesis} Yes, No, or Maybe? answer:",
        {"entailment": " Yes", "neutral": " Maybe", "contradiction": " No"},
    ),
    "eval-harness": PromptFormat(
        "{premise}\nQuestion: {hypothesis} True, False or Neither?\nAnswer:",
        {"entailment": " True", "neutral": " Neither", "contradiction": " False"},
    ),
}

GLUE_RTE = dict(path="nyu-mll/glue", config="rte", columns={"premise": "sentence1", "hypothesis": "sentence2"})
GLUE_MNLI = dict(path="nyu-mll/glue", config="mnli", columns={"premise": "premise", "hypothesis": "hypothesis"})
JSON_AB = {"premise": "text_a", "hypothesis": "text_b", "label": "label"}
# MNLI binarised as in llmft: neutral dropped, contradiction -> not_entailment.
MNLI2_LABELS = {"entailment": ENT, "neutral": None, "contradiction": NOT}
MNLI3_LABELS = {k: k for k in NLI3}
DEV_MATCHED_COLS = {"premise": "premise", "hypothesis": "hypothesis", "label": "gold_label"}


def _mnli_splits(labels: dict[str, str | None]) -> dict[str, Split]:
    hub_labels = tuple(labels[name] for name in NLI3)  # hub ids 0/1/2 = entailment/neutral/contradiction
    return {
        "train": Split(
            LocalSource("mnli/train.json", "json_dict", JSON_AB, labels),
            HubSource(**GLUE_MNLI, split="train", labels=hub_labels),
        ),
        "validation": Split(
            LocalSource("mnli/dev_matched.tsv", "tsv", DEV_MATCHED_COLS, labels),
            HubSource(**GLUE_MNLI, split="validation_matched", labels=hub_labels),
        ),
    }


HANS_OOD = OODPartner("hans")

TASKS: dict[str, TaskSpec] = {}


def register(spec: TaskSpec) -> TaskSpec:
    TASKS[spec.name] = spec
    return spec


register(
    TaskSpec(
        name="rte",
        description="RTE (GLUE): does the premise entail the hypothesis?",
        fields=PH,
        labels=NLI2,
        splits={
            "train": Split(
                LocalSource("rte/train.jsonl", "jsonl", {**dict(zip(PH, PH)), "label": "label"}, {ENT: ENT, NOT: NOT}),
                HubSource(**GLUE_RTE, split="train", labels=NLI2),
            ),
            "validation": Split(
                LocalSource("rte/val.jsonl", "jsonl", {**dict(zip(PH, PH)), "label": "label"}, {ENT: ENT, NOT: NOT}),
                HubSource(**GLUE_RTE, split="validation", labels=NLI2),
            ),
        },
        formats=NLI2_FORMATS,
        default_format="gpt-3",
        ood=(HANS_OOD,),
    )
)
register(
    TaskSpec(
        name="mnli",
        description="MultiNLI binarised as llmft: neutral dropped, contradiction -> not_entailment",
        fields=PH,
        labels=NLI2,
        splits=_mnli_splits(MNLI2_LABELS),
        formats=NLI2_FORMATS,
        default_format="gpt-3",
        ood=(HANS_OOD,),
    )
)
register(
    TaskSpec(
        name="mnli3",
        description="MultiNLI, 3-way; on HANS neutral/contradiction count as not_entailment",
        fields=PH,
        labels=NLI3,
        splits=_mnli_splits(MNLI3_LABELS),
        formats=NLI3_FORMATS,
        default_format="gpt-3",
        ood=(OODPartner("hans", {"entailment": ENT, "neutral": NOT, "contradiction": NOT}),),
    )
)
register(
    TaskSpec(
        name="hans",
        description="HANS (McCoy et al. 2019) NLI heuristics probe; evaluation only",
        fields=PH,
        labels=NLI2,
        splits={
            "validation": Split(
                LocalSource(
                    "hans/hans_eval_dev.tsv",
                    "tsv",
                    {"premise": "sentence1", "hypothesis": "sentence2", "label": "gold_label"},
                    {"entailment": ENT, "non-entailment": NOT},
                ),
                HubSource(
                    "jhu-cogsci/hans",
                    None,
                    "validation",
                    {"premise": "premise", "hypothesis": "hypothesis"},
                    NLI2,
                ),
            )
        },
        formats=NLI2_FORMATS,
        default_format="gpt-3",
        breakdown=("heuristic",),
        meta=("heuristic", "subcase"),
    )
)

# ---------------------------------------------------------------------------- paraphrase: QQP -> PAWS-QQP

QQ = ("question1", "question2")
NODUP, DUP = "not_duplicate", "duplicate"
QQP_FORMATS = {
    "minimal": PromptFormat("{question1} {question2} ?", {NODUP: " No", DUP: " Yes"}),
    "gpt-3": PromptFormat("{question1} question: {question2} Same meaning? Yes or No? answer:", {NODUP: " No", DUP: " Yes"}),
    "eval-harness": PromptFormat(
        "Question 1: {question1}\nQuestion 2: {question2}\nQuestion: Do both questions ask the same thing?\nAnswer:",
        {NODUP: " no", DUP: " yes"},
    ),
}
GLUE_QQP = dict(path="nyu-mll/glue", config="qqp", columns={"question1": "question1", "question2": "question2"})
QQP_JSON = {"question1": "text_a", "question2": "text_b", "label": "label"}
QQP_LABELS = {"0": NODUP, "1": DUP}

register(
    TaskSpec(
        name="qqp",
        description="Quora Question Pairs: are the two questions duplicates?",
        fields=QQ,
        labels=(NODUP, DUP),
        splits={
            "train": Split(
                LocalSource("qqp/train.json", "json_dict", QQP_JSON, QQP_LABELS),
                HubSource(**GLUE_QQP, split="train", labels=(NODUP, DUP)),
            ),
            "validation": Split(
                LocalSource("qqp/dev.json", "json_dict", QQP_JSON, QQP_LABELS),
                HubSource(**GLUE_QQP, split="validation", labels=(NODUP, DUP)),
            ),
        },
        formats=QQP_FORMATS,
        default_format="gpt-3",
        ood=(OODPartner("paws-qqp"),),
    )
)
register(
    TaskSpec(
        name="paws-qqp",
        description="PAWS-QQP: adversarial paraphrases with high word overlap; evaluation only",
        fields=QQ,
        labels=(NODUP, DUP),
        splits={
            "validation": Split(
                LocalSource(
                    "paws_qqp/dev_and_test.tsv",
                    "tsv",
                    {"question1": "sentence1", "question2": "sentence2", "label": "label"},
                    QQP_LABELS,
                )
            )
        },
        formats=QQP_FORMATS,
        default_format="gpt-3",
        hub_note="PAWS-QQP is not on the Hugging Face hub (it is built from QQP with the PAWS scripts)",
    )
)

# ---------------------------------------------------------------------------- acceptability: CoLA -> CoLA-OOD

BAD, GOOD = "unacceptable", "acceptable"
COLA_FORMATS = {
    "minimal": PromptFormat("{sentence} ?", {BAD: " No", GOOD: " Yes"}),
    "gpt-3": PromptFormat("{sentence} question: Is this sentence grammatical? Yes or No? answer:", {BAD: " No", GOOD: " Yes"}),
    "eval-harness": PromptFormat("{sentence}\nQuestion: Does this sentence make sense?\nAnswer:", {BAD: " no", GOOD: " yes"}),
}
COLA_TSV = dict(
    reader="tsv_noheader",
    columns={"sentence": "sentence", "label": "label"},
    labels={"0": BAD, "1": GOOD},
    header=("source", "label", "mark", "sentence"),
)
# The hub's glue/cola validation split is the 527 in-domain dev sentences followed by the 516 out-of-domain ones.
GLUE_COLA = dict(path="nyu-mll/glue", config="cola", columns={"sentence": "sentence"}, labels=(BAD, GOOD))

register(
    TaskSpec(
        name="cola",
        description="CoLA: is the sentence grammatically acceptable?",
        fields=("sentence",),
        labels=(BAD, GOOD),
        splits={
            "train": Split(LocalSource("cola/in_domain_train.tsv", **COLA_TSV), HubSource(**GLUE_COLA, split="train")),
            "validation": Split(
                LocalSource("cola/in_domain_dev.tsv", **COLA_TSV),
                HubSource(**GLUE_COLA, split="validation", rows=(0, 527)),
            ),
        },
        formats=COLA_FORMATS,
        default_format="gpt-3",
        ood=(OODPartner("cola-ood"),),
    )
)
register(
    TaskSpec(
        name="cola-ood",
        description="CoLA out-of-domain dev; evaluation only",
        fields=("sentence",),
        labels=(BAD, GOOD),
        splits={
            "validation": Split(
                LocalSource("cola_ood/out_of_domain_dev.tsv", **COLA_TSV),
                HubSource(**GLUE_COLA, split="validation", rows=(527, 1043)),
            )
        },
        formats=COLA_FORMATS,
        default_format="gpt-3",
    )
)
