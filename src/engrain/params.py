"""Which parameters train: full, lora, bitfit, ia3 (peft where peft has it).

BitFit (Ben Zaken et al. 2021) trains bias terms only: not the embeddings, not the output layer
(llmft also trained the embeddings; we do not copy that). Llama- and Gemma-family models have no
biases, so BitFit adds zero-initialised trainable biases to every linear projection of the
attention and MLP blocks; at initialisation the model is unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from engrain.errors import EngrainError

PARAM_SETS = ("full", "lora", "bitfit", "ia3")


@dataclass
class ParamSpec:
    kind: str = "lora"
    lora_r: int = 8
    lora_alpha: int = 16
    lora_dropout: float = 0.0
    target_modules: tuple[str, ...] | None = None  # default: q/v projections (LoRA), peft's (IA3)


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


def apply_params(model: torch.nn.Module, spec: ParamSpec) -> torch.nn.Module:
    """Make ``spec.kind``'s parameters trainable; returns the model to train (a PeftModel for lora/ia3)."""
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
    from peft import IA3Config, LoraConfig, get_peft_model

    targets = list(spec.target_modules) if spec.target_modules else None
    if spec.kind == "lora":
        cfg = LoraConfig(r=spec.lora_r, lora_alpha=spec.lora_alpha, lora_dropout=spec.lora_dropout,
                         target_modules=targets or ["q_proj", "v_proj"], task_type="CAUSAL_LM")
    else:
        cfg = IA3Config(target_modules=targets, feedforward_modules=[t for t in (targets or []) if "down" in t or "fc2" in t] if targets else None,
                        task_type="CAUSAL_LM")
    return get_peft_model(model, cfg)


def trainable_summary(model: torch.nn.Module, extra: torch.nn.Module | None = None) -> dict:
    mods = [model] + ([extra] if extra is not None else [])
    trainable = sum(p.numel() for m in mods for p in m.parameters() if p.requires_grad)
    total = sum(p.numel() for m in mods for p in m.parameters())
    return {"trainable": trainable, "total": total, "share": trainable / total}
