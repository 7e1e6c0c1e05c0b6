"""scripts/bench.py: the --quick run covers every op and model (the MAE included) with real
timings and memory figures, the Flax twins are checked against our models (loss, gradient and
updated state; a wrong twin is refused), an entry whose variants compute different things is refused
before it is timed, the comparison with jax.nn.dot_product_attention is skipped off the GPU (and
checked with implementation="xla" here), --filter selects entries, and --readme / --from-json
regenerate the README's CPU and GPU sections (refusing a file without its markers, a JSON that is not
a result, or a result from the wrong backend, before measuring)."""

import importlib.util
import json
import math
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jdlfs.models import mae as mae_model

ROOT = Path(__file__).resolve().parents[1]


def _load_bench():
    spec = importlib.util.spec_from_file_location("jdlfs_bench", ROOT / "scripts" / "bench.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # flax's dataclass modules look their module up there
    spec.loader.exec_module(module)
    return module


bench = _load_bench()
needs_flax = pytest.mark.skipif(bench.nn is None, reason="flax (the optional `bench` extra) is not installed")


def _positive_times(row, variants):
    for v in variants:
        s = row[v]
        assert s["n"] >= 1, (row["name"], v)
        for k in ("median_ms", "q25_ms", "q75_ms", "min_ms", "max_ms"):
            assert math.isfinite(s[k]) and s[k] > 0, (row["name"], v, k, s[k])
        assert s["min_ms"] <= s["q25_ms"] <= s["median_ms"] <= s["q75_ms"] <= s["max_ms"]


def _check_result(result, ops, models):
    """A --quick result holds exactly these entries, each with real timings, memory figures and
    (with flax installed) a passed twin check."""
    assert [r["name"] for r in result["ops"]] == [e.name for e in ops]
    assert [r["name"] for r in result["models"]] == [e.name for e in models]
    assert result["quick"] and result["machine"]["jax"] == jax.__version__
    for r in result["ops"]:
        _positive_times(r, ("hand", "autodiff"))
        assert r["custom_vjp_calls"] >= 1
        assert r["autodiff_over_hand"]["median"] > 0
        # the two programs compute the same forward and gradient (the benchmark compares like with like)
        assert r["grad_rel_diff"] < 1e-4, r["name"]
        for v in ("hand", "autodiff"):
            assert r["memory"][v]["argument"] > 0
    flax = bench.nn is not None
    for r in result["models"]:
        variants = ("hand", "autodiff", "flax") if flax else ("hand", "autodiff")
        _positive_times(r, variants)
        assert set(r["memory"]) == set(variants)
        for v in variants:
            assert r["memory"][v]["argument"] > 0 and r["memory"][v]["temp"] >= 0
            assert math.isfinite(r["first_loss"][v])
        # hand and stripped start from the same parameters: same first loss
        assert r["first_loss"]["autodiff"] == pytest.approx(r["first_loss"]["hand"], rel=1e-5)
        if flax:
            assert r["flax_over_hand"]["median"] > 0
            check = r["twin_check"]
            assert check["train_loss"]["flax"] == pytest.approx(check["train_loss"]["hand"], rel=1e-4)
            assert check["grad_rel_diff"] < 1e-3


def _check_library_skipped(result):
    """Off the GPU, the cuDNN rows are listed with the reason and nothing measured."""
    assert [r["name"] for r in result["library"]] == [e.name for e in bench.LIBRARY]
    for r in result["library"]:
        assert set(r) == {"name", "library_name", "skipped"}
        assert "needs a GPU" in r["skipped"] and repr(jax.default_backend()) in r["skipped"]


def _run_quick(tmp_path, *args):
    path, md = tmp_path / "bench.json", tmp_path / "bench.md"
    bench.main(["--quick", "--json", str(path), "--markdown", str(md), *args])
    return json.loads(path.read_text()), md.read_text()


BEGIN, END = "<!-- bench:begin -->", "<!-- bench:end -->"
HEAD = "# Project\n\nText before, kept byte for byte: <!-- a comment --> `code`\n\n## Benchmark\n\n"
TAIL = "\n\n## After\n\nText after, kept too.\n"


def _readme(path, middle="\nstale table | from | last time\n"):
    path.write_text(HEAD + BEGIN + middle + END + TAIL, encoding="utf-8")
    return path


def _section(path):
    """(generated note, Markdown) between the markers; asserts the text around them is untouched."""
    text = path.read_text(encoding="utf-8")
    assert text.startswith(HEAD + BEGIN + "\n") and text.endswith("\n" + END + TAIL)
    note, _, body = text[len(HEAD + BEGIN + "\n") : -len("\n" + END + TAIL)].partition("\n\n")
    return note, body


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    """One --quick run of an op with a non-differentiated argument and a model with its Flax twin,
    writing JSON, Markdown and a README section."""
    tmp = tmp_path_factory.mktemp("quick")
    readme = _readme(tmp / "README.md")
    result, md = _run_quick(tmp, "--filter", "softmax_cross_entropy 1024,MNIST MLP", "--readme", str(readme))
    return result, md, tmp / "bench.json", readme


def test_quick_run_of_an_op_and_a_model(quick_run):
    """The default suite's check of the whole path (seconds): real timings, memory, the twin check, JSON
    and Markdown."""
    result, md, _, _ = quick_run
    _check_result(result, [e for e in bench.OPS if e.name.startswith("softmax_cross_entropy 1024")], bench.MODELS[:1])
    for title in ("Per op", "Per model", "memory_analysis", "| MNIST MLP 784-128-10 |", result["machine"]["cpu"]):
        assert title in md


def test_readme_section_is_replaced_by_the_run(quick_run):
    """--readme replaces the stale text between the markers with the machine line and the three tables of
    the run (the --markdown text), saying where it came from; the rest of the file is untouched."""
    result, md, path, readme = quick_run
    note, body = _section(readme)
    assert body == md == bench.markdown(result)
    assert "stale table" not in readme.read_text()
    assert note.startswith("<!-- generated by scripts/bench.py from ") and str(path) in note
    for table in ("Per op", "Per model", "Memory of the compiled train step"):
        assert f"**{table}" in body
    assert body.startswith(f"Measured on {result['machine']['backend']} backend") and "QUICK sizes" in body


def test_readme_is_regenerated_from_json_without_measuring(quick_run, tmp_path, monkeypatch):
    """--from-json --readme renders the committed JSON (the same tables as the run that wrote it),
    measures nothing, and a second regeneration changes nothing."""
    result, md, path, _ = quick_run
    monkeypatch.setattr(bench, "run", lambda **kw: pytest.fail("--from-json must not measure"))
    readme = _readme(tmp_path / "README.md", middle="\n")
    bench.main(["--from-json", str(path), "--readme", str(readme)])
    note, body = _section(readme)
    assert body == md and f"from {path};" in note
    first = readme.read_bytes()
    bench.main(["--from-json", str(path), "--readme", str(readme)])
    assert readme.read_bytes() == first


@pytest.mark.parametrize(
    "text, found",
    [
        ("# no markers\n", "found 0 and 0"),
        (f"{BEGIN}\nonly the begin\n", "found 1 and 0"),
        (f"{END}\nreversed\n{BEGIN}\n", "end line first"),
        (f"{BEGIN}\n{END}\n{BEGIN}\n{END}\n", "found 2 and 2"),
    ],
)
def test_readme_without_the_markers_is_refused_before_measuring(tmp_path, monkeypatch, capsys, text, found):
    """A file without exactly one begin line before one end line is refused, naming the file and the markers,
    before any measurement (a full run must not end unable to write), and is left as it was."""
    monkeypatch.setattr(bench, "run", lambda **kw: pytest.fail("measured before checking --readme"))
    readme = tmp_path / "README.md"
    readme.write_text(text)
    with pytest.raises(SystemExit):
        bench.main(["--quick", "--filter", "relu", "--readme", str(readme)])
    err = capsys.readouterr().err
    assert str(readme) in err and BEGIN in err and END in err and found in err
    assert readme.read_text() == text


def test_missing_readme_is_refused_before_measuring(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(bench, "run", lambda **kw: pytest.fail("measured before checking --readme"))
    missing = tmp_path / "nope" / "README.md"
    with pytest.raises(SystemExit):
        bench.main(["--quick", "--readme", str(missing)])
    assert f"--readme {missing}: No such file" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("argv", "says"),
    [
        (["--repeats", "0"], "--repeats must be >= 1"),
        (["--repeats", "-3"], "--repeats must be >= 1"),
        (["--budget", "-1"], "--budget must be a finite number"),
        (["--budget", "inf"], "--budget must be a finite number"),
        (["--budget", "nan"], "--budget must be a finite number"),
    ],
)
def test_timing_flags_out_of_range_are_refused_before_measuring(argv, says, monkeypatch, capsys):
    """Zero rounds would leave nothing to take a median of (an IndexError after the compilations)."""
    monkeypatch.setattr(bench, "run", lambda **kw: pytest.fail("measured with an impossible timing"))
    with pytest.raises(SystemExit) as exit_info:
        bench.main(["--quick", "--filter", "relu", *argv])
    assert exit_info.value.code == 2
    assert says in capsys.readouterr().err


@pytest.mark.parametrize("flag", ["--json", "--markdown"])
def test_unwritable_output_is_refused_before_measuring(tmp_path, monkeypatch, capsys, flag):
    monkeypatch.setattr(bench, "run", lambda **kw: pytest.fail(f"measured before checking {flag}"))
    missing = tmp_path / "nope" / "out.json"
    with pytest.raises(SystemExit) as exit_info:
        bench.main(["--quick", flag, str(missing)])
    assert exit_info.value.code == 2 and f"{flag} {missing}: the directory" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        bench.main(["--quick", flag, str(tmp_path)])  # a directory, not a file
    assert "cannot write a file there" in capsys.readouterr().err


# ---------------------------------------------------------------- our attention vs jax.nn.dot_product_attention
@pytest.fixture(scope="module")
def xla_library_run(tmp_path_factory):
    """The causal comparison measured with implementation="xla" (runs on the CPU): the whole path the
    GPU run takes with "cudnn" -- layouts, the equality check, interleaved timing, the table."""
    tmp = tmp_path_factory.mktemp("library")
    path, md = tmp / "lib.json", tmp / "lib.md"
    bench.main(["--quick", "--filter", "attention causal vs", "--library-impl", "xla", "--json", str(path)])
    bench.main(["--from-json", str(path), "--markdown", str(md)])
    return json.loads(path.read_text()), md.read_text(), path


@pytest.mark.skipif(jax.default_backend() == "gpu", reason="checks the path taken without a GPU")
def test_cudnn_comparison_is_skipped_without_a_gpu(tmp_path, monkeypatch):
    """Off the GPU the two rows are listed with the reason, nothing is built or timed, and the tables say
    which comparisons were not measured and why."""
    monkeypatch.setattr(bench, "interleaved", lambda *a: pytest.fail("timed a skipped comparison"))
    result, md = _run_quick(tmp_path, "--filter", "vs jax.nn")
    assert result["ops"] == [] and result["models"] == []
    _check_library_skipped(result)
    for e in bench.LIBRARY:
        assert f"Not measured: {e.name} (vs jax.nn.dot_product_attention (implementation='cudnn')): needs a GPU" in md
    assert "Per op vs a library kernel" not in md
    assert "not measured: attention vs jax.nn" in bench.text_tables(result)


def test_library_comparison_is_checked_and_timed(xla_library_run):
    """Our bf16 attention and jax.nn's (xla here, cuDNN on a GPU) agree within bfloat16's tolerance on the
    outputs and all three gradients -- brought to one layout -- and are timed in the same rounds."""
    result, md, _ = xla_library_run
    (row,) = result["library"]
    assert row["name"] == "attention causal vs jax.nn" and row["dtype"] == "bfloat16"
    assert row["library_name"] == "jax.nn.dot_product_attention (implementation='xla')"
    assert 0 < row["rel_diff"] < bench.rel_tolerance(jnp.bfloat16)  # > 0: two bf16 roundings, really compared
    _positive_times(row, ("hand", "library"))
    assert row["hand"]["n"] == row["library"]["n"]  # interleaved rounds
    assert row["library_over_hand"]["median"] > 0
    assert row["memory"]["hand"]["argument"] > 0 and row["memory"]["library"]["argument"] > 0
    assert "**Per op vs a library kernel" in md
    assert "| attention causal vs jax.nn | B=2 H=2 T=16 d=8 bf16 causal |" in md


def test_layout_conversion_is_jax_nns_layout():
    """Ours (B, H, T, d) -> (B, T, H, d): merging the last two axes gives merge_heads' (B, T, H*d), and the
    conversion is its own inverse (it also brings jax.nn's outputs and gradients back for the check)."""
    x = jnp.asarray(np.random.default_rng(0).standard_normal((2, 3, 5, 4)), jnp.float32)
    swapped = bench._swap_heads_and_time(x)
    assert swapped.shape == (2, 5, 3, 4)
    np.testing.assert_array_equal(swapped.reshape(2, 5, 12), bench.F.merge_heads(x))
    np.testing.assert_array_equal(bench._swap_heads_and_time(swapped), x)


def test_library_comparison_refuses_a_different_kernel(monkeypatch):
    """A library call computing something else (here: no causal mask while ours has one) is refused before
    it is timed, with an error naming the entry."""
    monkeypatch.setattr(bench, "interleaved", lambda *a: pytest.fail("timed before checking"))
    causal = next(e for e in bench.LIBRARY if e.name == "attention causal vs jax.nn")
    plain = next(e for e in bench.LIBRARY if e.name == "attention vs jax.nn")

    def build(quick, impl):  # our causal op against jax.nn without the mask
        return causal.build(quick, impl)._replace(library=plain.build(quick, impl).library)

    with pytest.raises(bench.CheckFailed, match="attention causal vs jax.nn: our op's and jax.nn"):
        bench.bench_library(causal._replace(build=build), True, bench.Timing(), "xla")


# ---------------------------------------------------------------- the README's CPU and GPU sections
def _as_gpu_result(path, tmp_path):
    """A copy of a CPU result claiming to come from a GPU: what a GPU run writes, for testing the GPU
    section without one (its numbers are the CPU's)."""
    result = json.loads(path.read_text())
    result["machine"] |= {"backend": "gpu", "device": "NVIDIA H100 80GB HBM3"}
    gpu = tmp_path / "bench_gpu.json"
    gpu.write_text(json.dumps(result))
    return gpu, result


def test_gpu_section_has_its_own_markers(xla_library_run, tmp_path):
    """--from-json of a GPU result --section gpu writes between <!-- gpu:begin/end -->, with the comparison to
    jax.nn's attention as a table of its own, leaving the CPU section alone."""
    gpu, result = _as_gpu_result(xla_library_run[2], tmp_path)
    cpu = f"{BEGIN}\nthe CPU tables\n{END}\n"
    readme = tmp_path / "README.md"
    readme.write_text(f"{cpu}\n<!-- gpu:begin -->\n<!-- gpu:end -->\n")
    bench.main(["--from-json", str(gpu), "--readme", str(readme), "--section", "gpu"])
    text = readme.read_text()
    md = bench.markdown(result)
    assert text.startswith(cpu) and text.endswith(md + "\n<!-- gpu:end -->\n")
    assert md.startswith("Measured on gpu backend (NVIDIA H100 80GB HBM3;")
    assert "**Per op vs a library kernel" in md and "| attention causal vs jax.nn |" in md


def test_results_go_to_the_section_of_their_backend(quick_run, xla_library_run, tmp_path, monkeypatch, capsys):
    """A CPU result is refused for the gpu section and a GPU result for the (CPU) bench section, naming the
    reason, and the README is left as it was; a measurement is refused before it starts."""
    readme = tmp_path / "README.md"
    readme.write_text(f"{BEGIN}\n{END}\n<!-- gpu:begin -->\n<!-- gpu:end -->\n")
    before = readme.read_text()
    gpu, _ = _as_gpu_result(xla_library_run[2], tmp_path)
    for path, section, says in ((quick_run[2], "gpu", "--section gpu takes"), (gpu, "bench", "the CPU tables")):
        with pytest.raises(SystemExit):
            bench.main(["--from-json", str(path), "--readme", str(readme), "--section", section])
        assert says in capsys.readouterr().err
        assert readme.read_text() == before
    if jax.default_backend() != "gpu":
        monkeypatch.setattr(bench, "run", lambda **kw: pytest.fail("measured before checking the section"))
        with pytest.raises(SystemExit):
            bench.main(["--quick", "--filter", "relu", "--readme", str(readme), "--section", "gpu"])
        assert "--section gpu takes a result measured on the gpu backend" in capsys.readouterr().err


@pytest.mark.parametrize(
    "content, says",
    [
        ("{not json", "not a JSON file"),
        ('{"ops": []}', "needs the keys"),
        ('{"machine": {}, "ops": [{}], "models": []}', "incomplete"),
    ],
)
def test_from_json_refuses_a_file_that_is_not_a_result(tmp_path, capsys, content, says):
    path = tmp_path / "bench.json"
    path.write_text(content)
    readme = _readme(tmp_path / "README.md")
    before = readme.read_text()
    with pytest.raises(SystemExit):
        bench.main(["--from-json", str(path), "--readme", str(readme)])
    err = capsys.readouterr().err
    assert str(path) in err and says in err
    assert readme.read_text() == before


def test_from_json_refuses_measurement_flags(quick_run, capsys):
    with pytest.raises(SystemExit):
        bench.main(["--from-json", str(quick_run[2]), "--quick", "--filter", "relu", "--library-impl", "xla"])
    assert "measures nothing: drop --quick, --filter, --library-impl" in capsys.readouterr().err


@pytest.mark.slow
def test_quick_run_covers_every_op_and_model(tmp_path):
    """Every op and model entry, --quick: ~100 s on the shared 2-core CPU (about 40 s of CPU
    time, mostly XLA compiling ~70 programs), hence slow; run before changing an entry."""
    result, md = _run_quick(tmp_path)
    _check_result(result, bench.OPS, bench.MODELS)
    for e in bench.OPS + bench.MODELS:
        assert f"| {e.name} |" in md
    if jax.default_backend() != "gpu":
        _check_library_skipped(result)


def test_filter_selects_entries(tmp_path):
    path = tmp_path / "f.json"
    bench.main(["--quick", "--filter", "RELU, softmax_cross_entropy 1024", "--json", str(path)])
    got = json.loads(path.read_text())
    assert [r["name"] for r in got["ops"]] == ["softmax_cross_entropy 1024x10", "relu"]  # registry order
    assert got["models"] == []
    with pytest.raises(SystemExit):
        bench.main(["--quick", "--filter", "no such entry"])


@pytest.fixture(scope="module")
def mlp():
    entry = next(e for e in bench.MODELS if e.name.startswith("MNIST MLP"))
    return entry.setup(True), entry


@needs_flax
def test_twin_check_passes_the_real_twin(mlp):
    setup, entry = mlp
    found = bench.check_twin(setup, entry.twin(setup), quick=True)
    assert found["eval_loss"]["flax"] == pytest.approx(found["eval_loss"]["hand"], rel=1e-5)


@needs_flax
def test_twin_check_refuses_a_different_activation(mlp):
    setup, entry = mlp

    class TanhMLP(bench.nn.Module):  # same parameters, tanh instead of relu
        @bench.nn.compact
        def __call__(self, x, train=False, dropout=False):
            return bench.nn.Dense(10, name="fc2")(jnp.tanh(bench.nn.Dense(128, name="fc1")(x)))

    wrong = bench._classic_twin(TanhMLP)(setup)
    with pytest.raises(bench.TwinMismatch, match="loss"):
        bench.check_twin(setup, wrong, quick=True)


@needs_flax
def test_twin_check_refuses_different_parameters(mlp):
    setup, entry = mlp
    twin = entry.twin(setup)
    # one output bias off by 0.01: the loss moves by less than it would for a wrong model
    params = jax.tree_util.tree_map_with_path(
        lambda p, a: a.at[3].add(0.01) if jax.tree_util.keystr(p) == "['fc2']['bias']" else a, twin.params
    )
    with pytest.raises(bench.TwinMismatch):
        bench.check_twin(setup, twin._replace(params=params), quick=True)


@pytest.fixture(scope="module")
def cifar_bn():
    """Our CIFAR CNN + BN and its Flax twin, one training-mode forward and backward each (--quick sizes)."""
    entry = next(e for e in bench.MODELS if e.name == "CIFAR CNN + BN")
    setup = entry.setup(True)
    twin = entry.twin(setup)
    return setup, twin, bench.twin_outputs(setup, twin, quick=True)


@needs_flax
def test_cifar_bn_twin_updates_the_running_statistics_as_ours(cifar_bn):
    """The check compares the updated batch-norm running statistics too: Flax's running variance (biased
    batch variance) is ours (unbiased, m / (m - 1)) with the correction applied, to float32 rounding."""
    setup, twin, (ours, theirs) = cifar_bn
    found = bench.compare_twin(setup, twin, ours, theirs)
    assert found["state_rel_diff"] < 1e-5
    for layer in ("bn1", "bn2", "bn3"):  # the state really moved (so the comparison is not of the initial state)
        assert not np.allclose(ours[3][layer]["var"], setup.state[layer]["var"])
        assert not np.allclose(ours[3][layer]["mean"], setup.state[layer]["mean"])


@needs_flax
def test_cifar_bn_twin_without_the_variance_correction_is_refused(cifar_bn):
    """Compared as they are, the two running variances differ by (1 - momentum) var / m (4e-4 relative for the
    third layer's m = 4 x 8 x 8): the check sees the convention, so the correction is needed and right."""
    setup, twin, (ours, theirs) = cifar_bn
    with pytest.raises(bench.TwinMismatch, match="updated state"):
        bench.compare_twin(setup, twin._replace(convert_state=bench._renamed_state), ours, theirs)


# ---------------------------------------------------------------- entries that do not compute the same thing
def _never_timed(monkeypatch):
    monkeypatch.setattr(bench, "interleaved", lambda *a: pytest.fail("timed before checking"))


def test_op_with_a_wrong_rule_is_refused_before_timing(monkeypatch):
    """bench_op refuses an op whose hand backward is 1% off autodiff's, naming it, before timing it."""
    _never_timed(monkeypatch)

    @jax.custom_vjp
    def square(x):
        return x * x

    square.defvjp(lambda x: (x * x, x), lambda x, g: (2.02 * g * x,))
    entry = bench.OpEntry("square 1% off", lambda q: bench.OpCase("8", square, (jnp.linspace(-1.0, 1.0, 8),)))
    with pytest.raises(bench.CheckFailed, match=r"square 1% off: the hand rule's and autodiff's .* differ by 0\.00"):
        bench.bench_op(entry, True, bench.Timing())


def test_op_tolerance_is_float32_rounding():
    """The op check's float32 tolerance lies between rounding (the measured 5.5e-7) and a wrong rule (1e-2)."""
    assert 5.5e-7 * 100 < bench.rel_tolerance(jnp.float32) < 1e-2
    assert bench.rel_tolerance(jnp.float32) < bench.rel_tolerance(jnp.bfloat16) < 0.1


def _toy_model(forward_factor):
    """A model whose loss calls a hand rule; its forward under differentiation (``fwd``) is
    ``forward_factor`` times the primal that the stripped variant runs."""

    @jax.custom_vjp
    def sum_sq(z):
        return jnp.sum(z * z)

    sum_sq.defvjp(lambda z: (forward_factor * jnp.sum(z * z), z), lambda z, g: (2 * g * z,))

    def setup(quick):
        x = jnp.asarray(np.random.default_rng(0).standard_normal((4, 3)), jnp.float32)
        params = {"w": jnp.asarray(np.eye(3, 2), jnp.float32)}

        def loss(params, state, batch, key, train, dropout):
            return sum_sq(batch @ params["w"]), state

        return bench.Setup("4x3", params, {}, x, loss, optax.sgd(0.1))

    return bench.ModelEntry(f"toy x{forward_factor}", setup)


def test_model_with_differing_first_losses_is_refused(monkeypatch):
    """bench_model refuses a model whose hand and autodiff first losses differ (here a forward rule 1% off the
    primal), naming it, before timing; the same model with a faithful forward passes."""
    assert bench.bench_model(_toy_model(1.0), True, bench.Timing(warmup=0, repeats=1, budget=0.0))["first_loss"]
    _never_timed(monkeypatch)
    with pytest.raises(bench.CheckFailed, match="toy x1.01: the first train-step losses of hand rules and autodiff"):
        bench.bench_model(_toy_model(1.01), True, bench.Timing())


def test_model_whose_autodiff_variant_keeps_a_rule_is_refused(monkeypatch, mlp):
    """If stripping left a custom rule in the autodiff variant, the benchmark would time hand rules against
    hand rules: refused, naming the model and the rules found, before compiling or timing anything."""
    monkeypatch.setattr(bench, "strip_custom_vjp", lambda fn: fn)  # a strip that strips nothing
    monkeypatch.setattr(bench, "_compile", lambda *a, **k: pytest.fail("compiled before checking"))
    _never_timed(monkeypatch)
    entry = next(e for e in bench.MODELS if e.name.startswith("MNIST MLP"))
    found_n_and_n = r"MNIST MLP 784-128-10: expected .* none once stripped, found ([1-9]\d*) and \1$"
    with pytest.raises(bench.CheckFailed, match=found_n_and_n):
        bench.bench_model(entry, True, bench.Timing(), with_flax=False)


@pytest.fixture(scope="module")
def mae():
    entry = next(e for e in bench.MODELS if e.name == "MAE")
    setup = entry.setup(True)
    return setup, entry.twin(setup) if bench.nn is not None else None


def test_mae_entry_is_the_experiments_pretraining_step():
    """The full-size MAE entry is the model and batch size experiments/mae_cifar.py trains by default (read
    from the script's own argument defaults), and its parameters are mae.init's tree."""
    spec = importlib.util.spec_from_file_location("bench_test_mae_cifar", ROOT / "experiments" / "mae_cifar.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    seen = {}

    class Stop(Exception):
        pass

    def capture(args):  # main's defaults, stopped before it loads data or starts a run
        seen.update(config=build(args), batch=args.batch_size)
        raise Stop

    build, script.build_config = script.build_config, capture
    with pytest.raises(Stop):
        script.main([])
    setup = next(e for e in bench.MODELS if e.name == "MAE").setup(False)
    assert setup.config == seen["config"]
    assert setup.batch.shape == (seen["batch"], *setup.config.image_shape)
    assert jax.tree.structure(setup.params) == jax.tree.structure(
        jax.eval_shape(lambda k: mae_model.init(k, setup.config), jax.random.key(0))
    )


@needs_flax
def test_mae_twin_gives_our_loss_and_gradient(mae):
    """The linen MAE, from our parameters and the same key (its own argsort masks), matches mae.loss."""
    setup, twin = mae
    found = bench.check_twin(setup, twin, quick=True)
    assert found["train_loss"]["flax"] == pytest.approx(found["train_loss"]["hand"], rel=1e-5)
    assert found["grad_rel_diff"] < 1e-5


@needs_flax
def test_mae_twin_check_refuses_other_masks(mae):
    """A twin hiding other patches (masks from another key) computes a different loss and is refused:
    the check compares the same masked problem, not just the same architecture."""
    setup, twin = mae
    moved = lambda p, s, x, key, train, dropout: twin.loss(p, s, x, jax.random.fold_in(key, 1), train, dropout)
    with pytest.raises(bench.TwinMismatch, match="loss"):
        bench.check_twin(setup, twin._replace(loss=moved), quick=True)


# ---------------------------------------------------------------- rules changed after measuring them
def _eqns(jaxpr):
    jaxpr = getattr(jaxpr, "jaxpr", jaxpr)
    for e in jaxpr.eqns:
        yield e
        for v in e.params.values():
            for x in v if isinstance(v, (tuple, list)) else (v,):
                if hasattr(x, "eqns") or hasattr(getattr(x, "jaxpr", None), "eqns"):
                    yield from _eqns(x)


def _count(fn, args, primitive, shape):
    """Equations of ``primitive`` touching an array of ``shape`` in the jaxpr of ``fn(*args)``."""
    return sum(
        1
        for e in _eqns(jax.make_jaxpr(fn)(*args))
        if e.primitive.name == primitive
        and any(getattr(v.aval, "shape", None) == shape for v in (*e.invars, *e.outvars))
    )


def test_batch_norm_backward_reuses_the_parameter_sums():
    """dL/dx reuses dL/dgamma and dL/dbeta: two reductions over x-sized arrays in the backward
    (plus the mean and variance of the forward), not four (the measured 0.73x loss to autodiff)."""
    x, gamma, beta = jnp.ones((4, 3, 3, 6)), jnp.ones(6), jnp.zeros(6)
    fwd_bwd = lambda x, g, b, ct: jax.vjp(lambda *a: bench.F.batch_norm(*a)[0], x, g, b)[1](ct)
    assert _count(fwd_bwd, (x, gamma, beta, x), "reduce_sum", x.shape) == 4


def test_cross_entropy_forms_no_one_hot():
    """Forward and backward of the cross-entropy touch the logits' N x K shape with one row sum
    (the normaliser) and no one-hot comparison (the label term is a gather and a scatter)."""
    z, y = jnp.ones((8, 5)), jnp.arange(8) % 5
    for smoothing in (0.0, 0.1):
        grad = lambda z, s=smoothing: jax.value_and_grad(
            lambda z: bench.F.softmax_cross_entropy(z, y, label_smoothing=s)
        )(z)
        assert _count(grad, (z,), "eq", z.shape) == 0
        assert _count(grad, (z,), "reduce_sum", z.shape) == (1 if smoothing == 0 else 2)


def _recurrent_fwd_bwd_eqns(cell):
    """``(D, H, gates, equations)`` of the jaxpr of one rnn/lstm forward + backward (B=2, T=3, D=5, H=4)."""
    b, t, d, h = 2, 3, 5, 4
    g = 4 if cell == "lstm" else 1
    x, h0 = jnp.ones((b, t, d)), jnp.zeros((b, h))
    w = (jnp.ones((d, g * h)), jnp.ones((h, g * h)), jnp.zeros(g * h))
    args = (x, h0, h0, *w) if cell == "lstm" else (x, h0, *w)
    op = getattr(bench.F, cell)
    fwd_bwd = lambda *a: jax.vjp(op, *a)[1](jax.tree.map(jnp.ones_like, jax.eval_shape(op, *a)))
    return d, h, g, list(_eqns(jax.make_jaxpr(fwd_bwd)(*args)))


@pytest.mark.parametrize("cell", ["rnn", "lstm"])
def test_recurrent_ops_transpose_the_narrow_input(cell):
    """rnn/lstm move x (B, T, D) to time-major before the input projection and compute dx
    time-major, instead of letting XLA transpose the (T, B, 4H) projection and the time-major
    gradients around the einsums (the char LSTM step ran 1.24x faster, from 0.83x Flax's speed
    to 1.08x): x in and dx out are the width-D transposes of the forward and backward."""
    d, _, _, eqns = _recurrent_fwd_bwd_eqns(cell)
    transposes = [
        e
        for e in eqns
        if e.primitive.name == "transpose" and e.invars[0].aval.shape[-1] == d and e.invars[0].aval.ndim == 3
    ]
    assert len(transposes) == 2


@pytest.mark.parametrize("cell", ["rnn", "lstm"])
def test_recurrent_weight_gradients_are_2d_matmuls_over_all_steps(cell):
    """dW_x and dW_h are one 2-D matmul each over the T*B rows (a free reshape of the time-major
    arrays): as a two-axis contraction of two (T, B, .) arrays (``einsum("tbh,tbk->hk")``) XLA:CPU
    contracted in (b, t) order and transposed dz and h_{t-1} to batch-major first. No matmul of
    the forward + backward contracts two 3-D operands."""
    d, h, g, eqns = _recurrent_fwd_bwd_eqns(cell)
    dots = [e for e in eqns if e.primitive.name == "dot_general"]
    weight_grads = [e for e in dots if e.outvars[0].aval.shape in {(d, g * h), (h, g * h)}]
    assert len(weight_grads) == 2
    assert all(v.aval.ndim == 2 for e in weight_grads for v in e.invars)
    assert not [e for e in dots if all(v.aval.ndim == 3 for v in e.invars)]
