"""Attention heatmaps of a trained Multi30k translation model: encoder self-attention heads, decoder cross-attention.

Reads a run folder of ``experiments/translate.py`` (``--run``: its
``model.json``, ``spm.model`` and ``checkpoint/model``) and draws

* ``encoder_heads.png``: a grid of 4 heads (rows) x 3 sentences (columns) of
  encoder self-attention weights of one layer (``--layer``, default the
  last), subword pieces on both axes (query down, key across);
* ``cross_attention.png``: the decoder's cross-attention, averaged over the
  heads of one layer (``--decoder-layer``, default the same index as
  ``--layer``), aligning a source sentence (across) and the model's greedy
  translation (down) -- the soft alignment of the two sentences.

The run folder must hold a German -> English model (``model.json`` says
``"source": "de", "target": "en"``; a headlines model is refused), and both
layer indices must exist in their stack (no wrap-around).

The sentences are the first ``--sentences`` of test_2016_flickr whose
source has ``--min-pieces`` .. ``--max-pieces`` subword pieces (short enough
to read the labels). ``results.json`` records them, their translations and,
per encoder head and layer, where the attention goes: the mean weight on the
token itself, the previous token, the next token, and the weight's entropy
(in bits) -- the numbers behind "each head specialises".

Usage::

    python experiments/attention_maps.py --run runs/translate/<run folder> --data-dir ../shared/data
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import jax.numpy as jnp
import numpy as np

from jdlfs import runs
from jdlfs.models import transformer
from jdlfs.text import BOS_ID, EOS_ID, SubwordTokenizer, load_multi30k


def _sibling(name: str):
    spec = importlib.util.spec_from_file_location(f"experiments_{name}", Path(__file__).with_name(f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


shared = _sibling("translate")


def head_statistics(weights: np.ndarray, length: int) -> dict:
    """``weights (H, T, T)`` of one sentence (``length`` real tokens) -> per-head means over the queries."""
    w = weights[:, :length, :length].astype(np.float64)
    diag = lambda k: np.array([np.mean(np.diagonal(h, offset=k)) if length > abs(k) else np.nan for h in w])  # noqa: E731
    entropy = -np.sum(np.where(w > 0, w * np.log2(np.where(w > 0, w, 1)), 0), axis=-1).mean(-1)
    return {"self": diag(0), "previous": diag(-1), "next": diag(1), "entropy_bits": entropy}


def heatmap(ax, w, rows, cols, title, *, small=False):
    ax.imshow(w, cmap="viridis", vmin=0, vmax=max(float(w.max()), 1e-6), aspect="auto")
    size = 6 if small else 8
    ax.set_xticks(range(len(cols)), cols, rotation=90, fontsize=size)
    ax.set_yticks(range(len(rows)), rows, fontsize=size)
    ax.set_title(title, fontsize=9)


def main(argv=None) -> dict:
    p = runs.experiment_parser("attention_maps", __doc__.split("\n\n")[0])
    p.add_argument("--run", metavar="DIR", required=True, help="a finished experiments/translate.py run folder")
    p.add_argument("--layer", type=int, default=-1, help="encoder layer to draw; negative counts back")
    p.add_argument(
        "--decoder-layer",
        type=int,
        default=None,
        help="decoder layer of the cross-attention map; negative counts back; default: the same index as --layer",
    )
    p.add_argument("--heads", type=int, default=4, help="heads in the grid (rows)")
    p.add_argument("--sentences", type=int, default=3, help="sentences in the grid (columns)")
    p.add_argument("--min-pieces", type=int, default=7, help="shortest source drawn, in subword pieces")
    p.add_argument("--max-pieces", type=int, default=14, help="longest source drawn, in subword pieces")
    args = p.parse_args(argv)
    shared.check_positive(args, "heads", "sentences", "min_pieces")
    if args.max_pieces < args.min_pieces:
        raise runs.UsageError(f"--max-pieces {args.max_pieces} is below --min-pieces {args.min_pieces}")
    run = Path(args.run)
    config, meta = shared.read_model_json(run)
    if meta.get("source") != "de" or meta.get("target") != "en":
        raise runs.UsageError(
            f"{run} holds a {meta.get('source')!r} -> {meta.get('target')!r} model (model.json), not a German -> "
            "English translation model: pass a run folder of experiments/translate.py"
        )
    if not -config.num_layers <= args.layer < config.num_layers:
        raise runs.UsageError(f"--layer {args.layer}: the model has {config.num_layers} encoder layers")
    dec_flag, dec_layer = (
        ("--layer", args.layer) if args.decoder_layer is None else ("--decoder-layer", args.decoder_layer)
    )
    if not -config.decoder_layers <= dec_layer < config.decoder_layers:
        hint = "; pass --decoder-layer" if args.decoder_layer is None else ""
        raise runs.UsageError(f"{dec_flag} {dec_layer}: the model has {config.decoder_layers} decoder layers{hint}")
    tok_path = shared.inside(run, run / "model.json", "tokenizer", meta.get("tokenizer", "spm.model"))
    if not tok_path.is_file():
        raise runs.UsageError(
            f"{run} has no tokenizer {tok_path.name} (model.json names it): the run folder is damaged"
        )
    params, config, meta = shared.load_model(run)
    tok = SubwordTokenizer.load(tok_path)
    out = runs.start(args)

    de, en = load_multi30k("test_2016_flickr", args.data_dir)
    chosen = [i for i, s in enumerate(de) if args.min_pieces <= len(tok.encode_pieces(s)) <= args.max_pieces]
    chosen = chosen[: args.sentences]
    if len(chosen) < args.sentences:
        raise runs.UsageError(
            f"only {len(chosen)} test sentences have {args.min_pieces}..{args.max_pieces} pieces; widen the range"
        )
    sources = [tok.encode(de[i], add_eos=True) for i in chosen]
    pieces = [tok.encode_pieces(de[i]) + ["</s>"] for i in chosen]
    limit = min(config.max_len, 64)  # translation length limit
    outputs = transformer.decode_corpus(
        params, config, sources, bos_id=BOS_ID, eos_id=EOS_ID, batch_size=len(sources), max_len=limit
    )
    width = max(map(len, sources))
    src = np.zeros((len(sources), width), np.int32)
    for r, s in enumerate(sources):
        src[r, : len(s)] = s
    tlen = max(len(o) for o in outputs) + 1
    tgt = np.zeros((len(sources), tlen), np.int32)
    for r, o in enumerate(outputs):
        tgt[r, : len(o) + 1] = [BOS_ID, *o]
    _, attn = transformer.apply(params, config, src, tgt, return_attention=True)
    layer = args.layer % config.num_layers
    enc = np.asarray(attn["encoder"][layer], np.float32)  # (S, H, T, T)
    heads = min(args.heads, config.num_heads)

    # ---- the grid: heads x sentences
    fig, axes = runs.plt.subplots(
        heads, len(chosen), figsize=(3.6 * len(chosen), 3.4 * heads), squeeze=False, constrained_layout=True
    )
    for h in range(heads):
        for c, (r, labels) in enumerate(zip(range(len(chosen)), pieces)):
            n = len(labels)
            heatmap(axes[h, c], enc[r, h, :n, :n], labels, labels, f"layer {layer + 1}, head {h + 1}", small=True)
    fig.suptitle(f"encoder self-attention (query down, key across), {len(chosen)} test_2016 sentences")
    runs.save_figure(fig, out, "encoder_heads.png")

    # ---- cross-attention of the first sentence, averaged over heads
    dec_layer %= config.decoder_layers
    cross = np.asarray(attn["decoder_cross"][dec_layer], np.float32)[0].mean(0)  # (Tt, Ts)
    # decoder input row t (BOS, y_1, ...) produced y_{t+1}: each row is labelled with the piece it produced,
    # the last with </s> when the translation ended (outputs stop before EOS or at the length limit)
    ended = len(outputs[0]) < limit
    out_pieces = [tok.id_to_piece(i) for i in outputs[0]] + (["</s>"] if ended else [])
    n_src, n_out = len(pieces[0]), len(out_pieces)
    fig, ax = runs.plt.subplots(figsize=(0.45 * n_src + 2.5, 0.4 * n_out + 2), constrained_layout=True)
    title = f"decoder cross-attention, layer {dec_layer + 1}, mean of heads"
    heatmap(ax, cross[:n_out, :n_src], out_pieces, pieces[0], title)
    ax.set(xlabel="source (German)", ylabel="output (English), the piece each step produced")
    runs.save_figure(fig, out, "cross_attention.png")

    stats = {}
    for layer_i, w in enumerate(attn["encoder"]):
        w = np.asarray(w, np.float32)
        per = [head_statistics(w[r], len(pieces[r])) for r in range(len(chosen))]
        stats[f"layer{layer_i + 1}"] = {
            k: np.nanmean(np.stack([s[k] for s in per]), axis=0).round(4).tolist() for k in per[0]
        }
    results = {
        "run": str(run),
        "layer": layer + 1,
        "decoder_layer": dec_layer + 1,
        "sentences": [
            {"source": de[i], "reference": en[i], "translation": tok.decode(o), "pieces": pc}
            for i, o, pc in zip(chosen, outputs, pieces)
        ],
        "cross_attention_output_pieces": out_pieces,
        "encoder_head_statistics": stats,
        "cross_attention_argmax_source_piece": [pieces[0][int(j)] for j in jnp.argmax(cross[:n_out, :n_src], -1)],
        "figures": ["encoder_heads.png", "cross_attention.png"],
    }
    return runs.finish(args, results)


if __name__ == "__main__":
    runs.run_main(main)
