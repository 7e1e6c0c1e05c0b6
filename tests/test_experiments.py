"""Smoke tests of the experiment scripts: each ``main([... "--quick" ...])`` runs
in-process and must write ``results.json`` and its figures, with numbers that
show the behaviour the script is about (not just that it ran).

Scripts that need MNIST are skipped unless ``$JDLFS_DATA_DIR/mnist`` exists
(tests/conftest.py points it at ``../shared/data`` when that is beside the
repository). The quick configurations take ~3 s (xor) to
~12 s (init_schemes) each on a 2-core CPU.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

EXPERIMENTS = Path(__file__).resolve().parent.parent / "experiments"


def load_script(name: str):
    """Import ``experiments/<name>.py`` by path (``experiments/`` is not a package)."""
    spec = importlib.util.spec_from_file_location(f"experiment_{name}", EXPERIMENTS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def data_dir() -> str:
    d = os.environ.get("JDLFS_DATA_DIR")
    if not d or not (Path(d) / "mnist").is_dir():
        pytest.skip("needs MNIST: set JDLFS_DATA_DIR to a directory containing mnist/")
    return d


def run_quick(name: str, out: Path, data_dir: str | None = None, *extra: str) -> dict:
    argv = ["--quick", "--out", str(out), "--no-progress", *extra]
    if data_dir is not None:
        argv += ["--data-dir", data_dir]
    results = load_script(name).main(argv)
    on_disk = json.loads((out / "results.json").read_text())
    assert on_disk["experiment"] == name and on_disk["quick"] is True
    assert set(results) == set(on_disk)
    return on_disk


def assert_figures(out: Path, *names: str) -> None:
    for n in names:
        path = out / n
        assert path.is_file(), f"missing figure {n}"
        assert path.stat().st_size > 1000 and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", n


@pytest.mark.parametrize("name", ["mnist_mlp", "xor", "init_schemes", "overfit", "lenet_mnist"])
def test_help(name, capsys):
    with pytest.raises(SystemExit) as exc:
        load_script(name).main(["--help"])
    assert exc.value.code == 0
    text = capsys.readouterr().out
    for flag in ("--seed", "--data-dir", "--out", "--quick", "--no-progress", "--devices"):
        assert flag in text
    options = text[text.index("options:") :]
    blocks = re.split(r"\n  (?=-)", options)[1:]  # one block per option
    assert len(blocks) >= 7
    for block in blocks:
        flat = " ".join(block.split())
        assert "(default: None)" not in flat and "(default: False)" not in flat, flat
        assert flat.count("default") <= 1, f"default shown twice: {flat}"
        words = re.sub(r"^-[^ ]*( [A-Z_]+)?(, -[^ ]*( [A-Z_]+)?)*", "", flat).strip()
        assert words, f"option without a description: {flat}"


def test_xor(tmp_path):
    r = run_quick("xor", tmp_path)
    for key in ("perceptron_accuracy", "perceptron_best_accuracy", "mlp_accuracy", "mlp_final_loss", "restarts"):
        assert key in r
    assert 0.5 <= r["perceptron_accuracy"] <= 0.75  # a line cannot get XOR right
    assert 0.5 <= r["perceptron_best_accuracy"] <= 0.75
    assert r["perceptron_grad_norm"] == 0.0  # the step passes no gradient
    assert r["mlp_accuracy"] == 1.0
    assert r["mlp_final_loss"] < 0.05
    assert r["restarts"] == len(r["mlp_attempts"]) - 1
    assert_figures(tmp_path, "decision_boundaries.png", "mlp_loss.png", "perceptron.png")


def test_xor_restarts_until_solved(tmp_path):
    # seed 6's first 2-2-1 init stalls in the ln(2)/2 plateau; the restart solves it
    r = run_quick("xor", tmp_path, None, "--seed", "6")
    assert r["restarts"] >= 1 and r["mlp_accuracy"] == 1.0
    assert r["mlp_attempts"][0]["accuracy"] < 1.0


def test_init_schemes(tmp_path, data_dir):
    r = run_quick("init_schemes", tmp_path, data_dir)
    acc = {s: r[f"accuracy_{s}"] for s in ("zeros", "normal", "xavier", "he")}
    assert acc["he"] > acc["zeros"] + 0.4 and acc["xavier"] > acc["zeros"] + 0.4
    assert acc["zeros"] < 0.2  # predicts one class
    assert r["zeros_hidden_weights_max_abs"] == 0.0  # symmetry never breaks
    for s in ("normal", "xavier", "he"):
        assert r[f"weight_std_{s}"] == pytest.approx(r[f"weight_std_theory_{s}"], rel=0.05)
    fwd = {s: r[f"forward_std_{s}"] for s in acc}
    bwd = {s: r[f"backward_std_{s}"] for s in acc}
    assert len(fwd["he"]) == len(bwd["he"]) == r["deep_sizes"].count(256)
    assert max(fwd["zeros"]) == 0.0 and max(bwd["zeros"]) == 0.0
    assert 0.5 < fwd["he"][-1] / fwd["he"][0] < 2  # He keeps the signal
    assert fwd["xavier"][-1] / fwd["xavier"][0] < 0.2  # Xavier halves the variance per ReLU layer
    assert fwd["normal"][-1] / fwd["normal"][0] < 1e-6  # N(0, 0.01^2) vanishes
    assert_figures(tmp_path, "weights.png", "depth.png", "training.png")


def test_overfit(tmp_path, data_dir):
    r = run_quick("overfit", tmp_path, data_dir)
    assert r["all_below_threshold"] is True
    for n in (1, 4, 16, 64):
        assert r[f"final_loss_{n}"] < 1e-2
        assert 0.0 <= r[f"dead_relu_fraction_{n}"] <= 1.0
    assert r["test_accuracy_64"] > r["test_accuracy_1"]  # more data, less pure memorisation
    assert_figures(tmp_path, "loss.png")


def test_lenet_mnist(tmp_path, data_dir):
    r = run_quick("lenet_mnist", tmp_path, data_dir)
    assert r["param_count"] == 18_898
    assert r["epochs"] == 1 and r["seconds_per_epoch"] > 0
    assert r["test_accuracy"] > 0.5  # 1 epoch on 2k images: ~70%
    assert len(r["history"]) == 1
    assert_figures(tmp_path, "curves.png", "filters.png", "confusion.png")


def test_mnist_mlp(tmp_path, data_dir):
    """The main job, quick: our gradients equal autodiff's at the same parameters
    and the two training runs agree."""
    r = run_quick("mnist_mlp", tmp_path, data_dir)
    assert r["sizes"] == [784, 128, 10] and r["param_count"] == 101_770
    assert r["gradient_relative_difference_at_init"] < 1e-5
    assert r["test_accuracy"] > 0.8  # 2 epochs on 4k images: ~89%
    assert r["accuracy_difference"] <= 0.01
    assert r["max_param_relative_difference"] < 1e-3  # 2 short epochs: rounding has not grown yet
    assert len(r["history"]) == r["epochs"] == 2
    assert_figures(tmp_path, "curves.png", "confusion.png")


def test_missing_data_is_one_message_and_exit_status_2(tmp_path):
    proc = subprocess.run(
        [
            sys.executable,
            str(EXPERIMENTS / "lenet_mnist.py"),
            "--quick",
            "--no-progress",
            "--data-dir",
            str(tmp_path / "nowhere"),
            "--out",
            str(tmp_path / "run"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
    )
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    assert "--data-dir" in proc.stderr and "JDLFS_DATA_DIR" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) < 40


def test_a_stopped_run_resumes_where_it_stopped(tmp_path, data_dir):
    """mnist_mlp --quick for 1 epoch, then the same --out for 2: the second run
    continues from the checkpoint and ends exactly where a straight 2-epoch run ends."""
    common = ("--no-autodiff-baseline",)
    first = run_quick("mnist_mlp", tmp_path / "a", data_dir, "--epochs", "1", *common)
    assert first["status"] == "finished" and len(first["history"]) == 1
    resumed = run_quick("mnist_mlp", tmp_path / "a", data_dir, "--epochs", "2", *common)
    straight = run_quick("mnist_mlp", tmp_path / "b", data_dir, "--epochs", "2", *common)
    assert resumed["resumed"] is True
    assert resumed["history"][0] == first["history"][0]  # epoch 1 was not trained again
    assert resumed["test_accuracy"] == straight["test_accuracy"]
    assert resumed["history"][1]["train_loss"] == straight["history"][1]["train_loss"]
