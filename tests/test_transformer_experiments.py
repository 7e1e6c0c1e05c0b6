"""Quick runs of the Transformer experiments (translate, headlines, attention_maps): each ``main([... "--quick"])``
runs in-process on real data (skipped without it) and must write its results, figures and checkpoint, with the
numbers the script is about (BLEU/ROUGE tables, decoding speeds with and without the cache, lead baseline).

Speed is measured, not asserted: a timing threshold fails under CI load (the cache's speed-up is reported in
results.json; benchmarks judge it). The flag checks run in milliseconds, before any data is read."""

from __future__ import annotations

import dataclasses
import functools
import importlib.util
import json
import os
import re
from pathlib import Path

import numpy as np
import pytest

EXPERIMENTS = Path(__file__).resolve().parent.parent / "experiments"


def load_script(name: str):
    spec = importlib.util.spec_from_file_location(f"experiment_{name}", EXPERIMENTS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@functools.cache
def script(name: str):
    """One loaded module per script, shared by the tests (a test that patches one restores it)."""
    return load_script(name)


def assert_speeds(speed: dict, *methods: str) -> None:
    """Same output with and without the cache, and positive speeds (no timing threshold)."""
    for m in methods:
        assert speed[f"{m}_same_output_with_and_without_cache"] is True
        assert speed[f"{m}_cached_sentences_per_second"] > 0 and speed[f"{m}_uncached_sentences_per_second"] > 0
        assert speed[f"{m}_cache_speedup"] == pytest.approx(
            speed[f"{m}_cached_sentences_per_second"] / speed[f"{m}_uncached_sentences_per_second"]
        )


def data_dir_with(corpus: str) -> str:
    d = os.environ.get("JDLFS_DATA_DIR")
    if not d or not (Path(d) / corpus).is_dir():
        pytest.skip(f"needs {corpus}: set JDLFS_DATA_DIR to a directory containing {corpus}/")
    return d


def run_quick(name: str, out: Path, *extra: str) -> dict:
    results = script(name).main(["--quick", "--out", str(out), "--no-progress", *extra])
    on_disk = json.loads((out / "results.json").read_text())
    assert on_disk["experiment"] == name and on_disk["quick"] is True and on_disk["status"] == "finished"
    assert set(results) == set(on_disk)
    return on_disk


def assert_figures(out: Path, *names: str) -> None:
    for n in names:
        assert (out / n).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", n


@pytest.fixture(scope="module")
def translate_run(tmp_path_factory):
    data = data_dir_with("multi30k")
    out = tmp_path_factory.mktemp("translate")
    return out, run_quick("translate", out, "--data-dir", data), data


def test_translate_quick(translate_run):
    out, r, _ = translate_run
    assert set(r["bleu"]) == {f"{s}_{m}" for s in ("test_2016_flickr", "test_2017_flickr") for m in ("greedy", "beam3")}
    assert all(0.0 <= v <= 100.0 for v in r["bleu"].values())
    assert r["length_penalty"] in [float(k) for k in r["val_bleu_beam_by_length_penalty"]]
    assert_speeds(r["cache_vs_no_cache"], "greedy", "beam3")
    assert r["cache_vs_no_cache"]["sentences"] == 48
    assert r["train_target_tokens_per_second"] > 0 and r["epochs"] == len(r["history"]) == 2
    assert r["history"][-1]["train_loss"] < r["history"][0]["train_loss"]
    assert r["packing"]["fill"] > 0.5  # packed rows are mostly tokens, not padding
    for s in ("test_2016_flickr", "test_2017_flickr"):
        assert len((out / "translations" / f"{s}.greedy.en").read_text().splitlines()) == 48
    assert (out / "spm.model").is_file() and (out / "checkpoint" / "model" / "manifest.json").is_file()
    assert_figures(out, "curves.png", "length_penalty.png")


def test_translate_rerun_resumes_from_the_checkpoint(translate_run):
    out, first, data = translate_run
    again = run_quick("translate", out, "--data-dir", data)
    assert again["resumed"] is True
    assert again["history"] == first["history"]  # nothing retrained: the checkpoint holds both epochs
    assert again["bleu"] == first["bleu"]


def test_attention_maps_quick(translate_run, tmp_path):
    run, _, data = translate_run
    r = run_quick("attention_maps", tmp_path, "--run", str(run), "--data-dir", data, "--layer", "0")
    assert r["layer"] == 1 and r["decoder_layer"] == 1  # the quick model has one layer each
    assert len(r["sentences"]) == 3 and all(s["pieces"][-1] == "</s>" for s in r["sentences"])
    stats = r["encoder_head_statistics"]["layer1"]
    assert len(stats["entropy_bits"]) == 2  # the quick model has 2 heads
    assert all(0 <= e <= 4 for e in stats["entropy_bits"])  # <= log2(14 pieces + EOS) bits
    assert_figures(tmp_path, "encoder_heads.png", "cross_attention.png")


def test_attention_maps_refuses_a_folder_without_a_model(tmp_path, capsys):
    module = script("attention_maps")
    with pytest.raises(SystemExit) as exc:
        module.runs.run_main(module.main, ["--run", str(tmp_path), "--out", str(tmp_path / "maps")])
    assert exc.value.code == 2
    assert "no model.json" in capsys.readouterr().err


def test_headlines_quick(tmp_path):
    data = data_dir_with("reuters21578")
    r = run_quick("headlines", tmp_path, "--data-dir", data)
    assert set(r["rouge"]) == {"lead", "greedy", "beam3"}
    for scores in r["rouge"].values():
        assert set(scores) == {"rouge1", "rouge2", "rougeL"} and all(0 <= v <= 1 for v in scores.values())
    assert r["rouge"]["lead"]["rougeL"] > 0.1  # the first words of a story do overlap its headline
    assert str(r["lead_n"]) in r["lead_val_rougeL_by_n"]
    assert r["lead_val_rougeL_by_n"][str(r["lead_n"])] == max(r["lead_val_rougeL_by_n"].values())
    assert len(r["good_examples"]) == len(r["bad_examples"]) == 5
    assert r["good_examples"][0]["rougeL_beam"] >= r["bad_examples"][0]["rougeL_beam"]
    assert r["documents"]["test"] == 48
    assert r["cache_vs_no_cache"]["sentences"] == 16
    assert_speeds(r["cache_vs_no_cache"], "greedy", "beam3")
    assert_figures(tmp_path, "curves.png", "lead_baseline.png")


@pytest.mark.parametrize("name", ["translate", "headlines", "attention_maps"])
def test_help(name, capsys):
    with pytest.raises(SystemExit) as exc:
        script(name).main(["--help"])
    assert exc.value.code == 0
    text = capsys.readouterr().out
    for flag in ("--seed", "--data-dir", "--out", "--quick", "--no-progress", "--devices"):
        assert flag in text
    blocks = re.split(r"\n  (?=-)", text[text.index("options:") :])[1:]
    for block in blocks:
        flat = " ".join(block.split())
        assert "(default: None)" not in flat and flat.count("default") <= 1, flat


# ---------------------------------------------------------------- flags are checked before anything runs
def usage_error(name: str, argv: list, capsys) -> str:
    """Run the script's ``run_main`` on ``argv``; it must exit with status 2 and one message (no traceback)."""
    module = script(name)
    with pytest.raises(SystemExit) as exc:
        module.runs.run_main(module.main, argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return err


BAD_TRAINING_FLAGS = [
    (["--length-penalties", "0.6,nan"], "--length-penalties must be finite numbers >= 0"),
    (["--length-penalties", "-1"], "--length-penalties must be finite numbers >= 0"),
    (["--length-penalties", "0.6,x"], "--length-penalties must be comma-separated numbers"),
    (["--heads", "3"], "--d-model / --heads: Config.d_model=256 must be divisible by num_heads=3"),
    (["--layers", "0"], "--layers: Config.num_layers must be >= 1"),
    (["--d-ff", "0"], "--d-ff: Config.d_ff must be >= 1"),
    (["--d-model", "0"], "--d-model"),
    (["--dropout", "1.0"], r"--dropout must be in \[0, 1\), got 1.0"),
    (["--dropout", "nan"], r"--dropout must be in \[0, 1\)"),
    (["--label-smoothing", "1"], r"--label-smoothing must be in \[0, 1\)"),
    (["--label-smoothing", "-0.1"], r"--label-smoothing must be in \[0, 1\)"),
    (["--lr", "0"], "--lr must be a finite number > 0"),
    (["--lr", "inf"], "--lr must be a finite number > 0"),
    (["--clip", "-1"], "--clip must be a finite number > 0"),
    (["--warmup-steps", "-1"], "--warmup-steps must be >= 0"),
    (["--vocab-size", "4"], "--vocab-size must be > 4"),
    (["--epochs", "0"], "--epochs must be >= 1"),
    (["--quick", "--dropout", "1"], r"--dropout must be in \[0, 1\)"),  # --quick does not hide a bad flag
]
BAD_TRANSLATE_FLAGS = [
    (["--decode-buckets", "32,16"], "--decode-buckets must be strictly increasing source lengths >= 1"),
    (["--decode-buckets", "16,16"], "--decode-buckets must be strictly increasing"),
    (["--decode-buckets", "0,16"], "--decode-buckets must be strictly increasing source lengths >= 1"),
    (["--decode-buckets", "16,a"], "--decode-buckets must be comma-separated integers"),
    (["--row-len", "0"], "--row-len must be >= 1"),
]
BAD_HEADLINES_FLAGS = [
    (["--lead-words", "0,4"], "--lead-words must be word counts >= 1"),
    (["--lead-words", "4,x"], "--lead-words must be comma-separated integers"),
    (["--tgt-len", "2"], "--tgt-len >= 3"),
    (["--pack", "0"], "--pack must be >= 1"),
]


@pytest.mark.parametrize(
    "name, argv, message",
    [("translate", a, m) for a, m in BAD_TRAINING_FLAGS + BAD_TRANSLATE_FLAGS]
    + [("headlines", a, m) for a, m in BAD_TRAINING_FLAGS + BAD_HEADLINES_FLAGS],
)
def test_bad_flags_stop_before_the_run_starts(name, argv, message, tmp_path, capsys):
    out = tmp_path / "run"
    err = usage_error(name, [*argv, "--data-dir", str(tmp_path / "no-data"), "--out", str(out)], capsys)
    assert re.search(message, err), err
    assert not out.exists()  # refused before runs.start: no run folder, no data read


def fake_multi30k(args):
    """A tiny German-English corpus in the shape of translate.load_data (no data on disk needed)."""
    rng = np.random.default_rng(0)
    de = "der die das ein hund katze mann frau kind spielt laeuft im park auf".split()
    en = "the a dog cat man woman child plays runs in park on".split()

    def pairs(n):
        lengths = rng.integers(3, 7, n)
        return [" ".join(rng.choice(de, k)) for k in lengths], [" ".join(rng.choice(en, k)) for k in lengths]

    return {s: pairs(n) for s, n in (("train", 60), ("val", 8), ("test_2016_flickr", 8), ("test_2017_flickr", 8))}


def fake_reuters(args):
    """A tiny body/title corpus in the shape of headlines.load_pairs."""
    rng = np.random.default_rng(1)
    words = "oil prices rose company said shares bank rates trade profit year net loss".split()

    def docs(n):
        return [" ".join(rng.choice(words, 30)) for _ in range(n)], [" ".join(rng.choice(words, 5)) for _ in range(n)]

    return {"train": docs(40), "val": docs(8), "test": docs(8)}


SMALL_MODEL = ["--d-model", "16", "--heads", "2", "--layers", "1", "--d-ff", "16", "--no-progress"]


@pytest.mark.parametrize(
    "name, argv, message",
    [
        ("translate", ["--row-len", "2"], "no training pair fits --row-len 2"),
        ("translate", ["--batch-size", "1000"], r"--batch-size 1000 is more than the \d+ packed training rows"),
        ("translate", ["--vocab-size", "5000"], "--vocab-size 5000: could not train the sentencepiece model"),
        ("headlines", ["--batch-size", "1000"], r"--batch-size 1000 is more than the \d+ packed training rows"),
        ("headlines", ["--vocab-size", "5000"], "--vocab-size 5000: could not train the sentencepiece model"),
    ],
)
def test_flags_that_do_not_fit_the_data_stop_before_training(name, argv, message, tmp_path, capsys, monkeypatch):
    module = script(name)
    loader = "load_data" if name == "translate" else "load_pairs"
    monkeypatch.setattr(module, loader, fake_multi30k if name == "translate" else fake_reuters)
    vocab = [] if "--vocab-size" in argv else ["--vocab-size", "30"]
    err = usage_error(name, [*SMALL_MODEL, *vocab, *argv, "--out", str(tmp_path / "run")], capsys)
    assert re.search(message, err), err
    assert not (tmp_path / "run" / "checkpoint").exists()  # nothing trained


# ---------------------------------------------------------------- attention_maps: which run folders it takes
def model_run(tmp_path, *, config=None, text=None, **meta) -> Path:
    """A run folder with a model.json as translate.save_model writes it (no checkpoint: the checks come first)."""
    transformer = script("translate").transformer
    run = tmp_path / "model-run"
    run.mkdir()
    cfg = config or dataclasses.asdict(transformer.Config(src_vocab=50, tgt_vocab=50, d_model=16, num_heads=2))
    doc = {"config": cfg, "checkpoint": "checkpoint/model", "tokenizer": "spm.model", "source": "de", "target": "en"}
    (run / "model.json").write_text(text if text is not None else json.dumps({**doc, **meta}))
    (run / "spm.model").write_bytes(b"")
    return run


@pytest.mark.parametrize(
    "make, argv, message",
    [
        (dict(text='{"config": {"src_vocab": 50, "tgt_'), [], r"model.json is unreadable or not valid JSON"),
        (dict(text="[1, 2]"), [], r"model.json is not a model.json of experiments/translate.py"),
        (dict(text=""), [], r"model.json is unreadable or not valid JSON"),
        (dict(config={"src_vocab": 50, "tgt_vocab": 50, "d_modle": 16}), [], r"unknown transformer.Config keys"),
        (dict(config={"src_vocab": 50, "tgt_vocab": 50, "d_model": 0}), [], r"invalid model config: Config.d_model"),
        (dict(config={"src_vocab": 50, "tgt_vocab": "many"}), [], r"invalid model config: .*tgt_vocab must be an int"),
        (dict(checkpoint="../../elsewhere"), [], r"'checkpoint' = '../../elsewhere' points outside the run folder"),
        (dict(source="body", target="title"), [], r"'body' -> 'title' model .*not a German -> English"),
        (dict(), ["--layer", "3"], r"--layer 3: the model has 3 encoder layers"),
        (dict(), ["--layer", "-4"], r"--layer -4: the model has 3 encoder layers"),
        (dict(), ["--decoder-layer", "5"], r"--decoder-layer 5: the model has 3 decoder layers"),
        (dict(), ["--heads", "0"], r"--heads must be >= 1"),
        (dict(), ["--sentences", "0"], r"--sentences must be >= 1"),
        (dict(), ["--min-pieces", "9", "--max-pieces", "8"], r"--max-pieces 8 is below --min-pieces 9"),
    ],
)
def test_attention_maps_refuses_what_it_cannot_draw(make, argv, message, tmp_path, capsys):
    run = model_run(tmp_path, **make)
    err = usage_error("attention_maps", ["--run", str(run), "--out", str(tmp_path / "maps"), *argv], capsys)
    assert re.search(message, err), err
    if "text" in make or "config" in make:
        assert str(run / "model.json") in err  # the message names the file
    assert not (tmp_path / "maps").exists()


def test_attention_maps_layer_must_exist_in_both_stacks(tmp_path, capsys):
    transformer = script("translate").transformer
    cfg = transformer.Config(src_vocab=50, tgt_vocab=50, d_model=16, num_heads=2, num_layers=3, num_decoder_layers=1)
    run = model_run(tmp_path, config=dataclasses.asdict(cfg))
    maps = ["--run", str(run), "--out", str(tmp_path / "maps")]
    err = usage_error("attention_maps", [*maps, "--layer", "2"], capsys)  # an encoder layer, not a decoder one
    assert "--layer 2: the model has 1 decoder layers; pass --decoder-layer" in err
    err = usage_error("attention_maps", [*maps, "--layer", "2", "--decoder-layer", "1"], capsys)
    assert "--decoder-layer 1: the model has 1 decoder layers" in err


def test_load_model_refuses_a_damaged_model_json(tmp_path):
    translate = script("translate")
    run = model_run(tmp_path, text='{"config": {"src_vocab": 5')  # truncated
    with pytest.raises(translate.runs.UsageError, match=re.escape(str(run / "model.json"))):
        translate.load_model(run)
    assert translate.runs.UsageError in translate.runs.USER_ERRORS  # exit status 2, no traceback
