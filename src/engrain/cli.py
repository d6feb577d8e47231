"""The `engrain` command: thin; parses options into config dataclasses and calls the API."""

from __future__ import annotations

import argparse
import dataclasses
import sys
import typing

from engrain.config import EvalConfig, TrainConfig, from_dict, load_yaml
from engrain.errors import EngrainError


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> typing.NoReturn:  # one line, exit 2 (argparse prints usage too)
        self.exit(2, f"engrain: error: {message} (see {self.prog} --help)\n")


def add_config_flags(parser: argparse.ArgumentParser, cls: type, exclude: tuple[str, ...] = ()) -> None:
    """One flag per config field; defaults are left unset so YAML values are only overridden when given."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if f.name in exclude:
            continue
        flag = "--" + f.name.replace("_", "-")
        typ = hints[f.name]
        base = [a for a in typing.get_args(typ) if a is not type(None)] or [typ]
        kw = dict(dest=f.name, default=argparse.SUPPRESS, help=f"{f.metadata.get('help', '')} (default: {f.default})")
        if base[0] is bool:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, **kw)
        else:
            parser.add_argument(flag, type=base[0], metavar=f.name.upper(), **kw)


def build_config(cls: type, args: argparse.Namespace):
    values = load_yaml(args.config) if getattr(args, "config", None) else {}
    values.update({f.name: getattr(args, f.name) for f in dataclasses.fields(cls) if hasattr(args, f.name)})
    return from_dict(cls, values, where=args.config or "options")


def cmd_eval(args: argparse.Namespace) -> None:
    from engrain.evaluation import evaluate
    from engrain.report import print_eval

    print_eval(evaluate(build_config(EvalConfig, args)))


def cmd_train(args: argparse.Namespace) -> None:
    from accelerate import PartialState

    from engrain.report import print_eval
    from engrain.train import train

    record = train(build_config(TrainConfig, args))
    if PartialState().is_main_process:  # under `accelerate launch`, one table, not one per process
        print_eval(record)


def cmd_sweep(args: argparse.Namespace) -> None:
    from engrain.sweep import run_sweep

    if args.jobs < 1:
        raise EngrainError(f"--jobs must be an integer >= 1, got {args.jobs}")
    run_sweep(args.file, dry_run=args.dry_run, jobs=args.jobs)


def cmd_run(args: argparse.Namespace) -> None:
    from engrain.job import main_spec, print_rows, run_main

    result = run_main(main_spec(args.out, args.model, args.seed, args.config, args.profile), args.config or "engrain run",
                      dry_run=args.dry_run)
    if result is not None:
        print_rows(result["rows"])
        print(f"report: {result['report']}\nplot: {result['plot']}")


def cmd_results(args: argparse.Namespace) -> None:
    import csv
    import json

    from engrain.report import markdown
    from engrain.results import flatten, headline, scan_records, select

    rows = select([flatten(r) for r in scan_records(args.folders)], args.filter or [])
    if args.format == "json":
        print(json.dumps(rows, indent=1, default=str))
    elif args.format == "csv":
        cols = list(dict.fromkeys(k for r in rows for k in r))
        writer = csv.DictWriter(sys.stdout, fieldnames=cols)
        writer.writeheader()
        writer.writerows(rows)
    else:
        cells = [{k: (f"{v:.3f}" if isinstance(v, float) and k == "accuracy" else f"{v:.0f}" if isinstance(v, float) else
                      "-" if v is None else v) for k, v in headline(r).items()} for r in rows]
        print(markdown(cells) if cells else "no runs")


def cmd_report(args: argparse.Namespace) -> None:
    from engrain.report import machine_note, markdown, summarize
    from engrain.results import scan_records

    if args.out:
        from engrain.plots import build

        made = build(args.folders, args.out)
        if not made["records"]:
            raise EngrainError(f"no run records in {', '.join(args.folders)}")
        print(f"{made['records']} records read, {len(made['skipped'])} files skipped; wrote {made['markdown']}, {made['html']} "
              f"and {len(made['images'])} plots")
        return
    records = scan_records(args.folders)
    rows = summarize(records)
    if not rows:
        raise EngrainError(f"no run records in {', '.join(args.folders)}")
    table = markdown(rows) + (f"\n\n{note}" if (note := machine_note(records)) else "")
    if not args.into:
        print(table)
        return
    import re
    from pathlib import Path

    if len(args.folders) != 1:
        raise EngrainError("--into writes one folder's table into its <!-- table:FOLDERNAME --> section: give one folder")
    doc, name = Path(args.into), Path(args.folders[0]).name
    text = doc.read_text() if doc.is_file() else ""
    marks = (f"<!-- table:{name} -->", f"<!-- /table:{name} -->")
    if not all(m in text for m in marks):
        raise EngrainError(f"{doc} has no {marks[0]} ... {marks[1]} section to write the table into")
    new = re.sub(re.escape(marks[0]) + ".*?" + re.escape(marks[1]), lambda _: f"{marks[0]}\n{table}\n{marks[1]}", text, flags=re.S)
    doc.write_text(new)
    print(f"wrote the {name} table into {doc}")


def cmd_facts(args: argparse.Namespace) -> None:
    from engrain.documents import facts, load_corpus, load_questions
    from engrain.documents.baselines import baselines

    sizes = {k: getattr(args, k) for k in facts.SIZES if getattr(args, k) is not None}
    for key, value in sizes.items():
        if value < 2:
            raise EngrainError(f"--{key} must be an integer >= 2, got {value}")
    paths = facts.write(args.out, args.seed, **sizes)
    docs = load_corpus(paths["corpus"])  # read back as `--task qa --corpus ... --questions ...` would
    for name in ("questions", "train_questions"):
        qs = load_questions(paths[name], [d.id for d in docs])
        b = baselines(qs, docs)
        print(f"{paths[name]}: {len(qs)} questions; chance {b['chance']['accuracy']:.3f}, corpus prior "
              f"{b['corpus_prior']['accuracy']:.3f}, longest choice {b['longest_choice']['accuracy']:.3f}")
    print(f"{paths['corpus']}: {len(docs)} documents; {paths['control_corpus']}: the shuffled-facts control; {paths['manifest']}")
    print(f"evaluate: engrain eval --task qa --corpus {paths['corpus']} --questions {paths['questions']}")


def cmd_augment(args: argparse.Namespace) -> None:
    from pathlib import Path

    from engrain.documents import augment as aug
    from engrain.documents import load_corpus
    from engrain.tasks.documents import load_document_task

    kinds = aug.parse(args.kinds)
    if not kinds:
        raise EngrainError(f"--kinds: give at least one of {', '.join(aug.KINDS)} (KIND or KIND:N, comma-separated)")
    if args.gen_tokens < 1:
        raise EngrainError(f"--gen-tokens must be an integer >= 1, got {args.gen_tokens}")
    task = args.corpus.split(":")[0] in ("facts", "facts-v1", "pubmedqa")
    docs = load_document_task(args.corpus, data_dir=args.data_dir).corpus if task else load_corpus(args.corpus)
    target = Path(args.out) / "corpus.jsonl"
    if not task and target.exists() and target.resolve() == Path(args.corpus).resolve():
        raise EngrainError(f"--out {args.out} would overwrite the corpus being augmented ({args.corpus}): choose another folder")
    generator = generator_id = None
    if aug.needs_generator(kinds):
        generator, generator_id = aug.lazy_generator(args.generator, args.precision, args.device)
    out, manifest = aug.augment(docs, args.kinds, args.seed, generator, generator_id, args.gen_tokens, args.temperature,
                                args.batch_size)
    manifest = {"corpus": args.corpus, **manifest}
    paths = aug.write(args.out, out, manifest)
    made = ", ".join(f"{k} {v['texts']} (dropped {v['dropped']})" for k, v in manifest["kinds_made"].items())
    speed = manifest.get("generator", {}).get("generated_tokens_per_s")
    print(f"{paths['corpus']}: {len(docs)} documents and {manifest['new_texts']} new texts ({made}); "
          f"{manifest['source_words']} -> {manifest['source_words'] + manifest['new_words']} words; "
          f"{manifest['seconds']:.1f} s{'' if speed is None else f', {speed:.0f} generated tokens/s'}"
          f"{' (from the cache)' if manifest['cache_hit'] else ''}; {paths['manifest']}")
    print(f"train on it: engrain train --method cpt --task qa --corpus {args.corpus} --questions QUESTIONS "
          f"--train-data {paths['corpus']}   (or --augment {args.kinds} on train)")


def _asker(args: argparse.Namespace):
    from engrain.ask import Asker, Settings, load, read_context
    from engrain.chat import chat_template

    settings = Settings(args.max_new_tokens, args.temperature, args.top_p, args.seed)
    settings.check()
    context = read_context(args.context)  # a bad path fails before the model loads
    lm = load(args.model, args.adapter, args.precision, args.device)
    return Asker(lm, chat_template(lm.tokenizer, args.chat_template), context), settings


def cmd_ask(args: argparse.Namespace) -> None:
    import json

    from engrain.ask import ask, read_questions

    if (args.question is None) == (args.questions is None):
        raise EngrainError("give one question, or --questions FILE (not both)")
    if args.compare and not args.context:
        raise EngrainError("--compare puts the closed-book answer beside the open-book one: give --context FILE too")
    if args.batch_size < 1:
        raise EngrainError(f"--batch-size must be an integer >= 1, got {args.batch_size}")
    questions = [args.question] if args.question is not None else read_questions(args.questions)
    asker, settings = _asker(args)
    rows = ask(asker, questions, settings, args.compare, args.batch_size)
    if args.out:
        from pathlib import Path

        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text("".join(json.dumps(r) + "\n" for r in rows))
        print(f"{len(rows)} answers: {args.out}")
    elif args.question is not None:
        r = rows[0]
        print(f"closed book: {r['closed_book']}\nopen book:   {r['open_book']}" if args.compare else r["answer"])
    else:
        for r in rows:
            print(json.dumps(r))


def cmd_chat(args: argparse.Namespace) -> None:
    from engrain.ask import chat

    asker, settings = _asker(args)
    template = "its chat template" if asker.template else "plain Question/Answer turns"
    print(f"chatting with {args.adapter or args.model} ({template}{', the --context documents first' if asker.context else ''}); "
          "/reset forgets, /exit ends", file=sys.stderr)
    chat(asker, settings)


def _add_ask_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default="smollm2-135m", help="the model: alias, folder, .gguf or hub id (default: smollm2-135m)")
    p.add_argument("--adapter", help="a run folder engrain train wrote (--save): ask the model it trained instead")
    p.add_argument("--context", help="documents put before the question (open book): a folder of .txt/.md, a file or a JSONL")
    p.add_argument("--chat-template", default="auto", help="auto (the tokenizer's, if it has one), none (plain 'Question: ... "
                                                           "Answer:', as scoring and --qa-train), or a Jinja file")
    p.add_argument("--max-new-tokens", type=int, default=128)
    p.add_argument("--temperature", type=float, default=0.0, help="0: greedy (default); above 0: sampled")
    p.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling (with --temperature > 0)")
    p.add_argument("--seed", type=int, default=0, help="sampling seed")
    p.add_argument("--precision", default="auto", help="auto, bf16 or fp32")
    p.add_argument("--device", default="auto")


def cmd_export(args: argparse.Namespace) -> None:
    from engrain.export import export

    m = export(args.run, args.out, args.format, args.dtype)
    check = m["check"]
    print(f"{args.out}: {args.format} export of {args.run} ({m['method']}, {m['params']}, {args.dtype}); loaded back by "
          f"{check['loaded_by']}: logits within {check['max_abs_logit_diff']:.2g} of engrain's model")
    use = {"hf": f"transformers.AutoModelForCausalLM.from_pretrained({args.out!r})  |  engrain ask --model {args.out} \"...\"",
           "peft": f"peft.AutoPeftModelForCausalLM.from_pretrained({args.out!r})  |  vllm serve {m.get('base_model_name_or_path')} "
                   f"--enable-lora --lora-modules engrained={args.out}",
           "gguf": f"llama-cli -m {args.out}/model.gguf  |  ollama create engrained -f Modelfile (FROM {args.out}/model.gguf)"}
    if m["method"] == "head":
        use["hf"] = f"transformers.AutoModelForSequenceClassification.from_pretrained({args.out!r}) (labels {', '.join(m['labels'])})"
    print(f"use it: {use[args.format]}")


def cmd_models(args: argparse.Namespace) -> None:
    from rich.table import Table

    from engrain.models import describe_aliases
    from engrain.report import console

    t = Table(title="bundled models (also: any hub id, local folder or .gguf file)")
    t.add_column("alias")
    t.add_column("what")
    for name, desc in describe_aliases():
        t.add_row(name, desc)
    console().print(t)


def cmd_tasks(args: argparse.Namespace) -> None:
    from rich.table import Table

    from engrain.report import console
    from engrain.tasks import TASKS

    t = Table(title="tasks")
    for col in ("task", "labels", "splits", "formats (default first)", "out-of-domain", "what"):
        t.add_column(col)
    for spec in TASKS.values():
        formats = [spec.default_format] + [f for f in spec.formats if f != spec.default_format]
        t.add_row(
            spec.name, ", ".join(spec.labels), ", ".join(spec.splits), ", ".join(formats),
            ", ".join(p.task for p in spec.ood) or "-", spec.description,
        )
    console().print(t)
    from engrain.tasks.documents import DOC_TASKS

    d = Table(title="document tasks: multiple-choice questions, closed book (--open-book: the documents in the prompt)")
    d.add_column("task")
    d.add_column("what")
    for name, what in DOC_TASKS.items():
        d.add_row(name + ("[:SEED]" if name.startswith("facts") else ""), what)
    console().print(d)


def make_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="engrain", description="Teach a language model what a prompt would have told it.")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)
    e = sub.add_parser("eval", help="ICL on a task and its out-of-domain partners; a document task closed or open book; a trained --adapter")
    e.add_argument("--config", help="YAML file with the same option names; flags override it")
    add_config_flags(e, EvalConfig)
    e.set_defaults(func=cmd_eval)
    t = sub.add_parser("train", help="fine-tuning (pbft / head / distill on k examples, cpt / cft / distill on documents; "
                                     "full / lora / bitfit / ia3 / prefix), evaluated per epoch")
    t.add_argument("--config", help="YAML file with the same option names; flags override it")
    add_config_flags(t, TrainConfig, exclude=("adapter",))
    t.set_defaults(func=cmd_train)
    sw = sub.add_parser("sweep", help="run an experiment file (YAML: out, base, grid, runs); skips runs already recorded")
    sw.add_argument("file")
    sw.add_argument("--dry-run", action="store_true", help="list the runs without running them")
    sw.add_argument("--jobs", type=int, default=1, help="runs at once, each in its own process (with GPUs: one GPU each, round-robin)")
    sw.set_defaults(func=cmd_sweep)
    r = sub.add_parser("run", help="the main job: learn the facts benchmark's documents into the model by cpt, cft and distill, "
                                   "against closed and open book; a table, report.md and a plot (resumes)")
    r.add_argument("--out", help="output folder (default: runs/main, or runs/main-compact)")
    r.add_argument("--profile", default="auto", help="the default experiment's size: full (seed 0 of configs/facts_docs.yaml; "
                                                     "the default on a GPU), compact (a third of the training, no forgetting probes: "
                                                     "the default on a CPU), or auto")
    r.add_argument("--model", help="model (default: smollm2-135m)")
    r.add_argument("--seed", type=int, help="training seed (default: 0)")
    r.add_argument("--config", help="an experiment file (the sweep YAML format) instead of the default experiment")
    r.add_argument("--dry-run", action="store_true", help="list the runs without running them")
    r.set_defaults(func=cmd_run)
    rs = sub.add_parser("results", help="list the runs recorded in folders: config and headline metrics (every column with --format csv/json)")
    rs.add_argument("folders", nargs="+")
    rs.add_argument("--filter", action="append", metavar="KEY=VALUE", help="keep runs whose column KEY equals VALUE (repeatable)")
    rs.add_argument("--format", choices=("table", "csv", "json"), default="table")
    rs.set_defaults(func=cmd_results)
    rp = sub.add_parser("report", help="mean ± std over seeds of the run records in folders, as a markdown table; "
                                       "--out DIR: report.md, report.html and plots")
    rp.add_argument("folders", nargs="+")
    rp.add_argument("--out", help="write report.md, a self-contained report.html and the PNG plots into this folder")
    rp.add_argument("--into", help="a markdown file: replace its <!-- table:FOLDERNAME --> section instead of printing")
    rp.set_defaults(func=cmd_report)
    f = sub.add_parser("facts", help="write the generated facts benchmark (v2) as files: corpus, test and train questions, "
                                     "the shuffled-facts control corpus")
    f.add_argument("--seed", type=int, default=0, help="world seed (the benchmark of --task facts:SEED)")
    f.add_argument("--out", required=True, help="folder to write corpus.jsonl, questions.jsonl, train_questions.jsonl, "
                                                "control_corpus.jsonl and manifest.json into")
    from engrain.documents.facts import SIZES

    for key, default in SIZES.items():
        f.add_argument(f"--{key}", type=int, help=f"how many {key} (default: {default}; multiples of 4 keep every block whole)")
    f.set_defaults(func=cmd_facts)
    a = sub.add_parser("augment", help="write an augmented copy of a corpus (sentence orders, linked documents, generated "
                                       "paraphrases / questions / implications / entity texts), cached")
    a.add_argument("corpus", help="a folder of .txt/.md files, a .txt/.md file, a .jsonl of {id, text}, or a document task "
                                  "(facts[:SEED], pubmedqa): its training corpus")
    a.add_argument("--out", required=True, help="folder to write corpus.jsonl (originals first, then the new texts) and manifest.json")
    a.add_argument("--kinds", required=True, help="KIND[:N],... of: permute (sentence orders), rewindow (other chunk boundaries), "
                                                 "link (documents sharing a name, in one text): model-free; paraphrase, qa, "
                                                 "implications, entities (EntiGraph-style texts relating two names): generated")
    a.add_argument("--generator", default="smollm2-135m", help="the model that writes the generated kinds (hub id, folder, .gguf "
                                                               "or alias; default smollm2-135m)")
    a.add_argument("--seed", type=int, default=0)
    a.add_argument("--gen-tokens", type=int, default=96, help="tokens generated per text")
    a.add_argument("--temperature", type=float, default=0.7, help="sampling temperature (0: greedy)")
    a.add_argument("--batch-size", type=int, default=8, help="texts generated at once")
    a.add_argument("--precision", default="auto", help="the generator's precision: auto, bf16, fp32")
    a.add_argument("--device", default="auto")
    a.add_argument("--data-dir", help="task data folder (for pubmedqa; default: $ENGRAIN_DATA)")
    a.set_defaults(func=cmd_augment)
    q = sub.add_parser("ask", help="answer a question (or a file of them) with a model or a trained --adapter; --context: "
                                   "open book; --compare: closed and open book side by side")
    q.add_argument("question", nargs="?", help="the question")
    q.add_argument("--questions", help="a .txt file (one question a line) or a JSONL of {\"question\": ...}")
    q.add_argument("--compare", action="store_true", help="print the closed-book and the open-book (--context) answers")
    q.add_argument("--out", help="write the answers as JSONL here (default: stdout)")
    q.add_argument("--batch-size", type=int, default=8, help="questions generated at once")
    _add_ask_flags(q)
    q.set_defaults(func=cmd_ask)
    c = sub.add_parser("chat", help="chat with a model or a trained --adapter, replies streamed (/reset, /exit)")
    _add_ask_flags(c)
    c.set_defaults(func=cmd_chat)
    x = sub.add_parser("export", help="take a trained run out of engrain: a merged Hugging Face folder (hf), a peft adapter "
                                      "with its base (peft) or a GGUF file (gguf), each checked by loading it back")
    x.add_argument("run", help="a run folder engrain train wrote (--save)")
    x.add_argument("--out", required=True, help="the folder to write (replaced only once the new export has passed its check)")
    x.add_argument("--format", default="hf", help="hf (default), peft or gguf")
    x.add_argument("--dtype", default="fp32", help="the exported weights' dtype: fp32 (default), bf16 or fp16")
    x.set_defaults(func=cmd_export)
    sub.add_parser("models", help="list the bundled model aliases").set_defaults(func=cmd_models)
    sub.add_parser("tasks", help="list the tasks").set_defaults(func=cmd_tasks)
    return p


def main(argv: list[str] | None = None) -> int:
    args = make_parser().parse_args(argv)
    try:
        args.func(args)
    except EngrainError as e:
        print(f"engrain: error: {e}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # output piped into `head` and the like
        sys.stderr.close()
        return 0
    except KeyboardInterrupt:
        print("engrain: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
