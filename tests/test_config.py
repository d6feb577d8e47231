"""Run configuration: YAML values are typed and checked; the config layer needs no torch."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from engrain.cli import main
from engrain.config import TrainConfig, from_dict, load_yaml
from engrain.errors import EngrainError

FLOAT_KEYS = ("lr", "warmup_ratio", "weight_decay", "max_grad_norm", "lora_dropout", "temperature", "alpha")


def test_yaml_numbers_in_exponent_notation_are_numbers(tmp_path):
    """PyYAML reads `1e-3` (no dot) as a string: every numeric key must still come out a number."""
    f = tmp_path / "run.yaml"
    f.write_text("model: x\nmethod: distill\nlr: 1e-3\nwarmup_ratio: 5e-2\nweight_decay: 1e-2\nmax_grad_norm: 1\n"
                 "lora_dropout: 5e-2\ntemperature: 2e0\nalpha: 5e-1\nepochs: 3\n")
    values = load_yaml(f)
    assert isinstance(values["lr"], str), "PyYAML changed: this test no longer exercises the string case"
    cfg = from_dict(TrainConfig, values, where=str(f))
    assert (cfg.lr, cfg.warmup_ratio, cfg.weight_decay, cfg.lora_dropout, cfg.temperature, cfg.alpha) == (1e-3, 0.05, 0.01, 0.05, 2.0, 0.5)
    assert all(type(getattr(cfg, k)) is float for k in FLOAT_KEYS)
    assert cfg.max_grad_norm == 1.0 and cfg.epochs == 3


@pytest.mark.parametrize("key", FLOAT_KEYS)
def test_a_non_number_names_its_key(key):
    with pytest.raises(EngrainError, match=rf"^--{key.replace('_', '-')} must be a number, got 'fast'$"):
        TrainConfig(model="x", method="distill", **{key: "fast"})


def test_an_integer_key_rejects_a_fraction():
    with pytest.raises(EngrainError, match=r"--epochs must be an integer >= 1, got 2.5"):
        TrainConfig(model="x", epochs=2.5)


def test_the_cli_reads_exponent_numbers_from_yaml(tmp_path, capsys):
    f = tmp_path / "run.yaml"
    f.write_text("model: /no/such/model\nwarmup_ratio: 5e-2\nlr: abc\n")
    assert main(["train", "--config", str(f)]) == 2
    err = capsys.readouterr().err
    assert err.strip() == "engrain: error: --lr must be a number, got 'abc'"


def test_the_config_layer_and_dry_run_do_not_import_torch(tmp_path):
    """Names live in a leaf module: config, the CLI's parser and a dry-run sweep never load torch."""
    sweep = tmp_path / "s.yaml"
    sweep.write_text("base: {model: x, task: rte}\ngrid: {seed: [0, 1]}\nruns:\n  - {method: icl}\n  - {method: distill}\n")
    code = (
        "import sys\n"
        "import engrain, engrain.config, engrain.cli\n"
        "from engrain.cli import main\n"
        f"assert main(['sweep', {str(sweep)!r}, '--dry-run']) == 0\n"
        "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
        "print('torch' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "False"


def test_missing_task_data_fails_the_suite_loudly(tmp_path):
    """Outside CI too: a test that needs ../shared/data fails (it never skips) when the data is missing."""
    test = tmp_path / "test_needs_data.py"
    test.write_text("def test_x(data_dir):\n    pass\n")
    conftest = Path(__file__).with_name("conftest.py")
    (tmp_path / "conftest.py").write_text(conftest.read_text())
    env = {"PATH": "/usr/bin:/bin", "ENGRAIN_DATA": str(tmp_path / "nowhere"), "HOME": str(tmp_path)}
    out = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(test)],
                         capture_output=True, text=True, timeout=120, cwd=tmp_path, env=env)
    assert out.returncode != 0, out.stdout
    assert "task data not found" in out.stdout and "skipped" not in out.stdout
