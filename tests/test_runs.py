"""Tests for jdlfs.runs: the command line, run folders, results.json, and how a script stops.

How a script stops (Ctrl-C, missing or corrupt data, a bad flag, a bug) is
tested on a tiny fake experiment written to ``tmp_path`` and run as a
subprocess, as a user runs one: exit status, stderr and ``results.json``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import gzip
import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest

from jdlfs import runs

FAKE_EXPERIMENT = '''
"""A fake experiment for tests."""
import sys
import time

from jdlfs import runs


def main(argv=None):
    p = runs.experiment_parser("fake", __doc__)
    p.add_argument("--mode", default="ok", help="ok, data, corpus, usage, usage-early, interrupt, wait, bug")
    p.add_argument("--checkpoint", action="store_true", help="write a checkpoint folder first")
    args = p.parse_args(argv)
    if args.mode == "usage-early":
        raise runs.UsageError("--quick and --mode usage-early do not go together")
    out = runs.start(args)
    if args.checkpoint:
        (out / "checkpoint").mkdir(exist_ok=True)
    if args.mode == "data":
        x_train, y_train, x_test, y_test = runs.load_dataset(args, "mnist", quick_train=3, quick_test=2)
        return runs.finish(args, {"train_examples": len(y_train), "test_examples": len(y_test)})
    if args.mode == "usage":
        raise runs.UsageError("--devices 3 does not divide --batch-size 64")
    if args.mode == "corpus":
        from jdlfs.text import load_reuters

        load_reuters(split="train", data_dir=args.data_dir)
    if args.mode == "interrupt":
        raise KeyboardInterrupt
    if args.mode == "wait":
        import signal

        blocked = signal.SIGINT in signal.pthread_sigmask(signal.SIG_BLOCK, [])
        print(f"SIGINT handler {signal.getsignal(signal.SIGINT)!r}, blocked {blocked}", file=sys.stderr, flush=True)
        print("ready", flush=True)
        # Short sleeps, as a training loop returns to Python between steps.
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            time.sleep(0.05)
    if args.mode == "bug":
        raise ValueError("boom")
    return runs.finish(args, {"value": 1.5})


if __name__ == "__main__":
    runs.run_main(main)
'''


# ----------------------------------------------------------------- helpers


def write_idx(path: Path, arr: np.ndarray) -> None:
    header = (0x0800 | arr.ndim).to_bytes(4, "big") + b"".join(int(d).to_bytes(4, "big") for d in arr.shape)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(gzip.compress(header + arr.astype(np.uint8).tobytes()))


def make_mnist(folder: Path, n_train: int = 5, n_test: int = 4) -> None:
    rng = np.random.default_rng(0)
    for stem, n in (("train", n_train), ("t10k", n_test)):
        write_idx(folder / f"{stem}-images-idx3-ubyte.gz", rng.integers(0, 256, (n, 28, 28)))
        write_idx(folder / f"{stem}-labels-idx1-ubyte.gz", rng.integers(0, 10, n))


@pytest.fixture
def fake(tmp_path):
    """Run the fake experiment in ``tmp_path`` (so ``runs/`` lands there), without ambient data."""
    script = tmp_path / "fake.py"
    script.write_text(FAKE_EXPERIMENT)
    env = {k: v for k, v in os.environ.items() if k != "JDLFS_DATA_DIR"}
    env.update(JDLFS_CACHE_DIR=str(tmp_path / "cache"), TFDS_DATA_DIR=str(tmp_path / "tfds"), JAX_PLATFORMS="cpu")

    def run(*args: str, **kwargs) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, str(script), "--no-progress", *args],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
            **kwargs,
        )

    run.script, run.env = script, env
    return run


def run_folders(root: Path) -> list[Path]:
    return sorted(p for p in (root / "runs" / "fake").glob("*") if p.is_dir()) if (root / "runs").exists() else []


def results(folder: Path) -> dict:
    return json.loads((folder / "results.json").read_text())


def parse(argv=(), name="demo"):
    p = runs.experiment_parser(name, "A demo experiment.")
    p.add_argument("--epochs", type=int, default=10, help="passes over the training set")
    return p.parse_args(list(argv))


# ----------------------------------------------------------------- command line


def help_blocks(text: str) -> dict[str, str]:
    """``{"--seed": its help text, ...}`` from argparse's help output."""
    blocks, current = {}, None
    for line in text.splitlines():
        m = re.match(r"^  (-\w|--[\w-]+)", line)
        if m:
            current = m.group(1)
            blocks[current] = line
        elif current and line.startswith("      "):
            blocks[current] += " " + line.strip()
        else:
            current = None
    return {k: " ".join(v.split()) for k, v in blocks.items()}


@pytest.mark.parametrize("data_dir", [None, "/data/somewhere"])
def test_help_shows_each_default_once(monkeypatch, data_dir):
    if data_dir is None:
        monkeypatch.delenv("JDLFS_DATA_DIR", raising=False)
    else:
        monkeypatch.setenv("JDLFS_DATA_DIR", data_dir)
    p = runs.experiment_parser("demo", "A demo experiment.")
    p.add_argument("--epochs", type=int, default=10, help="passes over the training set")
    text = p.format_help()
    blocks = help_blocks(text)
    assert set(blocks) >= {"--seed", "--data-dir", "--out", "--quick", "--no-progress", "--devices", "--epochs"}
    assert "(default: None)" not in text and "(default: False)" not in text
    for block in blocks.values():
        assert block.lower().count("default") <= 1, block
    assert "(default: 0)" in blocks["--seed"] and "(default: 10)" in blocks["--epochs"]
    assert "default runs/demo/<timestamp>-<suffix>" in blocks["--out"] and "resume" in blocks["--out"]
    assert "default: all local devices" in blocks["--devices"]
    assert "$JDLFS_DATA_DIR" in blocks["--data-dir"]
    assert ("(default: /data/somewhere)" in blocks["--data-dir"]) == (data_dir is not None)
    for flag in ("--quick", "--no-progress"):
        assert len(blocks[flag].split()) > 2, f"{flag} has no description"


def test_devices_flag(monkeypatch):
    assert parse().devices is None and parse(["--devices", "2"]).devices == 2
    with pytest.raises(SystemExit) as e:
        parse(["--devices", "0"])
    assert e.value.code == 2
    assert len(runs.local_devices(parse())) >= 1
    assert runs.local_devices(parse(["--devices", "1"])) == runs.local_devices(parse())[:1]
    with pytest.raises(runs.UsageError, match=r"--devices 999 asks for more devices than the \d+"):
        runs.local_devices(parse(["--devices", "999"]))


@pytest.mark.parametrize("seed", ["-1", str(2**63), str(2**70), "1.5"])
def test_seed_a_key_cannot_hold_is_refused(seed, capsys):
    """jax.random.key overflows past a signed 64-bit seed: refused as a flag (exit 2), not a traceback later."""
    assert parse(["--seed", str(2**63 - 1)]).seed == 2**63 - 1
    with pytest.raises(SystemExit) as e:
        parse(["--seed", seed])
    assert e.value.code == 2
    assert "--seed" in capsys.readouterr().err


# ----------------------------------------------------------------- run folders and results.json


def test_two_starts_in_the_same_second_get_two_folders(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    frozen = dt.datetime(2025, 1, 2, 3, 4, 5)

    class FrozenDatetime(dt.datetime):
        @classmethod
        def now(cls, tz=None):
            return frozen

    monkeypatch.setattr(runs._dt, "datetime", FrozenDatetime)
    suffixes = iter(["beef", "beef", "cafe"])  # the second start draws a taken suffix first: it retries
    monkeypatch.setattr(runs.secrets, "token_hex", lambda n: next(suffixes))
    a, b = parse(), parse()
    out_a, out_b = runs.start(a), runs.start(b)
    assert out_a == Path("runs/demo/20250102-030405-beef") and out_b == Path("runs/demo/20250102-030405-cafe")
    assert results(out_a)["status"] == results(out_b)["status"] == "running"
    assert a.out == str(out_a) and b.out == str(out_b)


def test_default_run_folders_are_unique_without_mocks(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    outs = {runs.start(parse()) for _ in range(20)}
    assert len(outs) == 20
    for out in outs:
        assert re.fullmatch(r"\d{8}-\d{6}-[0-9a-f]{4}", out.name)


def test_status_running_then_finished(tmp_path, capsys):
    args = parse(["--seed", "3", "--out", str(tmp_path / "run"), "--epochs", "2"])
    out = runs.start(args)
    assert out == tmp_path / "run"
    first = results(out)
    assert first["status"] == "running" and first["experiment"] == "demo" and first["resumed"] is False
    assert dt.datetime.fromisoformat(first["started"]).tzinfo is not None
    assert first["argv"] == ["--seed", "3", "--out", str(tmp_path / "run"), "--epochs", "2"]
    assert first["config"]["seed"] == 3 and first["config"]["epochs"] == 2 and first["config"]["devices"] is None
    assert first["config"]["out"] == str(out) and not any(k.startswith("_") for k in first["config"])
    json.dumps(first)  # JSON-able as written

    args.epochs = 1  # scripts adjust arguments for --quick after parsing: config is refreshed at the end
    returned = runs.finish(args, {"test_accuracy": np.float32(0.5), "history": [{"loss": jnp.float32(2.0)}]})
    on_disk = results(out)
    assert returned == on_disk  # returns what it wrote, as plain JSON values
    assert on_disk["status"] == "finished" and on_disk["started"] == first["started"]
    assert on_disk["test_accuracy"] == 0.5 and on_disk["history"] == [{"loss": 2.0}]
    assert on_disk["seed"] == 3 and on_disk["quick"] is False and on_disk["config"]["epochs"] == 1
    assert on_disk["wall_seconds"] >= 0 and "jax" in on_disk["environment"]
    assert dt.datetime.fromisoformat(on_disk["finished"]) >= dt.datetime.fromisoformat(on_disk["started"])
    assert '"test_accuracy": 0.5' in capsys.readouterr().out  # the headline


def test_out_naming_a_run_folder_resumes_it(tmp_path):
    folder = tmp_path / "run"
    first = parse(["--out", str(folder)])
    runs.start(first)
    runs.finish(first, {})
    again = parse(["--out", str(folder)])
    assert runs.start(again) == folder
    record = results(folder)
    assert record["resumed"] is True and record["previous_status"] == "finished"
    assert record["status"] == "running"
    with pytest.raises(runs.UsageError, match="is a run folder of 'demo', not of 'other'"):
        runs.start(parse(["--out", str(folder)], name="other"))
    (tmp_path / "file").write_text("x")
    with pytest.raises(runs.UsageError, match="is a file, not a folder"):
        runs.start(parse(["--out", str(tmp_path / "file")]))


def test_finish_refuses_reserved_keys(tmp_path):
    args = parse(["--out", str(tmp_path)])
    runs.start(args)
    with pytest.raises(ValueError, match=r"\['status'\]"):
        runs.finish(args, {"status": "great"})


def test_write_json_converts_arrays_and_replaces_atomically(tmp_path):
    path = tmp_path / "sub" / "r.json"
    runs.write_json(path, {"a": np.float32(1.5), "m": np.eye(2, dtype=np.int32), "j": jnp.ones(2), "p": tmp_path})
    assert json.loads(path.read_text()) == {"a": 1.5, "m": [[1, 0], [0, 1]], "j": [1.0, 1.0], "p": str(tmp_path)}
    with pytest.raises(TypeError, match="not JSON serialisable"):
        runs.write_json(path, {"bad": object()})
    assert json.loads(path.read_text())["a"] == 1.5  # the failed write left the old file whole
    assert [p.name for p in path.parent.iterdir()] == ["r.json"]  # no temporary file left behind


# ----------------------------------------------------------------- data and summaries


def test_load_dataset_quick_subset(tmp_path, monkeypatch):
    make_mnist(tmp_path / "data" / "mnist", n_train=7, n_test=5)
    monkeypatch.setenv("JDLFS_CACHE_DIR", str(tmp_path / "cache"))
    full = argparse.Namespace(data_dir=str(tmp_path / "data"), quick=False)
    x_train, y_train, x_test, y_test = runs.load_dataset(full, "mnist", quick_train=3, quick_test=2)
    assert x_train.shape == (7, 28, 28, 1) and x_train.dtype == np.uint8 and y_train.shape == (7,)
    assert x_test.shape == (5, 28, 28, 1) and y_test.shape == (5,)
    quick = argparse.Namespace(data_dir=str(tmp_path / "data"), quick=True)
    qx, qy, qxt, qyt = runs.load_dataset(quick, "mnist", quick_train=3, quick_test=2)
    assert qx.shape == (3, 28, 28, 1) and qxt.shape == (2, 28, 28, 1)
    # a fixed random subset (not the first rows: a class-sorted copy would give one class), the same every call
    for part, whole in ((qx, x_train), (qxt, x_test)):
        rows = [next(i for i in range(len(whole)) if np.array_equal(whole[i], p)) for p in part]
        assert len(set(rows)) == len(rows) and rows == sorted(rows)
    again = runs.load_dataset(
        argparse.Namespace(data_dir=str(tmp_path / "data"), quick=True, seed=5), "mnist", quick_train=3, quick_test=2
    )
    for a, b in zip((qx, qy, qxt, qyt), again):
        np.testing.assert_array_equal(a, b)


def test_epoch_timing():
    history = [{"train_seconds": 9.0}, {"train_seconds": 1.0}, {"train_seconds": 3.0}, {"train_seconds": 2.0}]
    assert runs.epoch_timing(history) == {"seconds_per_epoch": 2.0, "first_epoch_seconds_with_compile": 9.0}
    assert runs.epoch_timing([{"s": 4.0}], key="s") == {
        "seconds_per_epoch": 4.0,
        "first_epoch_seconds_with_compile": 4.0,
    }
    with pytest.raises(ValueError, match="empty"):
        runs.epoch_timing([])


# ----------------------------------------------------------------- how a script stops


def test_script_finishes(fake, tmp_path):
    r = fake()
    assert r.returncode == 0, r.stderr
    (folder,) = run_folders(tmp_path)
    assert results(folder)["status"] == "finished" and results(folder)["value"] == 1.5
    assert json.loads(r.stdout)["value"] == 1.5


def test_missing_data_is_one_message_and_exit_2(fake, tmp_path):
    r = fake("--mode", "data", "--data-dir", str(tmp_path / "nodata"))
    assert r.returncode == 2
    assert "Traceback" not in r.stderr and r.stdout == ""
    assert "--data-dir" in r.stderr and "JDLFS_DATA_DIR" in r.stderr and "data_dir=" not in r.stderr
    assert f"{tmp_path / 'nodata' / 'mnist'}: does not exist" in r.stderr  # where it looked
    assert "https://storage.googleapis.com/cvdf-datasets/mnist/" in r.stderr  # how to get it
    assert "fake.py: error: could not find the 'mnist' 'train' split" in r.stderr
    assert "Download" not in r.stderr and "WARNING" not in r.stderr  # no tfds announcement or log spam
    assert len(r.stderr.splitlines()) < 16
    # The run folder held nothing but results.json: it is gone, and so is runs/fake/ it created.
    assert not (tmp_path / "runs" / "fake").exists()


def test_missing_data_keeps_a_used_folder_marked_failed(fake, tmp_path):
    r = fake("--mode", "data", "--checkpoint", "--out", str(tmp_path / "kept"))
    assert r.returncode == 2 and "Traceback" not in r.stderr
    record = results(tmp_path / "kept")
    assert record["status"] == "failed" and "could not find the 'mnist' 'train' split" in record["error"]


def test_corrupt_file_names_it_and_points_at_checksums(fake, tmp_path):
    data_dir = tmp_path / "data"
    make_mnist(data_dir / "mnist")
    bad = data_dir / "mnist" / "train-images-idx3-ubyte.gz"
    bad.write_bytes(bad.read_bytes()[:40])  # truncated download
    (data_dir / "SHA256SUMS").write_text("0" * 64 + "  mnist/train-images-idx3-ubyte.gz\n")
    r = fake("--mode", "data", "--data-dir", str(data_dir))
    assert r.returncode == 2 and "Traceback" not in r.stderr
    first = next(line for line in r.stderr.splitlines() if "error:" in line)
    assert first.startswith(f"experiments/fake.py: error: {bad} is corrupt")
    assert str(data_dir / "SHA256SUMS") in r.stderr and "sha256sum -c" in r.stderr


def test_data_through_the_wrapper(fake, tmp_path):
    make_mnist(tmp_path / "data" / "mnist")
    r = fake("--mode", "data", "--quick", "--data-dir", str(tmp_path / "data"))
    assert r.returncode == 0, r.stderr
    (folder,) = run_folders(tmp_path)
    assert results(folder)["train_examples"] == 3 and results(folder)["test_examples"] == 2


@pytest.mark.parametrize("mode", ["usage", "usage-early"])
def test_usage_error_is_exit_2_without_traceback(fake, tmp_path, mode):
    r = fake("--mode", mode)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert re.search(r"fake\.py: error: --\w", r.stderr)
    assert run_folders(tmp_path) == []  # the started run wrote nothing else: removed


def test_missing_corpus_is_one_message_and_exit_2(fake, tmp_path):
    r = fake("--mode", "corpus", "--data-dir", str(tmp_path / "nodata"))
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    assert "fake.py: error:" in r.stderr and "reuters21578" in r.stderr
    assert run_folders(tmp_path) == []


def test_keyboard_interrupt_is_one_line_and_exit_130(fake, tmp_path):
    r = fake("--mode", "interrupt", "--checkpoint")
    assert r.returncode == 130 and "Traceback" not in r.stderr
    (folder,) = run_folders(tmp_path)
    lines = r.stderr.splitlines()
    assert lines[0].startswith("[fake] writing to") and len(lines) == 2
    assert lines[1] == f"experiments/fake.py: interrupted; rerun with --out {Path('runs/fake') / folder.name} to resume"
    assert results(folder)["status"] == "interrupted"
    # No checkpoint: no resume advice.
    r = fake("--mode", "interrupt")
    assert r.returncode == 130
    assert r.stderr.splitlines()[-1].endswith("has no checkpoint, a rerun starts over")


# Ctrl-C as a terminal delivers it: the script starts with SIGINT at its default disposition and unblocked. A test
# process may have it ignored or blocked (by libraries loaded by earlier tests in the same pytest-xdist worker), and
# both are inherited across exec: the script then never sees the signal (a 240 s timeout once in CI). A small
# launcher resets both and execs the script (a preexec_fn would fork the multithreaded JAX process instead).
AS_A_SHELL_STARTS_IT = (
    "import os, signal, sys; signal.pthread_sigmask(signal.SIG_UNBLOCK, [signal.SIGINT]); "
    "signal.signal(signal.SIGINT, signal.SIG_DFL); os.execv(sys.executable, [sys.executable, *sys.argv[1:]])"
)


def test_sigint_while_running(fake, tmp_path):
    out = tmp_path / "run"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-c",
            AS_A_SHELL_STARTS_IT,
            str(fake.script),
            "--mode",
            "wait",
            "--checkpoint",
            "--out",
            str(out),
        ],
        cwd=tmp_path,
        env=fake.env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout.readline().strip() == "ready"
        proc.send_signal(signal.SIGINT)
        _, stderr = proc.communicate(timeout=60)
    except subprocess.TimeoutExpired as e:
        raise AssertionError(f"no exit 60 s after SIGINT; the script's stderr: {e.stderr!r}") from None
    finally:
        if proc.poll() is None:
            proc.kill()
    assert "SIGINT handler <built-in function default_int_handler>, blocked False" in stderr, stderr
    assert proc.returncode == 130 and "Traceback" not in stderr
    assert stderr.splitlines()[-1] == f"experiments/fake.py: interrupted; rerun with --out {out} to resume"
    assert results(out)["status"] == "interrupted"
    # Rerunning with --out resumes the folder.
    r = fake("--out", str(out))
    assert r.returncode == 0 and "(resuming)" in r.stderr
    assert results(out)["status"] == "finished" and results(out)["resumed"] is True
    assert results(out)["previous_status"] == "interrupted"


def test_bug_keeps_its_traceback(fake, tmp_path):
    r = fake("--mode", "bug")
    assert r.returncode == 1
    assert "Traceback" in r.stderr and "ValueError: boom" in r.stderr
    (folder,) = run_folders(tmp_path)
    assert results(folder)["status"] == "failed" and results(folder)["error"] == "ValueError: boom"


def test_help_of_the_script(fake, tmp_path):
    r = fake("--help")
    assert r.returncode == 0 and "--mode MODE" in r.stdout and "(default: ok)" in r.stdout
    assert "(default: None)" not in r.stdout and "(default: False)" not in r.stdout
    assert run_folders(tmp_path) == []  # --help starts no run
