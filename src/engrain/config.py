"""Typed run configuration: one dataclass per command, documented once, mapped to CLI flags and YAML.

Each field's ``help`` is its documentation; the CLI builds its flags from these fields, and a YAML
file (``--config run.yaml``) sets the same names. Validation happens when the config is built, before
any data or model is loaded.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


from engrain.errors import EngrainError
from engrain.yamlfile import load_yaml  # noqa: F401  (engrain.config.load_yaml: configs and sweeps read it from here)
from engrain.names import CFT_PROMPTS, DOC_METHODS, PARAM_SETS, PRECISIONS, TRAIN_METHODS


def opt(default: Any, help: str, **kw) -> Any:
    return field(default=default, metadata={"help": help, **kw})


@dataclass
class EvalConfig:
    """In-context learning evaluation of a model on a task and its out-of-domain partners."""

    model: str = opt("smollm2-135m", "model: a bundled alias (engrain models), a local folder, a .gguf file or a hub id")
    task: str = opt("rte", "task name (engrain tasks)")
    shots: int = opt(16, "number of demonstrations k (0 = zero-shot)")
    seed: int = opt(0, "seed of the demonstration sample")
    format: str | None = opt(None, "prompt format: minimal, gpt-3 or eval-harness (default: the task's)")
    template: str | None = opt(None, "your own pattern with the task's fields in braces; the format's verbalisers are kept")
    chat_template: str = opt("none", "none (plain prompts, as llmft), auto (the tokenizer's chat template, if it has one) or a "
                                     "Jinja file. Labelled tasks: each demonstration a user turn and an assistant turn, the query "
                                     "a user turn, the answer the assistant's first token. Documents: each question (after its "
                                     "documents, open book) a user turn, each choice the assistant's reply; --qa-train's "
                                     "questions and conversations are trained so; the documents themselves stay plain text")
    balanced: bool = opt(True, "sample demonstrations class-balanced")
    ood: bool = opt(True, "also evaluate on the task's out-of-domain partners")
    limit: int | None = opt(None, "evaluate on the first N examples of each split")
    sample: int | None = opt(None, "evaluate on a seeded sample of N examples per set, stratified by label (and HANS heuristic)")
    sample_seed: int = opt(0, "seed of the evaluation sample (--sample, eval_sample): fixed, so every seed and method is scored on the same examples")
    batch_size: int | None = opt(None, "queries per forward pass (default: 16 on CPU, 64 on a GPU)")
    precision: str = opt("auto", "auto (bf16 where the hardware has it, else fp32), bf16, fp16 (GPUs without bf16; training scales the loss) or fp32")
    device: str = opt("auto", "auto, cpu, cuda or cuda:N")
    data_dir: str | None = opt(None, "folder laid out like engrain's data (default: $ENGRAIN_DATA, else the hub)")
    out: str | None = opt("runs", "folder for the run record (JSON); empty to write none")
    progress: bool = opt(True, "show progress bars")
    adapter: str | None = opt(None, "evaluate a model saved by `engrain train` (its folder); prompts without demonstrations, --shots is ignored")
    corpus: str | None = opt(None, "--task qa: your documents (a folder of .txt/.md files, a .jsonl of {id, text}, or "
                                   "hf:DATASET_ID[:SPLIT], a Hugging Face dataset: --text-field)")
    questions: str | None = opt(None, "--task qa: multiple-choice questions about them (JSONL: question, choices, answer, doc)")
    text_field: str = opt("text", "a corpus given as hf:DATASET_ID[:SPLIT] (--corpus, --train-data): the column holding each "
                                  "document's text")
    open_book: bool = opt(False, "document tasks: put each question's documents in the prompt (ICL with the documents; default: closed book)")

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        from engrain.tasks import get_task
        from engrain.tasks.documents import is_document_task

        _coerce_numbers(self)
        for name in ("seed", "sample_seed"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool):
                raise EngrainError(f"--{name.replace('_', '-')} must be an integer, got {value!r}")
        if self.batch_size is not None:
            _at_least("batch_size", self.batch_size, 1)
        if self.limit is not None:
            _at_least("limit", self.limit, 1)
        if self.sample is not None:
            _at_least("sample", self.sample, 1)
        if self.precision not in PRECISIONS:
            raise EngrainError(f"--precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        if self.chat_template not in ("none", "auto") and not Path(self.chat_template).is_file():
            raise EngrainError(f"--chat-template must be none, auto or a Jinja template file; file not found: {self.chat_template}")
        if is_document_task(self.task):
            return self._validate_document_task()
        spec = get_task(self.task)
        spec.prompt_format(self.format, self.template)
        if self.adapter is not None:
            self.shots = 0
        _at_least("shots", self.shots, 0)
        if self.shots > 0 and "train" not in spec.splits:
            raise EngrainError(
                f"task {self.task} has no train split to draw demonstrations from; use --shots 0, "
                "or evaluate it as the out-of-domain partner of another task"
            )

    def _validate_document_task(self) -> None:
        """Document tasks (facts, qa): files named must exist; there are no demonstrations or formats."""
        if self.sample is not None:
            raise EngrainError(f"--sample draws a label-stratified sample of a classification set; --task {self.task} has questions, "
                               "not labels: use --limit N (its first N questions)")
        if self.task.split(":")[0] != "qa" and (self.corpus or self.questions):
            raise EngrainError(f"--corpus and --questions go with --task qa; --task {self.task} brings its own documents and questions "
                               f"(to use its files elsewhere: engrain facts --out DIR)")
        for name in ("corpus", "questions"):
            path = getattr(self, name)
            if self.task.split(":")[0] == "qa" and path is None:
                raise EngrainError("--task qa needs --corpus (your documents) and --questions (multiple-choice questions about them)")
            if path is not None and not path.startswith("hf:") and not Path(path).exists():
                raise EngrainError(f"--{name} not found: {path}")


def trains_on_documents(method: str, task: str, train_data: str | None) -> bool:
    """cpt and cft always train on documents; distill does on a document task, or when --train-data is
    a corpus (a path, or facts) rather than a task name."""
    from engrain.tasks.documents import is_document_task
    from engrain.tasks.registry import TASKS

    if method in DOC_METHODS:
        return True
    if method != "distill":
        return False
    from engrain.tasks.user import is_task_file

    return is_document_task(task) if train_data is None else train_data.split(":")[0] not in TASKS and not is_task_file(train_data)


def _coerce_numbers(cfg: Any) -> None:
    """Make every numeric field a number of its type, or fail naming the key.

    PyYAML reads ``1e-3`` and ``5e-2`` (no dot) as strings; a float field takes them, and ints, as floats.
    An int field keeps non-integers as they are, for its own range check to name them.
    """
    hints = typing.get_type_hints(type(cfg))
    for f in dataclasses.fields(cfg):
        kinds = set(typing.get_args(hints[f.name]) or (hints[f.name],)) - {type(None)}
        value = getattr(cfg, f.name)
        if value is None or isinstance(value, bool) or not kinds & {int, float}:
            continue
        if float in kinds:
            try:
                setattr(cfg, f.name, float(value))
            except (TypeError, ValueError):
                raise EngrainError(f"--{f.name.replace('_', '-')} must be a number, got {value!r}") from None
        elif isinstance(value, str):
            try:
                number = float(value)
            except ValueError:
                raise EngrainError(f"--{f.name.replace('_', '-')} must be an integer, got {value!r}") from None
            setattr(cfg, f.name, int(number) if number.is_integer() else number)
        elif isinstance(value, float) and value.is_integer():
            setattr(cfg, f.name, int(value))


def _at_least(name: str, value: Any, low: int, alternative: str = "") -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < low:
        raise EngrainError(f"--{name.replace('_', '-')} must be {alternative}an integer >= {low}, got {value!r}")


# Options that change where and how a run is shown or stored, not what it measures.
NOT_MEASURED = ("progress", "data_dir", "device", "out", "save", "log_with", "tracker_project", "log_every", "save_every", "resume",
                "keep_checkpoints")
# Options whose unset value (None) is chosen when the run starts, and recorded as chosen: a record with
# any value of one of them is a run of a config that leaves it unset.
RESOLVED_AT_RUN = ("batch_size",)
TRACKERS = {"tensorboard": "tensorboard", "mlflow": "mlflow", "wandb": "wandb"}  # --log-with -> the package it needs


def config_defaults(kind: str) -> dict[str, Any]:
    """Each option's default for a record of ``kind`` (eval or train): what an option added to engrain
    after a record was written counts as."""
    cls = TrainConfig if kind == "train" else EvalConfig
    return {f.name: f.default for f in dataclasses.fields(cls)}


def from_dict(cls: type, values: dict[str, Any], where: str = "config") -> Any:
    """Build a config dataclass from a dict, rejecting unknown keys with the allowed ones."""
    names = {f.name for f in dataclasses.fields(cls)}
    bad = [k for k in values if k not in names]
    if bad:
        from engrain.errors import unknown

        raise unknown(f"key in {where}", bad[0], names)
    return cls(**values)


# Hyperparameters of llmft's scripts (few-shot: 40 epochs, warmup ratio 0.5), per parameter set.
PRESETS: dict[str, dict[str, Any]] = {
    "full": {"lr": 1e-5, "epochs": 40, "warmup_ratio": 0.5},
    "lora": {"lr": 2e-4, "epochs": 40, "warmup_ratio": 0.5},
    "bitfit": {"lr": 1e-4, "epochs": 40, "warmup_ratio": 0.5},
    "ia3": {"lr": 3e-3, "epochs": 40, "warmup_ratio": 0.5},
    # Cartridges-style KV prefix initialised from the demonstrations (Eyuboglu et al. 2025 use 2e-2 on larger corpora).
    "prefix": {"lr": 2e-3, "epochs": 40, "warmup_ratio": 0.5},
}
# Context distillation trains on a transfer set many times larger than k: fewer epochs.
DISTILL_PRESET = {"epochs": 4, "warmup_ratio": 0.1}
# Documents: a few passes over the corpus (untuned).
DOC_PRESET = {"epochs": 10, "warmup_ratio": 0.1}


@dataclass
class TrainConfig(EvalConfig):
    """Few-shot fine-tuning: the eval options plus how to train. Unset lr/epochs/warmup come from PRESETS."""

    shots: int = opt(32, "number of labelled training examples k")
    train_data: str | None = opt(None, "what to train on: a task whose train split gives the k examples (default: --task; its labels must be "
                                 "--task's); for cpt/cft a corpus: a folder of .txt/.md files, a .jsonl of {id, text}, or facts[:SEED] (the generated benchmark)")
    method: str = opt("pbft", "pbft (pattern + verbaliser), head (new classification head), distill (context distillation), "
                              "cpt (continued pre-training on documents) or cft (Contextual Fine-Tuning on documents); "
                              "distill on a document task or corpus distils the documents")
    params: str = opt("lora", "which parameters train: full, lora, bitfit, ia3 or prefix (a KV prefix initialised from the k examples)")
    epochs: int | None = opt(None, "epochs over the training data (preset: 40; distill 4; on documents 10)")
    lr: float | None = opt(None, "peak learning rate (preset: full 1e-5, lora 2e-4, bitfit 1e-4, ia3 3e-3)")
    warmup_ratio: float | None = opt(None, "share of steps with linear warmup (preset: 0.5)")
    schedule: str = opt("linear", "after warmup: linear (decay to 0) or constant")
    weight_decay: float = opt(0.0, "AdamW weight decay")
    max_grad_norm: float = opt(1.0, "gradient clipping (0: off)")
    train_batch_size: int = opt(8, "examples per optimizer step and process, before accumulation")
    grad_accum: int = opt(1, "gradient accumulation steps")
    lora_r: int = opt(8, "LoRA rank")
    lora_alpha: int = opt(16, "LoRA alpha")
    lora_dropout: float = opt(0.0, "LoRA dropout")
    prefix_tokens: int = opt(0, "prefix: KV prefix length; 0 keeps the whole context, N compresses it to N tokens initialised from its first N")
    target_modules: str | None = opt(None, "comma-separated module names for LoRA/IA3 (default q_proj,v_proj for LoRA; peft's for IA3)")
    full_vocab_loss: bool = opt(False, "pbft: cross-entropy over the full vocabulary instead of the verbalisers")
    gradient_checkpointing: bool = opt(False, "recompute each decoder layer's activations in the backward pass instead of keeping "
                                              "them (transformers' own, use_reentrant=False): less memory, about a third more time")
    pack: bool = opt(False, "cpt / cft: pack each batch's sequences into as few rows as fit the longest, with per-sequence "
                            "position ids and no attention across sequences (padding-free): the same loss, fewer tokens")
    load_in_4bit: bool = opt(False, "QLoRA: hold the frozen base model's linear layers in 4-bit NF4 (bitsandbytes, double quantisation, "
                                    "matmuls in the compute dtype); with --params lora, ia3 or prefix")
    load_in_8bit: bool = opt(False, "hold the frozen base model's linear layers in 8-bit (bitsandbytes LLM.int8); with --params lora, ia3 or prefix")
    eval_every: int = opt(0, "evaluate every N optimizer steps (0: every epoch)")
    save: bool = opt(True, "save what was trained (adapter, head or model) next to the record")
    save_every: int = opt(0, "write a checkpoint (Accelerate's save_state, plus the loop's own state) every N optimizer steps "
                             "under OUT/checkpoints/<run name>; 0: none")
    resume: bool = opt(False, "continue from the run's last checkpoint, if there is one (the same result as an uninterrupted run)")
    keep_checkpoints: bool = opt(False, "keep the checkpoints once the run has finished (default: removed with its record written)")
    eval_sample: int | None = opt(500, "per-epoch evaluations use a seeded stratified sample of this size per set (final: full sets)")
    transfer: str = opt("pool", "distill: the inputs to distil on: pool (train split minus the demonstrations) or shots (the k demonstrations)")
    transfer_size: int = opt(512, "distill: how many pool inputs (seeded sample); their labels are not used unless alpha > 0")
    distill_loss: str = opt("verbalizer", "distill: KL over the verbaliser distribution, or topk (teacher's top-k full-vocabulary log-probs)")
    topk: int = opt(32, "distill: k of the teacher's top-k log-probs (distill_loss topk)")
    kl: str = opt("forward", "distill: forward KL(teacher || student) or reverse KL(student || teacher)")
    temperature: float = opt(1.0, "distill: softmax temperature T of teacher and student (loss scaled by T^2)")
    alpha: float = opt(0.0, "distill: weight of cross-entropy on the gold labels (0: pure distillation; 1: PBFT on the transfer set)")
    samples_per_chunk: int = opt(4, "distill on documents: texts the teacher generates per chunk (one per seed prompt: questions, a "
                                 "continuation, a summary, key facts, ...)")
    doc_transfer: str = opt("texts", "distill on documents: the transfer set: texts (the teacher's own generated texts about each chunk) "
                                     "or clozes (each sentence cut before each name or number it states: question-shaped, model-free)")
    gen_tokens: int = opt(96, "distill on documents: tokens generated per text")
    gen_temperature: float = opt(0.7, "distill on documents: sampling temperature of the generated texts (0: greedy)")
    chunk_tokens: int = opt(256, "cpt/cft/distill on documents: documents longer than this are split on paragraph / sentence boundaries")
    cft_prompts: str = opt("contextual", "cft: the prompts put before each document: contextual (the paper's ten styles), negative or random (the ablations)")
    cft_prompts_file: str | None = opt(None, "cft: your own prompts, one per line (instead of --cft-prompts)")
    log_with: str | None = opt(None, "follow training in an experiment tracker (Accelerate's): tensorboard, mlflow or wandb; "
                                     "loss, learning rate, per-epoch and final accuracies; logs under OUT/trackers")
    tracker_project: str = opt("engrain", "--log-with: the project every run logs into, one tracker run per engrain run named as its "
                                          "record (W&B project, MLflow experiment, tensorboard folder OUT/trackers/PROJECT)")
    log_every: int = opt(10, "optimizer steps between readings of the training loss (progress bar, --log-with): between them a step "
                             "never waits for the device to report it")
    shuffled_facts: bool = opt(False, "facts: train on the shuffled-facts control corpus (each attribute's values permuted across "
                                      "entities: the same words and value counts, wrong facts), scored on the real questions")
    augment: str | None = opt(None, "documents: augment the training corpus first, KIND[:N],... : permute, rewindow, link (model-free), "
                                    "paraphrase, qa, implications, entities (generated); see engrain augment --help")
    generator: str | None = opt(None, "--augment's generated kinds: the model that writes them (default: --model; any hub id, folder, "
                                      ".gguf or alias)")
    augment_tokens: int = opt(96, "--augment: tokens generated per text")
    qa_train: str | None = opt(None, "documents: also train on answered questions about other documents (access-pattern training): a "
                                     "questions JSONL, or 'train' for the task's own train half (facts v2); never the scored questions")
    qa_first: int = opt(0, "documents, with --qa-train: epochs of the questions alone before the documents' epochs (pre-instruction "
                           "tuning's two-stage order: the access pattern first, then the documents)")
    qa_mix: bool = opt(True, "documents, with --qa-train: also mix the questions into every documents epoch (--no-qa-mix: only in "
                             "the --qa-first epochs)")
    forgetting: bool = opt(False, "also measure, before and after training, RTE 16-shot ICL accuracy and perplexity on held-out "
                                  "text (MNLI premises): what training cost elsewhere")

    def validate(self) -> None:
        from engrain.tasks import get_task
        from engrain.tasks.documents import is_document_task

        _coerce_numbers(self)
        if self.method not in TRAIN_METHODS:
            raise EngrainError(f"--method must be one of {', '.join(TRAIN_METHODS)} (icl trains nothing: use engrain eval), got {self.method!r}")
        if self.params not in PARAM_SETS:
            raise EngrainError(f"--params must be one of {', '.join(PARAM_SETS)}, got {self.params!r}")
        if self.adapter is not None:
            raise EngrainError("--adapter is an option of engrain eval (evaluate a trained model), not of train")
        if self.target_modules is not None and self.params not in ("lora", "ia3"):
            raise EngrainError(f"--target-modules applies to --params lora or ia3, not {self.params}")
        if self.prefix_tokens and self.params != "prefix":
            raise EngrainError(f"--prefix-tokens applies to --params prefix, not {self.params}")
        if self.prefix_tokens != 0:
            _at_least("prefix_tokens", self.prefix_tokens, 2, "0 (the whole context) or ")
        preset = {**PRESETS[self.params], **(DOC_PRESET if self.on_documents else DISTILL_PRESET if self.method == "distill" else {})}
        for name, value in preset.items():
            if getattr(self, name) is None:
                setattr(self, name, value)
        super().validate()
        _at_least("qa_first", self.qa_first, 0)
        if self.qa_train is None and (self.qa_first or not self.qa_mix):
            raise EngrainError(f"{'--qa-first' if self.qa_first else '--no-qa-mix'} orders the --qa-train questions: give --qa-train too")
        if not self.qa_mix and not self.qa_first:
            raise EngrainError("--no-qa-mix trains the questions only in the --qa-first epochs: give --qa-first N (N >= 1) too")
        if self.on_documents:
            self._validate_documents()
        elif given := [f"--{k.replace('_', '-')}" for k in ("augment", "generator", "qa_train") if getattr(self, k) is not None]:
            raise EngrainError(f"{given[0]} applies to training on documents (cpt, cft, distill on a document task or corpus)")
        elif is_document_task(self.task):
            raise EngrainError(f"--task {self.task} is a document task: train on it with --method cpt, cft or distill")
        elif self.train_data is not None:
            source, target = get_task(self.train_data), get_task(self.task)
            if source.labels != target.labels:
                raise EngrainError(f"--train-data {source.name} has labels {', '.join(source.labels)}; "
                                   f"--task {target.name} has {', '.join(target.labels)}: they must be the same")
            if "train" not in source.splits:
                raise EngrainError(f"--train-data {source.name} has no train split")
        _at_least("shots", self.shots, 1)
        _at_least("epochs", self.epochs, 1)
        _at_least("train_batch_size", self.train_batch_size, 1)
        _at_least("grad_accum", self.grad_accum, 1)
        _at_least("eval_every", self.eval_every, 0)
        _at_least("save_every", self.save_every, 0)
        _at_least("log_every", self.log_every, 1)
        if self.quantize:
            self._validate_quantize()
        if self.pack and self.method not in ("cpt", "cft"):
            raise EngrainError(f"--pack applies to cpt and cft (a next-token loss on every sequence), not {self.method}")
        _at_least("lora_r", self.lora_r, 1)
        if self.eval_sample is not None:
            _at_least("eval_sample", self.eval_sample, 1)
        if self.lr <= 0:
            raise EngrainError(f"--lr must be > 0, got {self.lr!r}")
        if not 0 <= self.warmup_ratio <= 1:
            raise EngrainError(f"--warmup-ratio must be in [0, 1], got {self.warmup_ratio!r}")
        if not 0 <= self.lora_dropout < 1:
            raise EngrainError(f"--lora-dropout must be in [0, 1), got {self.lora_dropout!r}")
        if self.schedule not in ("linear", "constant"):
            raise EngrainError(f"--schedule must be linear or constant, got {self.schedule!r}")
        if self.method == "distill":
            self._validate_distill()
        if self.log_with is not None:
            import importlib.util

            if self.log_with not in TRACKERS:
                raise EngrainError(f"--log-with must be one of {', '.join(TRACKERS)}, got {self.log_with!r}")
            if importlib.util.find_spec(TRACKERS[self.log_with]) is None:
                raise EngrainError(f"--log-with {self.log_with} needs the package {TRACKERS[self.log_with]}: pip install {TRACKERS[self.log_with]}")

    @property
    def on_documents(self) -> bool:
        """Whether this run trains on documents (cpt, cft; distill on a document task or a corpus) rather
        than on labelled examples."""
        return trains_on_documents(self.method, self.task, self.train_data)

    def _validate_documents(self) -> None:
        from engrain.tasks.documents import is_document_task

        if self.train_data is None and not is_document_task(self.task):
            raise EngrainError(f"--method {self.method} trains on documents: give --train-data CORPUS (a folder, a .jsonl file, or facts)")
        if self.shuffled_facts and (self.task.split(":")[0] != "facts" or self.train_data is not None):
            raise EngrainError("--shuffled-facts is the control of --task facts[:SEED] (v2): it replaces the task's own corpus, "
                               "so it takes no --train-data")
        if (self.train_data is not None and self.train_data.split(":")[0] not in ("facts", "facts-v1", "hf")
                and not Path(self.train_data).exists()):
            raise EngrainError(f"corpus not found: {self.train_data} (expected a folder of .txt/.md files, a .jsonl file, or facts)")
        _at_least("chunk_tokens", self.chunk_tokens, 8)
        if self.chat_template != "none" and self.params == "prefix":
            raise EngrainError("--params prefix on documents starts as the corpus in plain text, which a chat template's questions "
                               "cannot follow: use --chat-template none, or another --params")
        from engrain.documents.augment import parse

        parse(self.augment)  # a one-line error for a bad kind, before the model loads
        _at_least("augment_tokens", self.augment_tokens, 1)
        if self.generator is not None and not parse(self.augment):
            raise EngrainError("--generator writes --augment's generated texts: give --augment too")
        if self.qa_train is not None and self.qa_train != "train" and not Path(self.qa_train).is_file():
            raise EngrainError(f"--qa-train: questions file not found: {self.qa_train} (a JSONL of questions, or 'train' for the "
                               "task's train half)")
        if self.method == "distill":
            _at_least("samples_per_chunk", self.samples_per_chunk, 1)
            _at_least("gen_tokens", self.gen_tokens, 1)
            if self.gen_temperature < 0:
                raise EngrainError(f"--gen-temperature must be >= 0, got {self.gen_temperature!r}")
            if self.doc_transfer not in ("texts", "clozes"):
                raise EngrainError(f"--doc-transfer must be texts or clozes, got {self.doc_transfer!r}")
            if self.alpha:
                raise EngrainError("--alpha weighs gold labels; documents have none (distill on documents is pure distillation)")
        if self.cft_prompts not in CFT_PROMPTS:
            raise EngrainError(f"--cft-prompts must be one of {', '.join(CFT_PROMPTS)}, got {self.cft_prompts!r}")
        if self.cft_prompts_file is not None and not Path(self.cft_prompts_file).is_file():
            raise EngrainError(f"prompts file not found: {self.cft_prompts_file}")

    @property
    def quantize(self) -> str | None:
        """How the frozen base weights are held: "4bit", "8bit" (bitsandbytes) or None (the compute dtype)."""
        return "4bit" if self.load_in_4bit else "8bit" if self.load_in_8bit else None

    def _validate_quantize(self) -> None:
        import importlib.util

        flag = f"--load-in-{self.quantize}"
        if self.load_in_4bit and self.load_in_8bit:
            raise EngrainError("--load-in-4bit and --load-in-8bit exclude each other: give one")
        if self.params not in ("lora", "ia3", "prefix"):
            raise EngrainError(f"{flag} trains an adapter on frozen quantised weights: use --params lora, ia3 or prefix, "
                               f"not {self.params} (which updates the base weights themselves)")
        if importlib.util.find_spec("bitsandbytes") is None:
            raise EngrainError(f"{flag} needs bitsandbytes: pip install 'engrain[quant]' (or pip install bitsandbytes)")

    def _validate_distill(self) -> None:
        if self.on_documents:  # the top-k KL on generated text; transfer / distill_loss / kl / temperature do not apply
            _at_least("topk", self.topk, 1)
            if self.temperature != 1:
                raise EngrainError("--temperature applies to distillation on labelled examples; on documents the teacher's "
                                   "top-k distribution is matched as it is (see --gen-temperature for sampling)")
            return
        choices = {"transfer": ("pool", "shots"), "distill_loss": ("verbalizer", "topk"), "kl": ("forward", "reverse")}
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise EngrainError(f"--{name.replace('_', '-')} must be one of {', '.join(allowed)}, got {getattr(self, name)!r}")
        if self.transfer == "pool":
            _at_least("transfer_size", self.transfer_size, 1)
        if self.distill_loss == "topk":
            _at_least("topk", self.topk, 1)
        if self.temperature <= 0:
            raise EngrainError(f"--temperature must be > 0, got {self.temperature!r}")
        if not 0 <= self.alpha <= 1:
            raise EngrainError(f"--alpha must be in [0, 1], got {self.alpha!r}")


def differences(a, b, ignore=NOT_MEASURED) -> list[str]:
    """The options in which config ``b`` differs from ``a`` (a config or a recorded config dict).
    An option missing from a record (added to engrain after it was written) counts as its default,
    except ``sample_seed``: before it existed the evaluation sample was drawn with the run's seed.
    An option of ``RESOLVED_AT_RUN`` that ``b`` leaves unset matches any value of ``a``."""
    if not isinstance(a, dict) and type(a) is not type(b):
        return ["the kind of run"]
    defaults = {f.name: f.default for f in dataclasses.fields(b)}
    da = a if isinstance(a, dict) else dataclasses.asdict(a)
    if "sample_seed" not in da:
        da = {**da, "sample_seed": da.get("seed", 0)}
    return sorted(k for k, v in dataclasses.asdict(b).items()
                  if k not in ignore and not (v is None and k in RESOLVED_AT_RUN) and da.get(k, defaults[k]) != v)
