"""What every experiment script shares: its command line, its run directory,
its results JSON and its figures.

Each script in ``experiments/`` calls :func:`experiment_parser`, which gives
``--seed``, ``--data-dir``, ``--out`` (default ``runs/<name>/<timestamp>``),
``--quick`` (a small, fast configuration for CI) and ``--no-progress``, then
:func:`start` to create the run directory, and :func:`finish` to write
``results.json`` (headline metrics under plain keys such as
``test_accuracy``) and print where everything went.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import sys
import time
from pathlib import Path

import jax
import matplotlib
import numpy as np

matplotlib.use("Agg")  # figures are files; no display needed
import matplotlib.pyplot as plt  # noqa: E402

from .train import write_json  # noqa: E402


def experiment_parser(name: str, description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=f"experiments/{name}.py", description=description,
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--seed", type=int, default=0, help="PRNG seed (same seed, same result)")
    p.add_argument("--data-dir", default=os.environ.get("JDLFS_DATA_DIR"),
                   help="directory holding the datasets (e.g. ../shared/data); default $JDLFS_DATA_DIR")
    p.add_argument("--out", default=None, help="output directory (default runs/%s/<timestamp>)" % name)
    p.add_argument("--quick", action="store_true", help="small fast configuration (CI smoke run)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(experiment=name)
    return p


def start(args: argparse.Namespace) -> Path:
    """Create and return the run directory; remember the start time."""
    if args.out is None:
        stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
        args.out = os.path.join("runs", args.experiment, stamp)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    args._t0 = time.perf_counter()
    print(f"[{args.experiment}] writing to {out}", file=sys.stderr)
    return out


def finish(args: argparse.Namespace, results: dict) -> dict:
    """Add run metadata, write ``results.json``, print the headline numbers."""
    results = dict(results)
    results.setdefault("experiment", args.experiment)
    results["seed"] = args.seed
    results["quick"] = bool(args.quick)
    results["wall_seconds"] = time.perf_counter() - getattr(args, "_t0", time.perf_counter())
    results["environment"] = {"jax": jax.__version__, "backend": jax.default_backend(),
                              "devices": [str(d) for d in jax.devices()],
                              "python": platform.python_version(), "machine": platform.machine(),
                              "cpu_count": os.cpu_count()}
    write_json(Path(args.out) / "results.json", results)
    headline = {k: v for k, v in results.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    print(json.dumps(headline, indent=2))
    print(f"[{args.experiment}] results: {Path(args.out) / 'results.json'}", file=sys.stderr)
    return results


def save_figure(fig, out: Path, name: str) -> Path:
    path = Path(out) / name
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)
    return path


def plot_history(history: list[dict], title: str):
    """Loss and accuracy curves (train and test) per epoch, side by side."""
    epochs = [h["epoch"] for h in history]
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 3.8))
    a1.plot(epochs, [h["train_loss"] for h in history], "o-", label="train")
    if "test_loss" in history[0]:
        a1.plot(epochs, [h["test_loss"] for h in history], "s-", label="test")
    a1.set(xlabel="epoch", ylabel="cross-entropy", title=f"{title}: loss")
    a2.plot(epochs, [100 * h["train_accuracy"] for h in history], "o-", label="train")
    if "test_accuracy" in history[0]:
        a2.plot(epochs, [100 * h["test_accuracy"] for h in history], "s-", label="test")
    a2.set(xlabel="epoch", ylabel="accuracy (%)", title=f"{title}: accuracy")
    for a in (a1, a2):
        a.grid(alpha=0.3)
        a.legend()
    return fig


def plot_confusion(conf, accuracy: float, class_names=None):
    """Confusion matrix (rows: true, columns: predicted). Colour shows the
    errors only (the diagonal would swamp them); every non-zero count is printed."""
    conf = np.asarray(conf)
    k = conf.shape[0]
    fig, ax = plt.subplots(figsize=(5.5 + 0.1 * k, 5 + 0.1 * k))
    im = ax.imshow(np.where(np.eye(k, dtype=bool), np.nan, conf), cmap="Reds")
    for i in range(k):
        for j in range(k):
            if conf[i, j]:
                ax.text(j, i, str(conf[i, j]), ha="center", va="center", fontsize=7,
                        color="k" if i != j else "tab:green")
    labels = class_names if class_names is not None else range(k)
    ax.set(xlabel="predicted", ylabel="true", xticks=range(k), yticks=range(k),
           title=f"test confusion (accuracy {100 * accuracy:.2f}%)\ncolour: errors; diagonal: correct counts")
    ax.set_xticklabels(labels, rotation=45 if class_names is not None else 0)
    ax.set_yticklabels(labels)
    fig.colorbar(im, ax=ax, shrink=0.8, label="errors")
    return fig
