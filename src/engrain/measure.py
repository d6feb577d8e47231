"""What things cost: wall time, peak memory, tokens, FLOPs and MFU (against a measured matmul peak)."""

from __future__ import annotations

import json
import os
import platform
import resource
import subprocess
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import torch

_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def rss_bytes() -> int:
    """Current resident set size of this process (Linux /proc; elsewhere the lifetime peak)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * _PAGE
    except OSError:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


@dataclass
class Meter:
    """Times a block and records its peak memory. On CPU the peak is the process RSS, sampled every 5 ms;
    on CUDA it is the allocator's max allocated bytes on the device (``reserved_bytes``: its max
    reserved), and the host RSS is sampled too (``host_peak_bytes``), kept apart: the two are different
    memories. ``with Meter(device) as m: ...; m.seconds, m.peak_mb``. Inside the block,
    ``with m.paused(): ...`` leaves a stretch out of both (its length is ``m.paused_seconds``)."""

    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    interval: float = 0.005
    seconds: float = 0.0
    peak_bytes: int = 0  # the device's peak: RSS on CPU, max allocated on CUDA
    host_peak_bytes: int = 0  # process RSS (on CPU the same as peak_bytes)
    reserved_bytes: int = 0  # CUDA: the allocator's max reserved; 0 on CPU
    paused_seconds: float = 0.0

    @property
    def cuda(self) -> bool:
        return self.device.type == "cuda"

    def __enter__(self) -> "Meter":
        self._stop, self._running = threading.Event(), threading.Event()
        self._running.set()
        self.host_peak_bytes = rss_bytes()
        if self.cuda:
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
        else:
            self.peak_bytes = self.host_peak_bytes
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        self._t0 = time.perf_counter()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(self.interval):
            if self._running.is_set():
                self.host_peak_bytes = max(self.host_peak_bytes, rss_bytes())

    def _peak_now(self) -> None:
        self.host_peak_bytes = max(self.host_peak_bytes, rss_bytes())
        if self.cuda:
            torch.cuda.synchronize(self.device)
            self.peak_bytes = max(self.peak_bytes, torch.cuda.max_memory_allocated(self.device))
            self.reserved_bytes = max(self.reserved_bytes, torch.cuda.max_memory_reserved(self.device))
        else:
            self.peak_bytes = self.host_peak_bytes

    @property
    def elapsed(self) -> float:
        """Metered seconds so far (pauses left out)."""
        return time.perf_counter() - self._t0 - self.paused_seconds

    @contextmanager
    def paused(self):
        self._peak_now()
        self._running.clear()
        t = time.perf_counter()
        try:
            yield
        finally:
            self.paused_seconds += time.perf_counter() - t
            if self.cuda:
                torch.cuda.reset_peak_memory_stats(self.device)
            self._running.set()

    def __exit__(self, *exc) -> None:
        self._peak_now()
        self.seconds = self.elapsed
        self._stop.set()
        self._thread.join()
        if not self.cuda:
            self.peak_bytes = self.host_peak_bytes

    @property
    def peak_mb(self) -> float:
        return self.peak_bytes / 2**20

    def memory(self) -> dict:
        """The peak(s) for a record: ``peak_memory_mb`` (the device's), and on CUDA the host RSS and the
        allocator's reserved bytes beside it."""
        out = {"peak_memory_mb": self.peak_mb}
        if self.cuda:
            out.update(peak_memory_reserved_mb=self.reserved_bytes / 2**20, host_peak_memory_mb=self.host_peak_bytes / 2**20)
        return out


# ---------------------------------------------------------------------------- FLOPs and MFU


def memory_kind(device: torch.device) -> str:
    """What a Meter's peak on ``device`` is (benchmark files say so beside their memory figures)."""
    return "cuda max_memory_allocated" if device.type == "cuda" else "process RSS"


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def boot_id() -> str:
    """This boot of this host (a new VM, node or reboot gets a new one); the host name where Linux's is unreadable."""
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return platform.node()


def _peak_key(device: torch.device, dtype: torch.dtype) -> str:
    """Per boot as well as per CPU or GPU name: hosts sold under one name ("AMD EPYC") differ 2.5x."""
    if device.type == "cuda":
        where = torch.cuda.get_device_name(device)
    else:
        where = f"{cpu_name()} x{torch.get_num_threads()} threads"
    isa = os.environ.get("ONEDNN_MAX_CPU_ISA")  # a cap on oneDNN's instructions changes the peak (AVX2: bf16 emulated)
    return f"boot {boot_id()} | {where} | {str(dtype).replace('torch.', '')} | torch {torch.__version__}" + (f" | isa {isa}" if isa else "")


def measure_matmul_peak(device: torch.device, dtype: torch.dtype, budget: float = 0.8, matmul=torch.matmul) -> float:
    """Best FLOP/s of square matmuls in ``dtype`` on ``device``, measured within ``budget`` seconds.

    On the H200 an earlier probe read 68.7 TFLOP/s where the chip does ~790, for three likely
    reasons, each mended here (not yet rerun on a GPU): the one-off set-up (a cuBLAS handle) was
    paid from the budget, so now one untimed 128-square product comes first; n stopped at 4096,
    now 8192 on a GPU; and every product was synchronised, now every 8 on a GPU, so launch and
    sync latency are not counted per product. n starts at 128 and doubles; each size gets a
    warm-up product and at most budget/8 of timed products. n stops growing when the next size's
    warm-up and first product (about 16 x this size's product) would not fit in what is left of the
    budget, so one slow product cannot stall the probe: where bf16 is emulated (~1 GFLOP/s) it stops
    at n = 256 after ~0.3 s, where 4096-square products would take minutes each.
    """
    cuda = device.type == "cuda"
    largest, per_sync = (8192, 8) if cuda else (4096, 1)

    def timed() -> float:
        t = time.perf_counter()
        for _ in range(per_sync):
            matmul(a, b)
        if cuda:
            torch.cuda.synchronize(device)
        return (time.perf_counter() - t) / per_sync

    a = b = torch.randn(128, 128, device=device, dtype=dtype)
    timed()  # the one-off set-up, outside the budget
    deadline, best, n = time.perf_counter() + budget, 0.0, 128
    while True:
        a = torch.randn(n, n, device=device, dtype=dtype)
        b = torch.randn(n, n, device=device, dtype=dtype)
        one = timed()  # warm-up
        stop = min(deadline, time.perf_counter() + budget / 8)
        spent, reps = timed(), 1
        while time.perf_counter() + spent / reps < stop:
            spent, reps = spent + timed(), reps + 1
        best = max(best, 2 * n**3 * reps / spent)
        if n >= largest or time.perf_counter() + 16 * min(one, spent / reps) > deadline:
            return best
        n *= 2


def matmul_peak(device: torch.device, dtype: torch.dtype = torch.bfloat16) -> float:
    """The measured matmul peak for this machine, cached in $ENGRAIN_CACHE/matmul_peak.json for this boot."""
    from engrain.cache import cache_dir

    path = cache_dir() / "matmul_peak.json"
    key = _peak_key(device, dtype)
    try:
        table = json.loads(path.read_text())
    except (OSError, ValueError):
        table = {}
    if key not in table:
        this_boot = key.split(" | ", 1)[0]
        table = {k: v for k, v in table.items() if k.startswith(this_boot + " | ")}  # other boots' peaks no longer hold
        table[key] = measure_matmul_peak(device, dtype)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        tmp.write_text(json.dumps(table, indent=1))
        os.replace(tmp, path)
    return table[key]


@dataclass(frozen=True)
class FlopModel:
    """Forward FLOPs of a decoder: 2 x (non-embedding params) per token, plus attention scores and
    mixing (4 x heads x head_dim per query-key pair per layer), plus the output layer per scored position."""

    body_params: int
    layers: int
    attn_width: int  # heads x head_dim
    head_params: int  # output layer (vocab x hidden)
    frozen_body_params: int = 0  # body parameters that get no gradient (all but the adapter's, for PEFT)

    @classmethod
    def of(cls, model: torch.nn.Module) -> "FlopModel":
        cfg = model.config.get_text_config()
        emb, head = model.get_input_embeddings().weight, model.get_output_embeddings().weight
        outside = {emb.data_ptr(), head.data_ptr()}  # embedding and output layer (once when tied)
        body = [p for p in model.parameters() if p.data_ptr() not in outside]
        head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
        return cls(sum(p.numel() for p in body), cfg.num_hidden_layers, cfg.num_attention_heads * head_dim, head.numel(),
                   sum(p.numel() for p in body if not p.requires_grad))

    def forward(self, tokens: int, attn_pairs: int, scored: int) -> float:
        return 2.0 * self.body_params * tokens + 4.0 * self.layers * self.attn_width * attn_pairs + 2.0 * self.head_params * scored


def training_flops(fm: FlopModel, tokens: int, attn_pairs: int) -> float:
    """FLOPs of training on ``tokens``: PaLM's count, 3 x forward (the forward pass, the activation
    gradients, the weight gradients), less the weight gradients (2 x params x tokens) that frozen
    weights never get: about 2 x forward for LoRA, IA3, prefix and BitFit, 3 x for full fine-tuning."""
    return 3 * fm.forward(tokens, attn_pairs, 0) - 2.0 * fm.frozen_body_params * tokens


def causal_pairs(past: int, new: int) -> int:
    """Query-key pairs when ``new`` tokens attend causally after ``past`` cached ones."""
    return new * past + new * (new + 1) // 2


# ---------------------------------------------------------------------------- provenance


def versions() -> dict[str, str]:
    import importlib.metadata as md

    out = {"python": platform.python_version()}
    for pkg in ("engrain", "torch", "transformers", "peft", "accelerate", "datasets", "gguf"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            pass
    return out


def git_revision() -> str | None:
    """The engrain checkout's commit (with '+dirty' when modified), or None outside a checkout."""
    here = Path(__file__).resolve().parent
    try:
        rev = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=5)
        if rev.returncode != 0:
            return None
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=here, capture_output=True, text=True, timeout=5)
        return rev.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return None


def cpu_bf16_kind() -> str:
    """How this CPU multiplies bf16: "amx", "avx512_bf16" (both native, bf16 ~3-6x faster than fp32) or
    "none" (emulated, ~60x slower than fp32). ENGRAIN_CPU_BF16=0 makes it "none" (auto then picks fp32)."""
    if os.environ.get("ENGRAIN_CPU_BF16") == "0":
        return "none"
    try:
        flags = set(Path("/proc/cpuinfo").read_text().split())
    except OSError:
        return "none"
    return next((kind for kind in ("amx_bf16", "avx512_bf16") if kind in flags), "none").replace("amx_bf16", "amx")


def host() -> dict:
    gpus = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())] if torch.cuda.is_available() else []
    return {"cpu": cpu_name(), "cpu_bf16": cpu_bf16_kind(), "threads": torch.get_num_threads(), "platform": platform.platform(),
            "gpus": gpus}  # every record and benchmark file says what the machine had
