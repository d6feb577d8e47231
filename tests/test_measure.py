"""Measurement helpers: the meter sees memory and time; FLOP counts add up."""

from __future__ import annotations

import time

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
