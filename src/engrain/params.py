"""Which parameters train: full, lora, bitfit, ia3, prefix (peft where peft has it).

BitFit (Ben Zaken et al. 2021) trains bias terms only: not the embeddings, not the output layer
(llmft also trained the embeddings; we do not copy that). Llama- and Gemma-family models have no
biases, so BitFit adds zero-initialised trainable biases to every linear projection of the
attention and MLP blocks; at initialisation the model is unchanged.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from engrain.errors import EngrainError
from engrain.names import PARAM_SETS


@dataclass
class ParamSpec:
    kind: str = "lora"
    lora_r: int = 8
    lora_alpha: int = 16
    lora_dropout: float = 0.0
    target_modules: tuple[str, ...] | None = None  # default: q/v projections (LoRA), peft's (IA3)
    prefix_tokens: int = 0  # prefix: length of the KV prefix (0: the whole context)


def decoder_linears(model: torch.nn.Module) -> list[tuple[str, torch.nn.Linear]]:
    """Linear layers inside the decoder blocks (attention and MLP), not the embeddings or output layer."""
    out_head = model.get_output_embeddings()
    return [
        (name, m)
        for name, m in model.named_modules()
        if isinstance(m, torch.nn.Linear) and m is not out_head and ".layers." in f".{name}"
    ]


def _check_targets(model: torch.nn.Module, targets) -> None:
    if targets is None:
        return
    names = {name.rsplit(".", 1)[-1] for name, _ in decoder_linears(model)}
    missing = [t for t in targets if t not in names]
    if missing:
        raise EngrainError(
            f"--target-modules {missing[0]!r} matches no layer of this model; its projections are: {', '.join(sorted(names))}"
        )


def add_bitfit(model: torch.nn.Module) -> int:
    """Freeze everything, then train biases of the decoder's projections (added at zero where missing)."""
    model.requires_grad_(False)
    n = 0
    for _, lin in decoder_linears(model):
        if lin.bias is None:
            lin.bias = torch.nn.Parameter(torch.zeros(lin.out_features, device=lin.weight.device, dtype=torch.float32))
        lin.bias.requires_grad_(True)
        n += lin.bias.numel()
    for name, p in model.named_parameters():  # norm biases, where the architecture has them (OPT, GPT-2)
        if name.endswith(".bias") and ".layers." in f".{name}" and not p.requires_grad:
            p.requires_grad_(True)
            n += p.numel()
    return n


def apply_params(model: torch.nn.Module, spec: ParamSpec, context_cache=None, context_len: int = 0) -> torch.nn.Module:
    """Make ``spec.kind``'s parameters trainable; returns the model to train (a PeftModel for lora/ia3/prefix).

    ``prefix`` is peft's CARTRIDGE: a trainable KV prefix, initialised from ``context_cache`` (the KV
    of the k examples as ICL demonstrations), so at step 0 the model with its prefix is the ICL
    prompt's model; the first token (an attention sink) stays frozen, as the Cartridges paper advises.
    ``spec.prefix_tokens`` = N < ``context_len`` compresses: the prefix starts as the KV of the context's
    first N tokens (the Cartridges initialisation), a shorter context that training teaches the rest.
    """
    if spec.kind not in PARAM_SETS:
        from engrain.errors import unknown

        raise unknown("parameter set", spec.kind, PARAM_SETS)
    _check_targets(model, spec.target_modules)
    if spec.kind == "full":
        model.requires_grad_(True)
        return model
    if spec.kind == "bitfit":
        add_bitfit(model)
        return model
    from peft import CartridgeConfig, IA3Config, LoraConfig, get_peft_model

    if spec.kind == "prefix":
        if context_cache is None or context_len < 2:
            raise EngrainError("--params prefix is initialised from the demonstrations: it needs --shots >= 1")
        from peft.tuners.cartridge.utils import initialize_kv_prefix_from_past_key_values

        n = spec.prefix_tokens or context_len
        if not 2 <= n <= context_len:
            raise EngrainError(f"--prefix-tokens {n} is outside [2, {context_len}] (the context's length)")
        model.requires_grad_(False)
        pm = get_peft_model(model, CartridgeConfig(num_virtual_tokens=n, num_frozen_tokens=1, task_type="CAUSAL_LM"))
        initialize_kv_prefix_from_past_key_values(pm, past_key_values=context_cache)
        return pm
    targets = list(spec.target_modules) if spec.target_modules else None
    if spec.kind == "lora":
        cfg = LoraConfig(r=spec.lora_r, lora_alpha=spec.lora_alpha, lora_dropout=spec.lora_dropout,
                         target_modules=targets or ["q_proj", "v_proj"], task_type="CAUSAL_LM")
    else:
        # Custom IA3 targets scale those layers' outputs (none treated as feed-forward inputs).
        cfg = IA3Config(target_modules=targets, feedforward_modules=[] if targets else None, task_type="CAUSAL_LM")
    return get_peft_model(model, cfg)


def hold_frozen_in(model: torch.nn.Module, dtype: torch.dtype) -> int:
    """Store the frozen weights (and frozen biases) of the decoder's linear layers in ``dtype``, the
    compute dtype, and return how many values were cast.

    Autocast casts them to ``dtype`` at every forward anyway, and keeps that copy for the backward:
    cast once instead, the loss and gradients are bit for bit the same, the per-forward casts are
    gone, and those tensors take half the bytes, with no transient copy beside them (on a GPU; on a
    CPU the fp32 weights are memory-mapped from the file and its pages stay resident, so the process
    RSS does not drop: benchmarks/frozen_weights.py). Trainable parameters keep their fp32 master
    weights; the embeddings, norms and output layer stay fp32 (they set the precision of the residual
    stream and of the logits). Full fine-tuning freezes nothing, so nothing changes there.
    """
    n = 0
    for _, lin in decoder_linears(model):
        for p in (lin.weight, lin.bias):
            if p is not None and not p.requires_grad and p.is_floating_point() and p.dtype != dtype:
                p.data = p.data.to(dtype)
                n += p.numel()
    return n


def trainable_summary(model: torch.nn.Module, extra: torch.nn.Module | None = None) -> dict:
    mods = [model] + ([extra] if extra is not None else [])
    trainable = sum(p.numel() for m in mods for p in m.parameters() if p.requires_grad)
    total = sum(p.numel() for m in mods for p in m.parameters())
    frozen: dict[str, int] = {}
    for p in {id(p): p for m in mods for p in m.parameters() if not p.requires_grad}.values():
        key = str(p.dtype).replace("torch.", "")
        frozen[key] = frozen.get(key, 0) + p.numel()
    return {"trainable": trainable, "total": total, "share": trainable / total, "frozen_by_dtype": frozen}


def read_adapter_meta(folder) -> dict:
    meta_file = Path(folder) / "engrain.json"
    if not meta_file.is_file():
        raise EngrainError(f"{folder} is not an engrain adapter folder (no engrain.json)")
    try:
        return json.loads(meta_file.read_text())
    except json.JSONDecodeError as e:
        raise EngrainError(f"{meta_file}:{e.lineno}: not valid JSON ({e.msg})") from None


def load_trained(path: str, device: str = "auto", fp32_head: bool = True, quantized: bool = True):
    """Rebuild a model saved by ``engrain train`` (the folder holding ``engrain.json``).

    Returns (LoadedModel with fp32 weights, classification head or None, metadata). Evaluate it through
    ``engrain.models.inference_copy``, as training's own evaluation does, to get the same numbers. An adapter
    trained on a quantised base (--load-in-4bit/8bit) gets that base again, unless ``quantized`` is False
    (export: the adapter merged into the full-precision weights, as QLoRA adapters are served).
    """
    from safetensors.torch import load_file

    from engrain.models import load_model

    folder = Path(path)
    meta = read_adapter_meta(folder)
    quantize = meta.get("quantize") if quantized else None
    compute = getattr(torch, meta.get("quantize_compute") or "float32") if quantize else None
    lm = load_model(str(folder) if meta["params"] == "full" else meta["base_model"], "fp32", device, fp32_head, quantize, compute)
    if meta["params"] in ("lora", "ia3", "prefix"):
        from peft import PeftModel

        lm.model = PeftModel.from_pretrained(lm.model, folder).eval()
    elif meta["params"] == "bitfit":
        biases = load_file(str(folder / "bitfit.safetensors"))
        add_bitfit(lm.model)
        missing = set(biases) - {n for n, _ in lm.model.named_parameters()}
        if missing:
            raise EngrainError(f"{folder}/bitfit.safetensors: {len(missing)} biases do not match the base model, e.g. {sorted(missing)[0]}")
        lm.model.load_state_dict(biases, strict=False)
        lm.model.requires_grad_(False)
    head = None
    if (folder / "head.safetensors").is_file():
        w = load_file(str(folder / "head.safetensors"))["weight"]
        head = torch.nn.Linear(w.shape[1], w.shape[0], bias=False)
        head.weight.data.copy_(w)
        head.to(lm.device).requires_grad_(False)
    return lm, head, meta


def load_for_eval(cfg) -> tuple:
    """(model, classification head or None, adapter metadata or {}): ``cfg.model`` in ``cfg.precision``, or,
    with ``cfg.adapter``, the trained model rebuilt in fp32 and copied to the compute dtype, exactly as
    training's own evaluations ran it. Sets ``cfg.batch_size`` for the device where it is unset."""
    from engrain.models import default_batch_size, inference_copy, load_model, resolve_dtype

    if not cfg.adapter:
        lm, head, meta = load_model(cfg.model, cfg.precision, cfg.device), None, {}
    else:
        lm, head, meta = load_trained(cfg.adapter, cfg.device)
        lm.dtype = resolve_dtype(cfg.precision, lm.device)
        lm.model = inference_copy(lm.model, lm.dtype)
    cfg.batch_size = cfg.batch_size or default_batch_size(lm.device)  # recorded as chosen
    return lm, head, meta
