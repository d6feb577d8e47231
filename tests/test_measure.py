"""Measurement helpers: the meter sees memory and time; FLOP counts add up."""

from __future__ import annotations

import time

import pytest
import torch

from engrain.measure import FlopModel, Meter, causal_pairs, matmul_peak


def test_meter_sees_a_transient_allocation():
    with Meter() as base:
        time.sleep(0.02)
    with Meter() as m:
        x = torch.ones(64, 2**20)  # 256 MiB, touched
        time.sleep(0.05)
        del x
    assert m.peak_mb - base.peak_mb > 200
    assert m.seconds >= 0.05


def test_causal_pairs():
    assert causal_pairs(0, 3) == 6  # 1 + 2 + 3
    assert causal_pairs(10, 2) == 10 * 2 + 3


def test_flop_model_counts(tiny):
    fm = FlopModel.of(tiny.model)
    cfg = tiny.model.config
    emb = cfg.vocab_size * cfg.hidden_size
    assert fm.body_params == sum(p.numel() for p in tiny.model.parameters()) - emb  # tied head
    assert fm.head_params == emb and fm.layers == 2 and fm.attn_width == 32
    assert fm.forward(10, 0, 0) == 20 * fm.body_params


def test_matmul_peak_is_cached(tmp_path, monkeypatch):
    monkeypatch.setenv("ENGRAIN_CACHE", str(tmp_path))
    first = matmul_peak(torch.device("cpu"), torch.float32)
    assert first > 1e9 and (tmp_path / "matmul_peak.json").is_file()
    assert matmul_peak(torch.device("cpu"), torch.float32) == first


def test_matmul_peak_is_measured_again_after_a_reboot_or_on_another_host(tmp_path, monkeypatch):
    """Hosts sold under one CPU name differ (2.5x here): a peak cached on one must not stand for another."""
    import json

    import engrain.measure

    monkeypatch.setenv("ENGRAIN_CACHE", str(tmp_path))
    probes = []
    monkeypatch.setattr(engrain.measure, "measure_matmul_peak", lambda device, dtype: probes.append(1) or 1e9 * len(probes))
    monkeypatch.setattr(engrain.measure, "boot_id", lambda: "host-a")
    assert matmul_peak(torch.device("cpu"), torch.float32) == matmul_peak(torch.device("cpu"), torch.float32) == 1e9
    monkeypatch.setattr(engrain.measure, "boot_id", lambda: "host-b")
    assert matmul_peak(torch.device("cpu"), torch.float32) == 2e9 and len(probes) == 2
    assert all("host-b" in key for key in json.loads((tmp_path / "matmul_peak.json").read_text()))  # the old host's entry is dropped


def test_the_matmul_probe_is_bounded_where_products_are_slow():
    """Emulated bf16 multiplies at ~1 GFLOP/s: a 4096-square product would take over two minutes.
    The probe must stop growing n and return within its budget, with the rate it saw."""
    from engrain.measure import measure_matmul_peak

    sizes = []

    def slow(a, b):  # a fake matmul at 1 GFLOP/s
        sizes.append(a.shape[0])
        time.sleep(2 * a.shape[0] ** 3 / 1e9)
        return a

    t0 = time.perf_counter()
    peak = measure_matmul_peak(torch.device("cpu"), torch.float32, budget=0.5, matmul=slow)
    took = time.perf_counter() - t0
    assert took < 0.5 + 0.05, took
    assert max(sizes) <= 256 and peak == pytest.approx(1e9, rel=0.3)


def test_the_matmul_probe_grows_where_products_are_fast():
    from engrain.measure import measure_matmul_peak

    sizes = []
    peak = measure_matmul_peak(torch.device("cpu"), torch.float32, budget=1.0,
                               matmul=lambda a, b: sizes.append(a.shape[0]))  # instant
    assert max(sizes) == 4096 and peak > 1e12


def test_the_matmul_probes_one_off_set_up_does_not_eat_its_budget():
    """The first product pays for a cuBLAS handle (or oneDNN's first kernel): paid from the budget, it
    stops the probe at small n (one likely reason the H200 read 68.7 TFLOP/s where the chip does ~790)."""
    from engrain.measure import measure_matmul_peak

    sizes = []

    def set_up_then_instant(a, b):
        sizes.append(a.shape[0])
        if len(sizes) == 1:
            time.sleep(1.0)  # the set-up: longer than the whole budget

    peak = measure_matmul_peak(torch.device("cpu"), torch.float32, budget=1.0, matmul=set_up_then_instant)
    assert max(sizes) == 4096 and peak > 1e12


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_on_a_gpu_the_probe_reads_what_a_long_measurement_does():
    """The GPU's MFU is only as right as this peak. A long measurement (big products, clocks warmed
    over 2 s, one sync for 50 products) must not beat the 0.8 s probe by more than a third."""
    from engrain.measure import measure_matmul_peak

    device, n = torch.device("cuda"), 8192
    probe = measure_matmul_peak(device, torch.bfloat16)  # first, as engrain calls it: clocks not yet warm
    a, b = (torch.randn(n, n, device=device, dtype=torch.bfloat16) for _ in range(2))
    t = time.perf_counter()
    while time.perf_counter() - t < 2.0:
        torch.matmul(a, b)
        torch.cuda.synchronize(device)
    t = time.perf_counter()
    for _ in range(50):
        torch.matmul(a, b)
    torch.cuda.synchronize(device)
    careful = 50 * 2 * n**3 / (time.perf_counter() - t)
    assert probe > 0.75 * careful, f"probe {probe / 1e12:.1f} vs {careful / 1e12:.1f} TFLOP/s"


def test_bf16_where_the_cpu_emulates_it_warns_once(monkeypatch, capsys):
    import engrain.measure
    import engrain.models as models

    monkeypatch.setattr(models, "cpu_bf16_kind", lambda: "none")
    monkeypatch.setattr(engrain.measure, "matmul_peak", lambda device, dtype: 1.3e9 if dtype is torch.bfloat16 else 75.5e9)
    monkeypatch.setattr(models, "_warned", set())
    assert models.resolve_dtype("bf16", torch.device("cpu")) is torch.bfloat16  # still runs in bf16
    assert models.resolve_dtype("bf16", torch.device("cpu")) is torch.bfloat16
    assert models.resolve_dtype("auto", torch.device("cpu")) is torch.float32
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "emulated" in err and "1.3 GFLOP/s in bf16 vs 75.5 in fp32 (58x slower)" in err


def test_the_cpu_bf16_kind_can_be_overridden(monkeypatch):
    from engrain.models import cpu_bf16_kind, cpu_has_bf16

    monkeypatch.setenv("ENGRAIN_CPU_BF16", "0")
    assert cpu_bf16_kind() == "none" and not cpu_has_bf16()


def test_on_cuda_the_peak_is_the_devices_and_host_rss_is_kept_apart(monkeypatch):
    """Without a GPU: torch.cuda's counters faked. The device peak is max allocated (not the host RSS,
    which is larger here), reserved and host RSS are reported beside it; a pause resets the device peak."""
    import torch

    from engrain.measure import Meter

    allocated = iter([3 * 2**20, 7 * 2**20, 5 * 2**20])
    monkeypatch.setattr(torch.cuda, "synchronize", lambda *a: None)
    monkeypatch.setattr(torch.cuda, "reset_peak_memory_stats", lambda *a: None)
    monkeypatch.setattr(torch.cuda, "max_memory_allocated", lambda *a: next(allocated))
    monkeypatch.setattr(torch.cuda, "max_memory_reserved", lambda *a: 64 * 2**20)
    with Meter(torch.device("cuda")) as m:
        with m.paused():  # peak so far: 3 MiB
            pass
    assert m.peak_mb == 7 and m.host_peak_bytes > 10 * 2**20  # max of the stretches before and after the pause
    assert m.memory() == {"peak_memory_mb": 7.0, "peak_memory_reserved_mb": 64.0, "host_peak_memory_mb": m.host_peak_bytes / 2**20}
    with Meter() as cpu:
        pass
    assert cpu.memory() == {"peak_memory_mb": cpu.host_peak_bytes / 2**20} and cpu.peak_bytes == cpu.host_peak_bytes
