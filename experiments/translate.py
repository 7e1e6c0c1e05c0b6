"""Multi30k German -> English with the encoder-decoder Transformer: sacreBLEU for greedy and beam search.

The model is ``jdlfs.models.transformer`` (pre-LN, sinusoidal positions,
embeddings scaled by sqrt(d_model), one joint subword table shared by source,
target and output projection), trained through ``jdlfs.train.fit`` with the
``sequence`` objective (label smoothing 0.1, PAD masked) on the 29,000
training pairs, with the validation split's loss after every epoch. A joint
sentencepiece model (unigram, ``--vocab-size``) is trained on the German and
English training sentences only and saved with the run (``spm.model``).

Packing: a training row holds several pairs (``transformer.pack_pairs``,
first-fit in a random order, source and target sides ``--row-len`` tokens
each), and attention is restricted to each pair with segment ids, positions
restarting per pair. fit needs one fixed batch shape, and padding every pair
to one length wastes half the compute (a pair has 16 tokens a side on
average, 98% have at most 32, the longest 56); packed, 92% of the slots hold
a token: 1.76x the target tokens per second of the same pairs padded to 32
(pilot below).

Selection on the validation split: the length penalty of beam search (GNMT
``((5 + len) / 6) ** alpha``, each of ``--length-penalties``) by validation
BLEU; the test sets are decoded once, with the chosen value. BLEU is
``sacrebleu.corpus_bleu`` (13a tokenisation, cased) on the detokenised output
(sentencepiece decode) against the raw reference sentences, for
test_2016_flickr and test_2017_flickr; the outputs are written to
``translations/``.

Speed: training tokens per second (target tokens; source + target as well)
from fit's epochs; decoding sentences per second for greedy and beam search
over the whole test_2016 set with the key/value cache, and on
``--speed-sentences`` of its sentences both with the cache and without it
(``cache=False``: every step re-runs the full teacher-forced ``apply`` over
the source and the decoded prefix, the baseline). Decoders are compiled
before they are timed (``decode_corpus(..., compile_only=True)``).

Default configuration (3 + 3 layers, d_model 256, 4 heads, d_ff 1024,
dropout 0.1, joint vocabulary 8,000, rows of 64 + 64 tokens, 32 rows per step
(~1,900 target tokens), Adam(0.9, 0.98) peak lr 1e-3 after 400 linear
warm-up steps, cosine decay to 0, gradient clipping at norm 1, 15 epochs, beam
5). Pilots (jax 0.10.2, 2-core CPU shared with other jobs, so every wall
time below is longer than on the idle CPU): a training step costs 1.67
CPU-seconds (process time); packed rows gave 667 target tokens/s against 378
for the same pairs padded to 32 tokens (1.76x); a 1-epoch run of this script
(the schedule compressed into that epoch) trained at 29 rows/s (1,720 target
tokens/s, 264 s for the epoch's 241 steps) and decoded everything in 330 s,
reaching test_2016 BLEU 18.1 greedy / 19.9 beam; the first epoch of the
15-epoch schedule gave val BLEU 15.3 (greedy). Estimate for the idle CPU:
3.5-4.5 min an epoch, 15 epochs 53-66 min, decoding ~5 min: 60-75 minutes,
inside the 90-minute budget.

Outputs in the run folder: ``results.json`` (BLEU table, speeds, history),
``curves.png`` (training and validation loss), ``length_penalty.png``,
``translations/*.en``, ``spm.model``, ``model.json`` and
``checkpoint/model`` (parameters, for ``experiments/attention_maps.py``),
``checkpoint/train`` (fit's resumable state; rerun with ``--out`` to resume).

Every flag is checked before the run folder is created and the data are
read (the model the flags describe included: ``--heads 3`` with ``--d-model
256`` is refused); a mistake stops the script with one message naming the
flag and exit status 2. Checks that need the data (``--row-len`` leaving no
pair, ``--batch-size`` above the packed rows, a ``--vocab-size`` the corpus
cannot fill) come right after it is read, before training.

Usage::

    python experiments/translate.py --data-dir ../shared/data
    python experiments/attention_maps.py --run runs/translate/<run folder> --data-dir ../shared/data
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
import sys
import time
from pathlib import Path

import jax
import numpy as np
import optax
import sacrebleu

from jdlfs import checkpoint, runs, train
from jdlfs.models import transformer
from jdlfs.text import BOS_ID, EOS_ID, PAD_ID, SubwordTokenizer, load_multi30k

TEST_SPLITS = ("test_2016_flickr", "test_2017_flickr")


# ---------------------------------------------------------------- shared with headlines.py / attention_maps.py
def log_epoch(label: str):
    def log(h: dict) -> None:
        val = f", val loss {h['test_loss']:.3f}" if "test_loss" in h else ""
        print(
            f"[{label}] epoch {h['epoch']}: train loss {h['train_loss']:.3f}{val}, "
            f"{h['train_seconds']:.0f} s ({h['train_examples_per_second']:.1f} rows/s)",
            file=sys.stderr,
            flush=True,
        )

    return log


def flag(name: str) -> str:
    """``"batch_size"`` -> ``"--batch-size"``."""
    return "--" + name.replace("_", "-")


def check_positive(args, *names: str) -> None:
    """UsageError for a flag that must be a positive int (``--epochs 0`` would otherwise fail deep inside)."""
    for name in names:
        value = getattr(args, name)
        if value < 1:
            raise runs.UsageError(f"{flag(name)} must be >= 1, got {value}")


def parse_list(name: str, text: str, kind: type) -> list:
    """The comma-separated numbers of flag ``name`` (e.g. ``--length-penalties 0,0.6``), or a UsageError."""
    try:
        return [kind(v) for v in text.split(",")]
    except ValueError:
        what = "integers" if kind is int else "numbers"
        raise runs.UsageError(f"{name} must be comma-separated {what}, got {text!r}") from None


def parse_length_penalties(text: str) -> list[float]:
    """``--length-penalties``: GNMT alphas, each a finite number >= 0."""
    values = parse_list("--length-penalties", text, float)
    if not all(math.isfinite(v) and v >= 0 for v in values):
        raise runs.UsageError(f"--length-penalties must be finite numbers >= 0 (GNMT alphas), got {text!r}")
    return values


def parse_buckets(text: str) -> tuple[int, ...]:
    """``--decode-buckets``: source lengths >= 1, strictly increasing."""
    values = parse_list("--decode-buckets", text, int)
    if values[0] < 1 or any(b <= a for a, b in zip(values, values[1:])):
        raise runs.UsageError(
            f"--decode-buckets must be strictly increasing source lengths >= 1 (e.g. 16,32,64), got {text!r}"
        )
    return tuple(values)


def check_training_flags(args) -> None:
    """UsageError for the optimisation and model flags both scripts share, before anything runs."""
    for name in ("dropout", "label_smoothing"):
        value = getattr(args, name)
        if not 0.0 <= value < 1.0:  # NaN fails too
            raise runs.UsageError(f"{flag(name)} must be in [0, 1), got {value}")
    for name in ("lr", "clip"):
        value = getattr(args, name)
        if not (math.isfinite(value) and value > 0):
            raise runs.UsageError(f"{flag(name)} must be a finite number > 0, got {value}")
    if args.warmup_steps < 0:
        raise runs.UsageError(f"--warmup-steps must be >= 0, got {args.warmup_steps}")
    if args.vocab_size <= 4:
        raise runs.UsageError(
            f"--vocab-size must be > 4 (4 ids are special: PAD, BOS, EOS, UNK), got {args.vocab_size}"
        )


#: The flag that sets each transformer.Config field (to name it in a UsageError).
CONFIG_FLAGS = {
    "src_vocab": "--vocab-size",
    "tgt_vocab": "--vocab-size",
    "d_model": "--d-model",
    "num_heads": "--heads",
    "num_layers": "--layers",
    "d_ff": "--d-ff",
    "dropout": "--dropout",
}


def model_config(args, vocab_size: int, max_len: int) -> transformer.Config:
    """The model the flags describe (one joint vocabulary, shared and tied embeddings); a UsageError
    naming the flags for a configuration :class:`transformer.Config` refuses (``--heads 3 --d-model 256``)."""
    try:
        return transformer.Config(
            src_vocab=vocab_size,
            tgt_vocab=vocab_size,
            d_model=args.d_model,
            num_heads=args.heads,
            num_layers=args.layers,
            d_ff=args.d_ff,
            dropout=args.dropout,
            max_len=max_len,
            pad_id=PAD_ID,
            share_embeddings=True,
            tie_embeddings=True,
        )
    except (TypeError, ValueError) as e:
        named = [f for field, f in CONFIG_FLAGS.items() if re.search(rf"\b{field}\b", str(e))]
        flags = " / ".join(dict.fromkeys(named)) or "the model flags"
        raise runs.UsageError(f"{flags}: {e}") from None


def train_tokenizer(texts: list[str], path: Path, vocab_size: int) -> SubwordTokenizer:
    """The sentencepiece model, or a UsageError naming ``--vocab-size`` when the corpus cannot fill it."""
    try:
        return SubwordTokenizer.train(texts, path, vocab_size=vocab_size)
    except ValueError as e:
        raise runs.UsageError(
            f"--vocab-size {vocab_size}: could not train the sentencepiece model on the training texts ({e}); "
            "pass a smaller --vocab-size"
        ) from None


def check_kept(kept: int, split: str, length_flag: str, value: int) -> None:
    """UsageError when the length filter left no example of ``split``."""
    if kept == 0:
        raise runs.UsageError(f"no {split} pair fits {length_flag} {value}: every one is longer; raise {length_flag}")


def check_batch_size(args, rows: int) -> None:
    """UsageError when ``--batch-size`` exceeds the packed training rows (an epoch would have no step)."""
    if args.batch_size > rows:
        raise runs.UsageError(
            f"--batch-size {args.batch_size} is more than the {rows} packed training rows (an epoch would have no "
            f"step): pass --batch-size {rows} or less"
        )


def train_transformer(args, config, params, vocab_size, train_rows, val_rows, root, out, name: str):
    """Teacher-forced training of the Transformer with the common flags (label smoothing, warm-up, clipping),
    checkpointed under ``<out>/checkpoint/train`` (shared by translate.py and headlines.py)."""
    steps_per_epoch = train_rows[1].shape[0] // args.batch_size
    task = train.sequence(
        transformer.model_fn(config), pad_id=PAD_ID, vocab_size=vocab_size, label_smoothing=args.label_smoothing
    )
    optimizer = make_optimizer(args.lr, args.warmup_steps, args.epochs * steps_per_epoch, args.clip)
    return train.fit(
        task,
        params,
        {},
        optimizer,
        train_rows,
        epochs=args.epochs,
        batch_size=args.batch_size,
        key=jax.random.fold_in(root, 2),
        test_data=val_rows,
        eval_batch_size=128,
        checkpoint=out / runs.CHECKPOINT / "train",
        devices=runs.local_devices(args, args.batch_size),
        progress=not args.no_progress,
        desc=name,
        on_epoch=log_epoch(name),
    )


def make_optimizer(lr: float, warmup: int, total: int, clip: float) -> optax.GradientTransformation:
    """Adam (0.9, 0.98, eps 1e-9) as in the paper; linear warm-up to ``lr``, cosine decay to 0 at ``total``."""
    warmup = max(1, min(warmup, total - 1)) if total > 1 else 1
    schedule = optax.warmup_cosine_decay_schedule(0.0, lr, warmup, max(total, warmup + 1), 0.0)
    return optax.chain(optax.clip_by_global_norm(clip), optax.adam(schedule, b1=0.9, b2=0.98, eps=1e-9))


def save_model(out: Path, params, config: transformer.Config, **extra) -> None:
    """``checkpoint/model`` (the parameters) and ``model.json`` (config and files) for attention_maps.py."""
    checkpoint.save(out / runs.CHECKPOINT / "model", params, metadata={"config": dataclasses.asdict(config)})
    runs.write_json(
        out / "model.json",
        {"config": dataclasses.asdict(config), "checkpoint": f"{runs.CHECKPOINT}/model", **extra},
    )


def load_model(run: Path):
    """``(params, config, model.json)`` of a run folder written by :func:`save_model`.

    Raises:
      runs.UsageError: no ``model.json``, or one that is not what :func:`save_model` writes (see
        :func:`read_model_json`); CheckpointError: ``checkpoint/model`` missing, damaged or of another shape.
    """
    config, meta = read_model_json(run)
    like = jax.eval_shape(lambda k: transformer.init(k, config), jax.random.key(0))
    params, _ = checkpoint.load(Path(run) / meta["checkpoint"], like)
    return params, config, meta


def inside(run: Path, meta_path: Path, key: str, value) -> Path:
    """``run / value`` for a file named in model.json, which must be a relative path inside the run folder."""
    if not isinstance(value, str) or not value:
        raise runs.UsageError(f"{meta_path}: {key!r} must name a file of the run folder, got {value!r}")
    path = run / value
    if Path(value).is_absolute() or not path.resolve().is_relative_to(run.resolve()):
        raise runs.UsageError(f"{meta_path}: {key!r} = {value!r} points outside the run folder {run}")
    return path


def read_model_json(run) -> tuple[transformer.Config, dict]:
    """``(config, model.json)`` of a run folder, checked: a UsageError naming the file for one that is
    missing, unreadable, not JSON, truncated, holds unknown config keys or an invalid config."""
    run = Path(run)
    meta_path = run / "model.json"
    if not meta_path.is_file():
        raise runs.UsageError(f"{run} is not a finished translate/headlines run folder: no model.json in it")
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise runs.UsageError(f"{meta_path} is unreadable or not valid JSON ({e}): the run folder is damaged") from None
    if not isinstance(meta, dict) or not isinstance(meta.get("config"), dict):
        raise runs.UsageError(f"{meta_path} is not a model.json of experiments/translate.py: no 'config' object")
    fields = {f.name for f in dataclasses.fields(transformer.Config)}
    unknown = sorted(set(meta["config"]) - fields)
    if unknown:
        raise runs.UsageError(f"{meta_path}: unknown transformer.Config keys {unknown} (known: {sorted(fields)})")
    try:
        config = transformer.Config(**meta["config"])
    except (TypeError, ValueError) as e:
        raise runs.UsageError(f"{meta_path}: invalid model config: {e}") from None
    inside(run, meta_path, "checkpoint", meta.get("checkpoint"))
    inside(run, meta_path, "tokenizer", meta.get("tokenizer", "spm.model"))
    return config, meta


def rows_stats(inputs, labels) -> dict:
    return {
        "rows": int(labels.shape[0]),
        "target_tokens": int((labels != PAD_ID).sum()),
        "source_tokens": int((inputs["src"] != PAD_ID).sum()),
        "fill": float((labels != PAD_ID).mean()),
    }


def timed_decode(params, config, sources, **kw) -> tuple[list, float]:
    """Decode (compiled beforehand) and return ``(ids, seconds)``."""
    transformer.decode_corpus(params, config, sources, compile_only=True, **kw)
    t0 = time.perf_counter()
    ids = transformer.decode_corpus(params, config, sources, **kw)
    return ids, time.perf_counter() - t0


def cache_speed(params, config, sources, *, bucket: int, beam_size: int, length_penalty: float, **kw) -> dict:
    """Sentences per second of greedy and beam decoding of ``sources`` as one batch, with and without the cache.

    Each variant is compiled first and then timed once; the outputs with and
    without the cache are compared (they must be the same ids).
    """
    one_batch = dict(bos_id=BOS_ID, eos_id=EOS_ID, batch_size=len(sources), bucket_lengths=(bucket,), **kw)
    table = {}
    for name, beam in (("greedy", 1), (f"beam{beam_size}", beam_size)):
        got = {}
        for cached in (True, False):
            ids, seconds = timed_decode(
                params, config, sources, beam_size=beam, length_penalty=length_penalty, cache=cached, **one_batch
            )
            got[cached] = ids
            table[f"{name}_{'cached' if cached else 'uncached'}_sentences_per_second"] = len(sources) / seconds
        table[f"{name}_same_output_with_and_without_cache"] = got[True] == got[False]
        table[f"{name}_cache_speedup"] = (
            table[f"{name}_cached_sentences_per_second"] / table[f"{name}_uncached_sentences_per_second"]
        )
    return table


def plot_curves(history: list, title: str):
    fig, ax = runs.plt.subplots(figsize=(6, 4))
    ep = [h["epoch"] for h in history]
    ax.plot(ep, [h["train_loss"] for h in history], "o-", label="train (label-smoothed)")
    if "test_loss" in history[0]:
        ax.plot(ep, [h["test_loss"] for h in history], "s-", label="validation")
    ax.set(xlabel="epoch", ylabel="cross-entropy (nats / token)", title=title)
    ax.grid(alpha=0.3)
    ax.legend()
    return fig


# ---------------------------------------------------------------- this experiment
BLEU = sacrebleu.BLEU()  # corpus BLEU, 13a tokenisation, cased: sacrebleu's defaults


def bleu(hyps: list[str], refs: list[str]) -> float:
    return float(BLEU.corpus_score(hyps, [refs]).score)


def plot_length_penalty(scores: dict, chosen: float):
    fig, ax = runs.plt.subplots(figsize=(5, 3.6))
    lps = sorted(scores, key=float)
    ax.plot([float(x) for x in lps], [scores[x] for x in lps], "o-")
    ax.axvline(chosen, color="tab:red", ls="--", label=f"chosen {chosen:g}")
    ax.set(xlabel="length penalty alpha", ylabel="validation BLEU", title="beam search: length penalty on val")
    ax.grid(alpha=0.3)
    ax.legend()
    return fig


def load_data(args):
    splits = {s: load_multi30k(s, args.data_dir) for s in ("train", "val", *TEST_SPLITS)}
    if args.quick:  # a fixed random subset, the same for every seed
        rng = np.random.default_rng(0)
        for s, n in (("train", 1500), ("val", 48), *((t, 48) for t in TEST_SPLITS)):
            idx = np.sort(rng.permutation(len(splits[s][0]))[:n])
            splits[s] = tuple([side[i] for i in idx] for side in splits[s])
    return splits


def main(argv=None) -> dict:
    p = runs.experiment_parser("translate", __doc__.split("\n\n")[0])
    p.add_argument("--epochs", type=int, default=15, help="passes over the training pairs")
    p.add_argument("--batch-size", type=int, default=32, help="packed rows per step")
    p.add_argument("--row-len", type=int, default=64, help="tokens per packed row, source and target side each")
    p.add_argument("--vocab-size", type=int, default=8000, help="joint sentencepiece vocabulary (specials included)")
    p.add_argument("--d-model", type=int, default=256, help="model width")
    p.add_argument("--heads", type=int, default=4, help="attention heads")
    p.add_argument("--layers", type=int, default=3, help="encoder and decoder layers (each)")
    p.add_argument("--d-ff", type=int, default=1024, help="feed-forward hidden width")
    p.add_argument("--dropout", type=float, default=0.1, help="dropout rate")
    p.add_argument("--label-smoothing", type=float, default=0.1, help="label smoothing of the training loss")
    p.add_argument("--lr", type=float, default=1e-3, help="peak learning rate (Adam)")
    p.add_argument("--warmup-steps", type=int, default=400, help="linear warm-up steps, then cosine decay to 0")
    p.add_argument("--clip", type=float, default=1.0, help="gradient clipping (global norm)")
    p.add_argument("--beam-size", type=int, default=5, help="beam width")
    p.add_argument("--length-penalties", default="0.0,0.6,1.0,1.5", help="GNMT alphas tried on val")
    p.add_argument("--decode-batch", type=int, default=128, help="sentences per decoding batch")
    p.add_argument(
        "--decode-buckets", default="16,32,64", help="source lengths of the decoding batches (one compile each)"
    )
    p.add_argument(
        "--speed-sentences",
        type=int,
        default=16,
        help="test_2016 sentences (of the second decoding bucket) decoded with and without the cache",
    )
    args = p.parse_args(argv)
    # every flag is checked here, before the run folder and the data: a mistake costs nothing
    penalties = parse_length_penalties(args.length_penalties)
    buckets = parse_buckets(args.decode_buckets)
    check_positive(args, "epochs", "batch_size", "row_len", "beam_size", "decode_batch", "speed_sentences")
    check_training_flags(args)
    if args.quick:
        args.epochs, args.vocab_size, args.d_model, args.heads = min(args.epochs, 2), 500, 32, 2
        args.layers, args.d_ff, args.batch_size, args.row_len = 1, 64, 16, 48
        args.warmup_steps, args.decode_batch, args.speed_sentences, args.beam_size = 10, 48, 48, 3
        penalties, buckets = penalties[:1], (48,)  # one decoder shape: every decode reuses its compile
    max_len = max(128, args.row_len)
    model_config(args, args.vocab_size, max_len)  # the model the flags describe must exist
    out = runs.start(args)
    t_start = time.perf_counter()

    splits = load_data(args)
    spm_path = out / "spm.model"
    if spm_path.is_file():
        tok = SubwordTokenizer.load(spm_path)
    else:
        de, en = splits["train"]
        tok = train_tokenizer(de + en, spm_path, args.vocab_size)
    encoded = {
        s: (tok.encode(de, add_eos=True), tok.encode(en, add_bos=True, add_eos=True)) for s, (de, en) in splits.items()
    }
    src, tgt = encoded["train"]
    keep = [i for i in range(len(src)) if len(src[i]) <= args.row_len and len(tgt[i]) - 1 <= args.row_len]
    check_kept(len(keep), "training", "--row-len", args.row_len)
    root = jax.random.key(args.seed)
    train_rows = transformer.pack_pairs(
        [src[i] for i in keep],
        [tgt[i] for i in keep],
        src_len=args.row_len,
        tgt_len=args.row_len,
        pad_id=PAD_ID,
        key=jax.random.fold_in(root, 1),
    )
    check_batch_size(args, train_rows[1].shape[0])
    vs, vt = encoded["val"]
    vkeep = [i for i in range(len(vs)) if len(vs[i]) <= args.row_len and len(vt[i]) - 1 <= args.row_len]
    check_kept(len(vkeep), "validation", "--row-len", args.row_len)
    val_rows = transformer.pack_pairs(
        [vs[i] for i in vkeep], [vt[i] for i in vkeep], src_len=args.row_len, tgt_len=args.row_len, pad_id=PAD_ID
    )
    config = model_config(args, tok.vocab_size, max_len)
    params = transformer.init(jax.random.fold_in(root, 0), config)
    print(
        f"[translate] {len(keep)} training pairs in {train_rows[1].shape[0]} rows, "
        f"{transformer.param_count(params):,} parameters",
        file=sys.stderr,
    )
    result = train_transformer(args, config, params, tok.vocab_size, train_rows, val_rows, root, out, "translate")
    params = jax.device_get(result.params)
    save_model(out, params, config, tokenizer="spm.model", source="de", target="en")
    params = jax.device_put(params)  # on the default device once, not copied in by every decoding call
    train_seconds = sum(h["train_seconds"] for h in result.history)
    stats = rows_stats(*train_rows)
    rows_per_s = float(np.median([h["train_examples_per_second"] for h in result.history[1:] or result.history]))
    tokens_per_row = stats["target_tokens"] / stats["rows"]

    # ---- decoding: length penalty on val, then the test sets
    common = dict(bos_id=BOS_ID, eos_id=EOS_ID, batch_size=args.decode_batch, bucket_lengths=buckets)
    trans_dir = out / "translations"
    trans_dir.mkdir(exist_ok=True)

    def run_split(split: str, beam: int, lp: float = 0.0):
        ids, seconds = timed_decode(params, config, encoded[split][0], beam_size=beam, length_penalty=lp, **common)
        hyps = tok.decode(ids)
        return hyps, bleu(hyps, splits[split][1]), seconds

    t_dec = time.perf_counter()
    val_refs = splits["val"][1]
    val_greedy, val_greedy_bleu, _ = run_split("val", 1)
    lp_scores = {}
    for lp in penalties:
        _, score, _ = run_split("val", args.beam_size, lp)
        lp_scores[f"{lp:g}"] = score
        print(f"[translate] val beam {args.beam_size} alpha {lp:g}: BLEU {score:.2f}", file=sys.stderr)
    best_lp = float(max(lp_scores, key=lambda k: (lp_scores[k], -float(k))))
    table, speeds = {}, {}
    for split in TEST_SPLITS:
        refs = splits[split][1]
        for name, beam, lp in (("greedy", 1, 0.0), (f"beam{args.beam_size}", args.beam_size, best_lp)):
            hyps, score, seconds = run_split(split, beam, lp)
            table[f"{split}_{name}"] = score
            (trans_dir / f"{split}.{name}.en").write_text("\n".join(hyps) + "\n")
            if split == TEST_SPLITS[0]:
                speeds[f"{name}_cached_sentences_per_second"] = len(refs) / seconds
            print(f"[translate] {split} {name}: BLEU {score:.2f} ({len(refs) / seconds:.1f} sent/s)", file=sys.stderr)
    decode_seconds = time.perf_counter() - t_dec

    # ---- cache vs no cache: the first test_2016 sentences of one bucket (the second), decoded as one batch
    test_sources = encoded[TEST_SPLITS[0]][0]
    if len(buckets) > 1:
        bucket = buckets[1]
        sub = [s for s in test_sources if buckets[0] < len(s) <= bucket][: args.speed_sentences]
    else:  # one bucket: any source (a longer one is cut to it)
        bucket, sub = buckets[0], list(test_sources[: args.speed_sentences])
    if not sub:
        raise runs.UsageError(f"no test_2016 source fits the decoding bucket {bucket} to time decoding on")
    cache_table = cache_speed(params, config, sub, bucket=bucket, beam_size=args.beam_size, length_penalty=best_lp)

    runs.save_figure(plot_curves(result.history, "Multi30k de-en"), out, "curves.png")
    runs.save_figure(plot_length_penalty(lp_scores, best_lp), out, "length_penalty.png")
    examples = [
        {"source": splits[TEST_SPLITS[0]][0][i], "reference": splits[TEST_SPLITS[0]][1][i], "greedy": h}
        for i, h in enumerate((trans_dir / f"{TEST_SPLITS[0]}.greedy.en").read_text().splitlines()[:5])
    ]
    results = {
        "bleu": table,
        **{f"bleu_{k}": v for k, v in table.items()},
        "bleu_signature": str(BLEU.get_signature()),
        "val_bleu_greedy": val_greedy_bleu,
        "val_bleu_beam_by_length_penalty": lp_scores,
        "length_penalty": best_lp,
        "beam_size": args.beam_size,
        "val_loss": result.history[-1].get("test_loss"),
        "train_loss": result.history[-1]["train_loss"],
        "epochs": args.epochs,
        "model_config": dataclasses.asdict(config),
        "param_count": transformer.param_count(params),
        "vocab_size": tok.vocab_size,
        "train_pairs": len(keep),
        "train_pairs_dropped_too_long": len(src) - len(keep),
        "packing": stats,
        "train_seconds": train_seconds,
        **runs.epoch_timing(result.history),
        "train_rows_per_second": rows_per_s,
        "train_target_tokens_per_second": rows_per_s * tokens_per_row,
        "train_tokens_per_second_source_and_target": rows_per_s
        * (stats["target_tokens"] + stats["source_tokens"])
        / stats["rows"],
        "decode_seconds": decode_seconds,
        "decode_speed_full_test_2016": speeds,
        "cache_vs_no_cache": {"sentences": len(sub), "source_bucket": bucket, **cache_table},
        "val_greedy_examples": val_greedy[:3],
        "val_references": val_refs[:3],
        "examples": examples,
        "history": result.history,
        "total_seconds_before_finish": time.perf_counter() - t_start,
        "figures": ["curves.png", "length_penalty.png"],
    }
    return runs.finish(args, results)


if __name__ == "__main__":
    runs.run_main(main)
