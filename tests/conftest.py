"""Shared fixtures: the real task data (../shared/data or $ENGRAIN_DATA) and a tiny random model.

The tiny model is a 2-layer Llama (hidden 32) with a byte-level BPE tokenizer trained in-process on
a few thousand task sentences: no downloads, built once per session in well under a second.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]

# Cached results (engrain.cache: base-model references, forgetting probes) go to a folder of this session's,
# never the user's cache; subprocesses (isolated sweep runs) inherit it.
if "ENGRAIN_RESULTS_CACHE" not in os.environ:
    import tempfile

    os.environ["ENGRAIN_RESULTS_CACHE"] = tempfile.mkdtemp(prefix="engrain-test-cache-")


def _data_dir() -> Path | None:
    """$ENGRAIN_DATA when set (never a silent fallback past a wrong one), else ../shared/data."""
    env = os.environ.get("ENGRAIN_DATA")
    cand = Path(env) if env else REPO.parent / "shared" / "data"
    return cand.resolve() if (cand / "rte" / "train.jsonl").is_file() else None


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """The task data. Missing data fails every test that needs it: a suite that skipped most of its
    training tests would pass while testing little (ENGRAIN_TEST_SKIP_DATA=1 skips them on purpose)."""
    d = _data_dir()
    if d is None:
        where = os.environ.get("ENGRAIN_DATA") or REPO.parent / "shared" / "data"
        if os.environ.get("ENGRAIN_TEST_SKIP_DATA") == "1":
            pytest.skip(f"task data not found at {where} (ENGRAIN_TEST_SKIP_DATA=1)")
        pytest.fail(f"task data not found at {where}: set ENGRAIN_DATA to a folder laid out like ../shared/data "
                    "(or ENGRAIN_TEST_SKIP_DATA=1 to skip the tests that need it)", pytrace=False)
    return d


@pytest.fixture(autouse=True)
def _isolate(monkeypatch):
    """Tests read data only through an explicit data_dir, never a stray $ENGRAIN_DATA."""
    monkeypatch.delenv("ENGRAIN_DATA", raising=False)


def build_tokenizer(texts: list[str]):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=800, special_tokens=["<pad>", "<bos>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator(texts, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", bos_token="<bos>", eos_token="<pad>")


def build_sp_tokenizer(texts: list[str]):
    """A sentencepiece-style tokenizer as Llama-2's, Mistral's and TinyLlama's work: "▁" stands for a space and
    is prepended to every text, and a BOS is added. Tokenising " Yes" alone gives a lone "▁" token first."""
    from tokenizers import Tokenizer, decoders, models, normalizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.Strip(" ", 1, 0)])
    tok.train_from_iterator(texts, trainers.BpeTrainer(vocab_size=800, special_tokens=["<pad>", "<bos>", "<unk>", "</s>"]))
    tok.post_processor = processors.TemplateProcessing(single="<bos> $A", special_tokens=[("<bos>", tok.token_to_id("<bos>"))])
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", bos_token="<bos>", eos_token="</s>", unk_token="<unk>")


def build_bos_tokenizer(texts: list[str]):
    """The byte-level BPE of :func:`build_tokenizer`, adding a BOS as Gemma's and Llama-3's do."""
    from tokenizers import processors

    tok = build_tokenizer(texts)
    backend = tok.backend_tokenizer
    backend.post_processor = processors.TemplateProcessing(single="<bos> $A", special_tokens=[("<bos>", tok.bos_token_id)])
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="<pad>", bos_token="<bos>", eos_token="<pad>")


def tiny_texts(data_dir: Path | None) -> list[str]:
    words = " Yes No True False Maybe Neither yes no question answer Question Answer"
    texts = [words] * 200
    if data_dir is not None:
        from engrain.tasks import get_task, load_split

        for name in ("rte", "hans"):
            spec = get_task(name)
            for ex in load_split(spec, "validation", data_dir)[:300]:
                texts.append(f"{ex['premise']} {ex['hypothesis']}")
    else:
        texts += ["The cat sat on the mat. A dog ran in the park. Is this true? answer: Yes No"] * 50
    return texts


def save_tiny(model_cls, cfg_cls, folder: Path, make_tokenizer=build_tokenizer, hidden_size: int = 32, **cfg) -> Path:
    """Build a tiny random model with an in-process tokenizer, save both to ``folder``."""
    tok = make_tokenizer(tiny_texts(_data_dir()))
    torch.manual_seed(0)
    model = model_cls(cfg_cls(vocab_size=len(tok), hidden_size=hidden_size, intermediate_size=2 * hidden_size, num_hidden_layers=2,
                              num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=4096,
                              pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id,
                              eos_token_id=tok.eos_token_id, **cfg))
    # Random init at std 0.02 gives near-uniform logits; scale up so predictions differ between inputs.
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.mul_(10)
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A saved tiny Llama + tokenizer folder, loadable with engrain.models.load_model(path)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    return save_tiny(LlamaForCausalLM, LlamaConfig, tmp_path_factory.mktemp("tiny-llama"), tie_word_embeddings=True)


@pytest.fixture(scope="session")
def bitsandbytes():
    """bitsandbytes, or a skip saying how to install it (--load-in-4bit / --load-in-8bit tests)."""
    return pytest.importorskip("bitsandbytes", reason="bitsandbytes is not installed (pip install 'engrain[quant]')")


@pytest.fixture(scope="session")
def tiny_wide_dir(tmp_path_factory) -> Path:
    """The tiny Llama twice as wide (64): bitsandbytes' CPU 4-bit kernels want output widths in multiples of 32."""
    from transformers import LlamaConfig, LlamaForCausalLM

    return save_tiny(LlamaForCausalLM, LlamaConfig, tmp_path_factory.mktemp("tiny-wide"), hidden_size=64, tie_word_embeddings=True)


@pytest.fixture(scope="session", params=["bos", "sentencepiece"])
def tiny_bos_dir(request, tmp_path_factory) -> Path:
    """A tiny Llama whose tokenizer adds a BOS: byte-level BPE (as Gemma 3), or sentencepiece-style (as Llama-2)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    make = build_bos_tokenizer if request.param == "bos" else build_sp_tokenizer
    return save_tiny(LlamaForCausalLM, LlamaConfig, tmp_path_factory.mktemp(f"tiny-{request.param}"), make, tie_word_embeddings=True)


@pytest.fixture(scope="session")
def tiny_gemma_dir(tmp_path_factory) -> Path:
    """A saved tiny Gemma 3 (one sliding-window layer with a window of 8 tokens, one global layer):
    contexts longer than the window exercise what a Llama cannot, as gemma3-270m's 512 window does."""
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    return save_tiny(Gemma3ForCausalLM, Gemma3TextConfig, tmp_path_factory.mktemp("tiny-gemma3"), head_dim=8,
                     query_pre_attn_scalar=8, sliding_window=8, layer_types=["sliding_attention", "full_attention"])


@pytest.fixture(scope="session", params=["llama", "gemma3"])
def tiny_any_dir(request) -> Path:
    """Each tiny model family in turn, for the invariants padding and caching could break."""
    return request.getfixturevalue("tiny_model_dir" if request.param == "llama" else "tiny_gemma_dir")


@pytest.fixture(scope="session")
def tiny(tiny_model_dir):
    """The tiny model loaded in fp32 (exact comparisons)."""
    from engrain.models import load_model

    return load_model(str(tiny_model_dir), precision="fp32", device="cpu")


def pytest_terminal_summary(terminalreporter) -> None:
    """Say what the timings and the real-model tests ran on: the CPU's bf16 kind and the precision auto picks."""
    from engrain.models import cpu_bf16_kind, resolve_dtype

    kind = cpu_bf16_kind()
    auto = str(resolve_dtype("auto", torch.device("cpu"))).replace("torch.", "")
    isa = os.environ.get("ONEDNN_MAX_CPU_ISA")
    terminalreporter.write_line(f"engrain: CPU bf16 {kind}{f' (ONEDNN_MAX_CPU_ISA={isa})' if isa else ''}; "
                                f"precision auto = {auto} (the real-model tests ran in it)")


# Where the device-independent invariants run: CPU always, CUDA (fp32 and bf16) when there is a GPU.
# Tolerances on logits: fp32 on CPU 1e-4; fp32 on CUDA 1e-3 (other kernels and reduction orders); bf16
# 1e-2 of the logits' largest magnitude (8 bits of mantissa, per layer).
DEVICES = [("cpu", "fp32"), ("cuda", "fp32"), ("cuda", "bf16")]


@pytest.fixture(params=DEVICES, ids=[f"{d}-{p}" for d, p in DEVICES])
def device_precision(request):
    device, precision = request.param
    if device == "cuda" and not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    if precision == "bf16" and device == "cuda" and not torch.cuda.is_bf16_supported():
        pytest.skip("this GPU has no bf16")
    return device, precision


def logit_tolerance(device: str, precision: str, reference: torch.Tensor) -> dict:
    """assert_close tolerances for logits computed two ways on ``device`` in ``precision``."""
    if precision == "bf16":
        return {"atol": 1e-2 * float(reference.abs().max()), "rtol": 1e-2}
    return {"atol": 1e-4, "rtol": 1e-4} if device == "cpu" else {"atol": 1e-3, "rtol": 1e-3}


def write_two_docs(root: Path) -> Path:
    """A user's corpus: a folder of two .md files (root/docs) and one question about them (root/q.jsonl)."""
    import json

    (root / "docs").mkdir(exist_ok=True)
    (root / "docs" / "orrin.md").write_text("# Orrin\n\nThe lighthouse keeper of Orrin is named Bel Tasso. She was born in 1961.")
    (root / "docs" / "dreust.md").write_text("Dreust is a town on the salt coast. Its mill makes lanterns.")
    (root / "q.jsonl").write_text(json.dumps({"question": "Who keeps the lighthouse of Orrin?", "choices": ["Bel Tasso", "Ana Ruiz"],
                                              "answer": 0, "doc": "orrin.md"}) + "\n")
    return root


@pytest.fixture
def hub_cache(tmp_path, monkeypatch):
    """``put(repo_id, {split: Dataset})`` writes a Hugging Face hub dataset into a fresh datasets cache as
    ``load_dataset(repo_id)`` leaves it after a download (``namespace___name/default/0.0.0/<commit>/``: one arrow file
    per split and dataset_info.json, written by datasets' own builder); the hub is offline, so ``load_dataset(repo_id)``
    can only read that cache, as on a machine without network that loaded the dataset once."""
    import shutil

    import datasets
    import huggingface_hub.constants
    from datasets.data_files import DataFilesDict
    from datasets.packaged_modules.parquet.parquet import Parquet

    cache = tmp_path / "hf-datasets"
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", cache)
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)

    def put(repo_id: str, splits: dict) -> None:
        namespace, name = repo_id.split("/")
        src = tmp_path / "hub-src" / name
        src.mkdir(parents=True)
        for split, ds in splits.items():
            ds.to_parquet(str(src / f"{split}.parquet"))
        files = DataFilesDict.from_patterns({split: [str(src / f"{split}.parquet")] for split in splits})
        builder = Parquet(cache_dir=str(tmp_path / "hub-build"), dataset_name=name, data_files=files)
        builder.download_and_prepare()
        shutil.copytree(builder.cache_dir, cache / f"{namespace}___{name}" / "default" / "0.0.0" / "0123456789abcdef")

    return put
