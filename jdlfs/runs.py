"""What every experiment script shares: its command line, its run folder, its
results JSON, its data, its error handling and its figures.

A script in ``experiments/`` looks like::

    def main(argv=None) -> dict:
        p = runs.experiment_parser("mnist_mlp", __doc__.split("\\n\\n")[0])
        p.add_argument("--epochs", type=int, default=10, help="passes over the training set")
        args = p.parse_args(argv)
        out = runs.start(args)                     # run folder + results.json {"status": "running"}
        x_train, y_train, x_test, y_test = runs.load_dataset(args, "mnist")
        ...                                        # train; checkpoints under out / "checkpoint"
        return runs.finish(args, results)          # results.json {"status": "finished", ...}

    if __name__ == "__main__":
        runs.run_main(main)

:func:`experiment_parser` gives the common flags (``--seed``, ``--data-dir``,
``--out``, ``--quick``, ``--no-progress``, ``--devices``). Help shows each
default once: the formatter appends ``(default: X)`` to every option whose
default is a value, and shows nothing for a default of ``None`` or a flag's
``False``, so an option with default ``None`` says in its help what leaving it
out does, and no help text writes a default by hand.

Run folders: ``runs/<name>/<YYYYmmdd-HHMMSS>-<4 hex digits>``, created with
``exist_ok=False`` (retried on a clash), so two runs started in the same second
never share one. ``results.json`` is written when the run starts
(``"status": "running"``) and rewritten when it ends: ``"finished"`` by
:func:`finish`, ``"interrupted"`` or ``"failed"`` by :func:`run_main`.
``--out`` naming an existing run folder (one with a ``results.json`` of the
same experiment) reuses it and records ``"resumed": true``: that is how a run
resumes, from the checkpoint the script keeps in ``<out>/checkpoint``.

:func:`run_main` turns the ways a script stops into one clear line each:

* Ctrl-C: ``interrupted; rerun with --out <folder> to resume`` (the resume
  advice only when ``<folder>/checkpoint`` exists), status ``"interrupted"``,
  exit status 130, no traceback.
* A user mistake (data not found, a corrupt data file, a :class:`UsageError`
  such as a bad flag combination, or a type listed in :data:`USER_ERRORS`):
  one actionable message, exit status 2, no traceback. If the run folder was
  created by this run and holds nothing but ``results.json``, it is removed
  (nothing worth keeping; no empty folders pile up); otherwise ``results.json``
  says ``"failed"`` with the message.
* Anything else is a bug: status ``"failed"`` with the error, and the
  traceback and non-zero exit status Python gives it.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import secrets
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import jax
import matplotlib.pyplot as plt
import numpy as np

from jdlfs import data
from jdlfs.checkpoint import CheckpointError
from jdlfs.data import DataFormatError, DatasetNotFoundError
from jdlfs.text.errors import CorpusNotFoundError

plt.switch_backend("Agg")  # figures are files; no display needed

__all__ = [
    "USER_ERRORS",
    "UsageError",
    "epoch_timing",
    "experiment_parser",
    "finish",
    "load_dataset",
    "local_devices",
    "plot_confusion",
    "plot_history",
    "run_main",
    "save_figure",
    "start",
    "write_json",
]

RESULTS = "results.json"
CHECKPOINT = "checkpoint"
#: Keys :func:`start` / :func:`finish` write into ``results.json``; a script's results may not use them.
RESERVED_KEYS = (
    "experiment",
    "status",
    "started",
    "finished",
    "stopped",
    "argv",
    "config",
    "resumed",
    "previous_status",
)


class UsageError(Exception):
    """A mistake in how a script was called, e.g. a bad combination of flags.

    :func:`run_main` prints ``<script>: error: <message>`` and exits with
    status 2, like argparse does for a malformed command line.
    """


#: Exception types :func:`run_main` reports as a user mistake (message, exit status 2, no traceback).
#: Append a library's own "your input is wrong" error here (e.g. a checkpoint that does not match).
USER_ERRORS: list[type[BaseException]] = [
    UsageError,
    DatasetNotFoundError,
    CorpusNotFoundError,
    DataFormatError,
    CheckpointError,
]


# ----------------------------------------------------------------- JSON


def _to_json(o):
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, (np.ndarray, jax.Array)):
        return np.asarray(o).tolist()
    if isinstance(o, os.PathLike):
        return os.fspath(o)
    raise TypeError(f"not JSON serialisable: {type(o)}")


def write_json(path: str | os.PathLike, obj) -> None:
    """Write ``obj`` as indented JSON (numpy/jax scalars and arrays, paths converted).

    Atomic: written to a temporary file beside ``path``, then renamed over it,
    so an interrupted write never leaves a half-written file.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(obj, indent=2, default=_to_json) + "\n"
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(text)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def _jsonable(value):
    """A parsed argument as JSON: basic types kept, paths as strings, anything else as its repr."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    return repr(value)


def _config(args: argparse.Namespace) -> dict:
    return {k: _jsonable(v) for k, v in sorted(vars(args).items()) if not k.startswith("_")}


def _now() -> str:
    return _dt.datetime.now().astimezone().isoformat(timespec="seconds")


# ----------------------------------------------------------------- command line


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Appends ``(default: X)`` once, and only where X is a value (not ``None``, not a flag's ``False``)."""

    def _get_help_string(self, action):
        if action.default is None or action.default is False:
            return action.help or ""
        return super()._get_help_string(action)


class _ExperimentParser(argparse.ArgumentParser):
    """An ArgumentParser that remembers the arguments it parsed (as ``args._argv``) for ``results.json``."""

    def parse_known_args(self, args=None, namespace=None):
        argv = list(sys.argv[1:] if args is None else args)
        ns, extras = super().parse_known_args(argv, namespace)
        ns._argv = argv
        return ns, extras


def _device_count(text: str) -> int:
    n = int(text)
    if n < 1:
        raise argparse.ArgumentTypeError(f"must be a positive number of devices, got {n}")
    return n


def _seed(text: str) -> int:
    """``--seed``: an int a PRNG key can hold (jax.random.key takes a signed 64-bit seed; numpy's generators no
    negative one)."""
    n = int(text)
    if not 0 <= n < 2**63:
        raise argparse.ArgumentTypeError(f"must be an integer in [0, 2**63), got {n}")
    return n


def experiment_parser(name: str, description: str) -> argparse.ArgumentParser:
    """The parser every experiment starts from: ``--seed``, ``--data-dir``, ``--out``, ``--quick``,
    ``--no-progress`` and ``--devices``.

    Give every option a help text. Defaults appear once, added by the
    formatter; an option whose default is ``None`` says in its help what
    leaving it out does (as ``--out`` and ``--devices`` do here).
    """
    p = _ExperimentParser(prog=f"experiments/{name}.py", description=description, formatter_class=_HelpFormatter)
    p.add_argument("--seed", type=_seed, default=0, help="PRNG seed; the same seed gives the same result")
    p.add_argument(
        "--data-dir",
        metavar="DIR",
        default=os.environ.get("JDLFS_DATA_DIR") or None,
        help="folder holding the datasets (mnist/, cifar10/, ...), e.g. ../shared/data; "
        "taken from $JDLFS_DATA_DIR when not given",
    )
    p.add_argument(
        "--out",
        metavar="DIR",
        default=None,
        help=f"run folder; default runs/{name}/<timestamp>-<suffix>; pass an existing run folder to resume it",
    )
    p.add_argument("--quick", action="store_true", help="small, fast configuration (a CI smoke run)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument(
        "--devices",
        metavar="N",
        type=_device_count,
        default=None,
        help="train data-parallel on the first N local devices (the batch is split across them); "
        "default: all local devices",
    )
    p.set_defaults(experiment=name)
    return p


def local_devices(args: argparse.Namespace, batch_size: int | None = None) -> list:
    """The devices ``--devices`` asks for: the first N devices, all of them when not given.

    With several processes (``jax.distributed.initialize()``), these are the
    global devices, so the mesh spans every host. ``batch_size`` (the global
    batch) is checked against the count.

    Raises:
      UsageError: more devices asked for than there are, or a batch size the
        device count does not divide.
    """
    available = jax.devices()
    n = len(available) if getattr(args, "devices", None) is None else args.devices
    if n > len(available):
        raise UsageError(
            f"--devices {n} asks for more devices than the {len(available)} available "
            f"({', '.join(str(d) for d in available)})"
        )
    if batch_size is not None and batch_size % n:
        raise UsageError(
            f"the batch size {batch_size} is not divisible by the {n} devices: each device gets an "
            f"equal share; pass --devices N with N dividing {batch_size} (or change --batch-size)"
        )
    return available[:n]


# ----------------------------------------------------------------- run folder and results.json


@dataclass
class _Run:
    """The run :func:`start` began and :func:`finish` / :func:`run_main` end."""

    experiment: str
    out: Path
    header: dict
    t0: float
    created: list[Path] = field(default_factory=list)  # folders this run made, outermost first


_active: _Run | None = None


def _mkdirs(path: Path) -> list[Path]:
    """``mkdir -p path``; return the folders it created, outermost first."""
    missing = []
    p = path
    while not p.exists():
        missing.append(p)
        p = p.parent
    path.mkdir(parents=True, exist_ok=True)
    return missing[::-1]


def _new_run_folder(parent: Path) -> tuple[Path, list[Path]]:
    created = _mkdirs(parent)
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    for _ in range(100):
        out = parent / f"{stamp}-{secrets.token_hex(2)}"
        try:
            out.mkdir(exist_ok=False)
        except FileExistsError:
            continue
        return out, created + [out]
    raise RuntimeError(f"could not create a fresh run folder in {parent}")  # pragma: no cover


def _read_results(out: Path) -> dict | None:
    path = out / RESULTS
    if not path.is_file():
        return None
    try:
        previous = json.loads(path.read_text())
    except (OSError, ValueError):
        return {"status": "unreadable"}
    return previous if isinstance(previous, dict) else {"status": "unreadable"}


def start(args: argparse.Namespace) -> Path:
    """Create (or reuse, to resume) the run folder and write ``results.json`` with status ``"running"``.

    ``args.out`` is set to the folder. With ``--out`` naming an existing run
    folder of the same experiment, that folder is reused and
    ``results.json`` records ``"resumed": true`` and the previous status.

    Raises:
      UsageError: ``--out`` is a file, or a run folder of another experiment.
    """
    global _active
    experiment = args.experiment
    previous = None
    if args.out is None:
        out, created = _new_run_folder(Path("runs") / experiment)
    else:
        out = Path(args.out)
        if out.exists() and not out.is_dir():
            raise UsageError(f"--out {out} is a file, not a folder")
        previous = _read_results(out)
        if previous is not None and previous.get("experiment", experiment) != experiment:
            raise UsageError(
                f"--out {out} is a run folder of {previous['experiment']!r}, not of {experiment!r}; pick another folder"
            )
        created = _mkdirs(out)
    args.out = str(out)
    header = {
        "experiment": experiment,
        "status": "running",
        "started": _now(),
        "argv": getattr(args, "_argv", None),
        "config": _config(args),
        "resumed": previous is not None,
    }
    if previous is not None:
        header["previous_status"] = previous.get("status")
    write_json(out / RESULTS, header)
    _active = _Run(experiment, out, header, time.perf_counter(), created)
    print(f"[{experiment}] writing to {out}" + (" (resuming)" if previous is not None else ""), file=sys.stderr)
    return out


def _environment() -> dict:
    return {
        "jax": jax.__version__,
        "backend": jax.default_backend(),
        "devices": [str(d) for d in jax.devices()],
        "python": platform.python_version(),
        "machine": platform.machine(),
        "cpu_count": os.cpu_count(),
    }


def finish(args: argparse.Namespace, results: dict) -> dict:
    """Rewrite ``results.json`` with status ``"finished"``, the results and run metadata; print the headline.

    Adds ``seed``, ``quick``, ``wall_seconds`` (since :func:`start`),
    ``environment``, and refreshes ``config`` (scripts adjust some arguments
    for ``--quick`` after parsing). Returns exactly what was written, as
    plain JSON values (numpy and jax arrays become lists).

    Raises:
      ValueError: ``results`` uses a key reserved for the run record (:data:`RESERVED_KEYS`).
    """
    global _active
    clash = sorted(set(results) & set(RESERVED_KEYS) - {"experiment"})
    if clash:
        raise ValueError(f"results may not use the keys {clash}: runs.finish writes them")
    run = _active if _active is not None and Path(args.out) == _active.out else None
    header = (
        dict(run.header)
        if run is not None
        else {"experiment": args.experiment, "argv": getattr(args, "_argv", None), "resumed": False}
    )
    t0 = run.t0 if run is not None else getattr(args, "_t0", time.perf_counter())
    record = {**header, "status": "finished", "finished": _now(), "config": _config(args)}
    record.update(results)
    record.setdefault("experiment", args.experiment)
    record["seed"] = args.seed
    record["quick"] = bool(args.quick)
    record["wall_seconds"] = time.perf_counter() - t0
    record["environment"] = _environment()
    write_json(Path(args.out) / RESULTS, record)
    if run is not None:
        _active = None
    record = json.loads(json.dumps(record, default=_to_json))  # numpy / jax values as plain JSON values
    headline = {k: v for k, v in record.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    print(json.dumps(headline, indent=2))
    print(f"[{args.experiment}] results: {Path(args.out) / RESULTS}", file=sys.stderr)
    return record


def _stop(run: _Run, status: str, **extra) -> None:
    """Rewrite ``results.json`` of an unfinished run with ``status``."""
    record = {**run.header, "status": status, "stopped": _now(), "wall_seconds": time.perf_counter() - run.t0, **extra}
    try:
        write_json(run.out / RESULTS, record)
    except OSError as e:  # the folder went away or the disk is full: say so, keep the real error
        print(f"[{run.experiment}] could not update {run.out / RESULTS}: {e}", file=sys.stderr)


def _remove_if_empty(run: _Run) -> bool:
    """Remove the folders this run created if they hold nothing but its ``results.json``."""
    if not run.created or run.created[-1] != run.out:
        return False
    if {p.name for p in run.out.iterdir()} != {RESULTS}:
        return False
    (run.out / RESULTS).unlink()
    for folder in reversed(run.created):
        try:
            folder.rmdir()
        except OSError:  # not empty (another run) or already gone
            break
    return True


# ----------------------------------------------------------------- the script entry point


def _checksum_files(path: Path) -> list[Path]:
    """``MD5SUMS`` / ``SHA256SUMS`` in the folder of ``path`` or up to three folders above it."""
    for folder in [path.parent, *path.parent.parents][:4]:
        found = [folder / n for n in ("SHA256SUMS", "MD5SUMS") if (folder / n).is_file()]
        if found:
            return found
    return []


def user_message(error: BaseException) -> str:
    """The message :func:`run_main` prints for a user mistake: what is wrong and what to do."""
    if isinstance(error, DatasetNotFoundError):
        return error.describe("--data-dir", "pass --data-dir <dir>")
    if isinstance(error, DataFormatError):
        path = Path(error.path)
        lines = [f"{error.path} is corrupt or truncated: {error.problem}"]
        sums = _checksum_files(path) if path.exists() else []
        if sums:
            lines.append(
                f"Check it against the published checksums in {', '.join(map(str, sums))} "
                f"(cd {sums[0].parent} && {sums[0].name.lower()[:-4]}sum -c --ignore-missing "
                f"{sums[0].name}) and download the file again."
            )
        else:
            lines.append(
                "Check it against the checksums published with the dataset (MD5SUMS / SHA256SUMS "
                "next to the data, or the MD5s on the download page) and download the file again."
            )
        return "\n".join(lines)
    return str(error)


def run_main(main: Callable[[Sequence[str] | None], object], argv: Sequence[str] | None = None) -> None:
    """Run a script's ``main(argv)`` and end the process the way a user expects.

    See the module docstring: Ctrl-C exits 130 with one line, a user mistake
    exits 2 with one message, a bug keeps its traceback; ``results.json`` of
    the run :func:`start` began says ``"interrupted"`` / ``"failed"``.
    """
    global _active
    _active = None
    prog = os.path.basename(sys.argv[0]) or "jdlfs"
    try:
        main(argv)
    except KeyboardInterrupt:
        run, _active = _active, None
        line = f"{prog}: interrupted"
        if run is not None:
            _stop(run, "interrupted")
            prog = f"experiments/{run.experiment}.py"
            if (run.out / CHECKPOINT).exists():
                line = f"{prog}: interrupted; rerun with --out {run.out} to resume"
            else:
                line = f"{prog}: interrupted; run folder {run.out} has no checkpoint, a rerun starts over"
        print(line, file=sys.stderr)
        sys.exit(130)
    except SystemExit as e:
        run, _active = _active, None
        if run is not None and e.code not in (0, None):
            _stop(run, "failed", error=f"exited with status {e.code}")
        raise
    except tuple(USER_ERRORS) as e:
        run, _active = _active, None
        message = user_message(e)
        if run is not None:
            prog = f"experiments/{run.experiment}.py"
            if not _remove_if_empty(run):
                _stop(run, "failed", error=message)
        print(f"{prog}: error: {message}", file=sys.stderr)
        sys.exit(2)
    except BaseException as e:
        run, _active = _active, None
        if run is not None:
            _stop(run, "failed", error=f"{type(e).__name__}: {e}")
        raise


# ----------------------------------------------------------------- data and summaries


def load_dataset(args: argparse.Namespace, name: str, *, quick_train: int = 4096, quick_test: int = 1000):
    """Train and test split of dataset ``name`` from ``--data-dir``; with ``--quick``, a fixed random subset.

    Returns:
      ``(x_train, y_train, x_test, y_test)``: numpy arrays as
      :func:`jdlfs.data.load` returns them (images uint8 NHWC, labels int32);
      with ``--quick`` ``quick_train`` / ``quick_test`` examples drawn by a
      fixed permutation (not the first ones: an image-folder copy such as
      CIFAR-10's JPEG zip is stored sorted by class, so its first examples
      are all one class). The subset is the same for every ``--seed``.

    Raises:
      DatasetNotFoundError, DataFormatError: as :func:`jdlfs.data.load`
      (:func:`run_main` turns them into one message).
    """
    x_train, y_train = data.load(name, "train", data_dir=args.data_dir)
    x_test, y_test = data.load(name, "test", data_dir=args.data_dir)
    if args.quick:
        rng = np.random.default_rng(0)
        tr = np.sort(rng.permutation(len(y_train))[:quick_train])
        te = np.sort(rng.permutation(len(y_test))[:quick_test])
        x_train, y_train, x_test, y_test = x_train[tr], y_train[tr], x_test[te], y_test[te]
    return x_train, y_train, x_test, y_test


def epoch_timing(history: Sequence[dict], key: str = "train_seconds") -> dict:
    """Per-epoch timing from a training history.

    Returns:
      ``{"seconds_per_epoch": median over the epochs after the first (the
      first alone if there is only one), "first_epoch_seconds_with_compile":
      the first epoch, which includes compilation}``.
    """
    seconds = [float(h[key]) for h in history]
    if not seconds:
        raise ValueError("epoch_timing: the history is empty")
    return {
        "seconds_per_epoch": float(np.median(seconds[1:] or seconds)),
        "first_epoch_seconds_with_compile": seconds[0],
    }


# ----------------------------------------------------------------- figures


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
                ax.text(
                    j, i, str(conf[i, j]), ha="center", va="center", fontsize=7, color="k" if i != j else "tab:green"
                )
    labels = class_names if class_names is not None else range(k)
    ax.set(
        xlabel="predicted",
        ylabel="true",
        xticks=range(k),
        yticks=range(k),
        title=f"test confusion (accuracy {100 * accuracy:.2f}%)\ncolour: errors; diagonal: correct counts",
    )
    ax.set_xticklabels(labels, rotation=45 if class_names is not None else 0)
    ax.set_yticklabels(labels)
    fig.colorbar(im, ax=ax, shrink=0.8, label="errors")
    return fig
