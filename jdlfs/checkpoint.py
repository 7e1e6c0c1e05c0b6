"""Checkpoints that cannot run code: orbax-checkpoint arrays, a JSON manifest, no pickle.

Format on disk (version 1). A checkpoint is a directory::

    <path>/
      manifest.json     {"format": "jdlfs-checkpoint", "version": 1,
                         "arrays":   [{"path": "params['fc1']['w']", "shape": [2048, 256], "dtype": "float32"}, ...],
                         "files":    {"state/manifest.ocdbt": {"size": 114, "sha256": "..."}, ...},
                         "metadata": {...}}
      state/            what orbax-checkpoint's ``StandardCheckpointHandler`` writes (OCDBT/zarr + orbax's JSON
                        metadata): a flat dict {"000000": leaf 0, "000001": leaf 1, ...} in tree-flatten order

``arrays`` is the manifest of :func:`describe`: one entry per leaf of the saved pytree, in ``jax.tree`` flatten
order, with the key path as :func:`jax.tree_util.keystr` writes it. A PRNG key array (``dtype`` ``key<fry>``)
is stored as its ``jax.random.key_data`` with the implementation's name in ``key_impl``; a zero-size leaf is
described but not stored (orbax refuses empty arrays; it comes back as zeros of its shape). ``files`` lists every
file under ``state/`` with its size and SHA-256: orbax and tensorstore do not checksum the data (a garbled
data file restores silently wrong numbers, a truncated manifest fails with a multi-kilobyte tensorstore error),
so :func:`load` checks every file against this list *before* orbax reads anything. ``metadata`` is the caller's
JSON dict (epoch, history, config...); numpy scalars and arrays in it are converted to Python numbers and lists,
tuples become lists, keys must be strings, NaN and infinities are written as Python's ``json`` writes them.
The file has one line per array and per file, so it reads well in an editor.

Atomicity. :func:`save` writes everything into a sibling directory ``.<name>.partial`` (orbax writes its part
there with its own temp-then-rename), writes ``manifest.json`` last, and only then moves the new checkpoint to
``<path>``: with no previous checkpoint by one ``rename``; otherwise the old one is renamed to ``.<name>.old``,
the new one into place, and the old one deleted. A reader therefore sees the old checkpoint, or the new one,
never a half-written one, and a save that fails anywhere leaves the old checkpoint as it was. (Between the two
renames, a window of microseconds, ``<path>`` does not exist; a crash exactly there leaves the previous
checkpoint at ``.<name>.old`` and the new one at ``.<name>.partial``, which :func:`load` points out.) An
existing ``<path>`` is only ever replaced if it is a checkpoint directory (nothing in it but ``manifest.json``
and ``state``) or empty, so a mistyped path cannot delete a run folder. :func:`save` is synchronous: orbax's
synchronous ``Checkpointer`` is used, and the worker threads it starts have finished when :func:`save` returns.

What is refused, and why. The old checkpoints were pickles, and unpickling runs whatever code the file names,
so a checkpoint from anywhere else was a program. Nothing here unpickles: the manifest is JSON, and the arrays
are read by tensorstore as raw numbers of the dtypes in the manifest (numeric, bool and PRNG-key dtypes only;
``object`` arrays cannot be saved). :func:`load` raises :class:`CheckpointError`, naming the path and the
problem, for: a file (e.g. an old pickle checkpoint) where a checkpoint directory should be; a directory
without ``manifest.json`` (e.g. holding a pickle instead); a manifest that is not valid JSON or not this format;
a tree that does not match ``like`` (a different model, a different optimizer's state), reported at the first
difference before any array is read; a missing, truncated, garbled or unexpected file under ``state/``; and a
64-bit array while ``jax_enable_x64`` is off (JAX would silently narrow it).

Several hosts. Orbax writes the shards of a sharded ``jax.Array`` from the processes that hold them, so every
process calls :func:`save`/:func:`load` with the same path on a shared file system; only process 0 writes
``manifest.json`` and renames, between barriers. This path is untested here (one host, one process).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import os
import shutil
import threading
from pathlib import Path, PurePosixPath
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["CheckpointError", "describe", "exists", "load", "save"]

FORMAT = "jdlfs-checkpoint"
VERSION = 1
MANIFEST = "manifest.json"
STATE = "state"

_CHUNK = 1 << 20


class CheckpointError(ValueError):
    """A checkpoint that cannot be written or read; the message names the path and what is wrong."""

    def __init__(self, path: str | os.PathLike, problem: str):
        self.path = Path(path)
        self.problem = problem
        super().__init__(f"{path}: {problem}")


# ---------------------------------------------------------------- manifest of a tree
def _leaf_spec(leaf) -> tuple[tuple[int, ...], np.dtype] | None:
    """``(shape, dtype)`` of a leaf, or ``None`` if it is not an array (or a Python/numpy scalar)."""
    if isinstance(leaf, (bool, int, float, complex)):
        return (), jax.dtypes.canonicalize_dtype(np.result_type(type(leaf)))
    shape, dtype = getattr(leaf, "shape", None), getattr(leaf, "dtype", None)
    if shape is None or dtype is None:
        return None
    return tuple(int(d) for d in shape), dtype


def _is_key(dtype) -> bool:
    return jax.dtypes.issubdtype(dtype, jax.dtypes.prng_key)


def _storable(dtype) -> bool:
    return _is_key(dtype) or dtype == np.bool_ or jnp.issubdtype(dtype, np.number)


def _flat(tree) -> tuple[list[tuple[str, Any]], Any]:
    leaves, treedef = jax.tree_util.tree_flatten_with_path(tree)
    return [(jax.tree_util.keystr(kp).lstrip("."), leaf) for kp, leaf in leaves], treedef


def describe(tree) -> list[tuple[str, tuple[int, ...], str]]:
    """The manifest of ``tree``: ``[(key_path, shape, dtype), ...]`` in flatten order.

    Leaves may be arrays (jax or numpy), ``jax.ShapeDtypeStruct``, numpy scalars or Python scalars (whose dtype
    is JAX's default for them). Raises TypeError naming the first leaf that is none of these or whose dtype
    cannot be stored (``object``, strings).
    """
    out = []
    for name, leaf in _flat(tree)[0]:
        spec = _leaf_spec(leaf)
        if spec is None:
            raise TypeError(f"{name or 'the tree'} is a {type(leaf).__name__}, not an array")
        if not _storable(spec[1]):
            raise TypeError(
                f"{name or 'the tree'} has dtype {spec[1]}, which a checkpoint cannot hold "
                "(numeric, bool and PRNG key arrays only)"
            )
        out.append((name, spec[0], str(spec[1])))
    return out


def _first_difference(held: list, expected: list) -> str:
    """Sentence naming the first place where the stored manifest and ``like``'s differ ('' if none)."""

    def show(entry):
        return f"{entry[0] or 'the tree'} {entry[1]} {entry[2]}"

    for (hn, hs, hd), (en, es, ed) in zip(held, expected):
        if hn != en:
            where = f"holds {hn or 'the tree'} where the model has {en or 'the tree'}"
            break
        if hs != es:
            return f"holds {hn or 'the tree'} with shape {hs} but the model expects {es}"
        if hd != ed:
            return f"holds {hn or 'the tree'} as {hd} but the model expects {ed}"
    else:
        if len(held) == len(expected):
            return ""
        n = min(len(held), len(expected))
        where = (
            f"the model also has {show(expected[n])}"
            if len(expected) > n
            else f"the checkpoint also holds {show(held[n])}"
        )
    if len(held) != len(expected):
        return f"holds {len(held)} arrays, the model has {len(expected)} (first difference: {where})"
    return where


# ---------------------------------------------------------------- metadata
def _jsonable(value, where: str):
    """``value`` with numpy/jax numbers turned into Python ones; TypeError naming ``where`` otherwise."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, (np.ndarray, jax.Array)):
        return np.asarray(value).tolist()
    if isinstance(value, dict):
        out = {}
        for k, v in value.items():
            if not isinstance(k, str):
                raise TypeError(f"{where} has key {k!r} of type {type(k).__name__}; JSON keys must be strings")
            out[k] = _jsonable(v, f"{where}[{k!r}]")
        return out
    if isinstance(value, (list, tuple)):
        return [_jsonable(v, f"{where}[{i}]") for i, v in enumerate(value)]
    raise TypeError(f"{where} is a {type(value).__name__}, which is not JSON-serialisable")


# ---------------------------------------------------------------- files
def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def _files_under(root: Path) -> list[str]:
    """Relative POSIX paths (from ``root``'s parent) of every file under ``root``, sorted."""
    return sorted(p.relative_to(root.parent).as_posix() for p in root.rglob("*") if not p.is_dir())


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


def _looks_like_pickle(path: Path) -> bool:
    try:
        with open(path, "rb") as f:
            head = f.read(2)
    except OSError:
        return False
    return len(head) == 2 and head[0] == 0x80 and 2 <= head[1] <= 5  # PROTO opcode, protocols 2-5


def _not_a_directory(path: Path) -> CheckpointError:
    if _looks_like_pickle(path):
        return CheckpointError(
            path,
            "is a pickle file, not a checkpoint directory; pickles are refused "
            "because loading one can run arbitrary code (old-format checkpoints "
            "cannot be resumed: start the run again)",
        )
    return CheckpointError(path, "is a file, not a checkpoint directory")


# ---------------------------------------------------------------- orbax, quietly and synchronously
class _DropOrbaxInfo(logging.Filter):
    """Drops orbax's INFO/DEBUG records (about 25 lines per save when INFO logging is on)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.WARNING or f"{os.sep}orbax{os.sep}" not in record.pathname


@contextlib.contextmanager
def _orbax_call():
    """Silence orbax's per-save INFO logging, and wait for the worker threads it started to finish.

    Orbax's synchronous save/restore runs asyncio event loops whose default executors leave worker threads
    ("asyncio_N") shutting down when the call returns; joining them means nothing of the save still runs
    afterwards.
    """
    absl_logger, quiet = logging.getLogger("absl"), _DropOrbaxInfo()
    absl_logger.addFilter(quiet)
    before = set(threading.enumerate())
    try:
        yield
    finally:
        absl_logger.removeFilter(quiet)
        for thread in set(threading.enumerate()) - before:
            if thread.name.startswith("asyncio_") and thread is not threading.current_thread():
                thread.join(timeout=10.0)


def _checkpointer():
    import orbax.checkpoint as ocp  # imported here: ~0.4 s that `import jdlfs` should not pay

    return ocp, ocp.Checkpointer(ocp.StandardCheckpointHandler())


def _barrier(name: str) -> None:
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)


def _brief(e: BaseException) -> str:
    text = str(e).strip().splitlines()[0] if str(e).strip() else ""
    return f"{type(e).__name__}: {text[:300]}{'...' if len(text) > 300 else ''}"


# ---------------------------------------------------------------- save
def _stored_value(leaf, dtype):
    """What orbax writes for one leaf (``None`` for zero-size leaves), and the manifest entry's extra fields."""
    if _is_key(dtype):
        impl = str(jax.random.key_impl(leaf))
        data = jax.random.key_data(leaf)
        return (data if data.size else None), {"key_impl": impl}
    if isinstance(leaf, (bool, int, float, complex, np.generic)):
        leaf = np.asarray(leaf, dtype=dtype)
    return (leaf if leaf.size else None), {}


def _manifest_text(arrays: list, files: dict, metadata: dict) -> str:
    """``manifest.json``: one line per array and per file, so that it reads well in an editor."""
    rows = ",\n  ".join(json.dumps(entry) for entry in arrays)
    digests = ",\n  ".join(f"{json.dumps(rel)}: {json.dumps(info)}" for rel, info in files.items())
    return (
        f'{{"format": {json.dumps(FORMAT)}, "version": {VERSION},\n'
        f' "arrays": [\n  {rows}],\n "files": {{\n  {digests}}},\n'
        f' "metadata": {json.dumps(metadata, indent=1)}}}\n'
    )


def _check_replaceable(path: Path) -> None:
    if path.is_file() or (path.exists() and not path.is_dir()):
        raise CheckpointError(
            path, "exists and is not a checkpoint directory; refusing to replace it (remove it first)"
        )
    if path.is_dir():
        extra = sorted({p.name for p in path.iterdir()} - {MANIFEST, STATE})
        if extra:
            raise CheckpointError(
                path, f"exists and is not a checkpoint (it holds {', '.join(extra[:5])}); refusing to replace it"
            )


def save(path: str | os.PathLike, tree, *, metadata: dict | None = None) -> None:
    """Write ``tree`` (a pytree of arrays) and ``metadata`` (a JSON dict) to the directory ``path``, atomically.

    See the module docstring for the format and what atomic means here. Raises CheckpointError (naming
    ``path``) for a leaf that is not an array, metadata that is not JSON, an existing ``path`` that is not a
    checkpoint, or a failed write; in every case an existing checkpoint at ``path`` is left untouched.
    """
    path = Path(path)
    try:
        manifest = describe(tree)
        meta = _jsonable({} if metadata is None else metadata, "metadata")
        if not isinstance(meta, dict):
            raise TypeError(f"metadata must be a dict, got {type(metadata).__name__}")
    except TypeError as e:
        raise CheckpointError(path, f"cannot save: {e}") from e

    entries, stored = [], {}
    for i, ((_, leaf), (name, shape, dtype)) in enumerate(zip(_flat(tree)[0], manifest)):
        value, extra = _stored_value(leaf, _leaf_spec(leaf)[1])
        if value is not None:
            stored[f"{i:06d}"] = value
        entries.append({"path": name, "shape": list(shape), "dtype": dtype, **extra})

    _check_replaceable(path)
    target = Path(os.path.abspath(path))
    partial = target.parent / f".{target.name}.partial"
    old = target.parent / f".{target.name}.old"
    primary = jax.process_index() == 0
    try:
        if primary:
            target.parent.mkdir(parents=True, exist_ok=True)
            _remove(partial)
            partial.mkdir()
        _barrier(f"jdlfs.checkpoint.save:start:{path}")
        if stored:
            with _orbax_call():
                ocp, checkpointer = _checkpointer()
                checkpointer.save((partial / STATE).absolute(), args=ocp.args.StandardSave(stored))
        if primary:
            _write_manifest(partial, entries, meta)
            _move_into_place(partial, target, old)
        _barrier(f"jdlfs.checkpoint.save:end:{path}")
    except BaseException as e:
        if primary:
            shutil.rmtree(partial, ignore_errors=True)
        if isinstance(e, Exception) and not isinstance(e, CheckpointError):
            raise CheckpointError(
                path, f"could not write the checkpoint ({_brief(e)}); any previous checkpoint there is unchanged"
            ) from e
        raise


def _write_manifest(partial: Path, arrays: list, metadata: dict) -> None:
    """Digest every file orbax wrote and write ``manifest.json`` (durably) into the unfinished checkpoint."""
    state = partial / STATE
    files = {
        rel: {"size": (partial / rel).stat().st_size, "sha256": _sha256(partial / rel)}
        for rel in (_files_under(state) if state.is_dir() else [])
    }
    tmp = partial / (MANIFEST + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(_manifest_text(arrays, files, metadata))
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, partial / MANIFEST)
    _fsync_dir(partial)


def _move_into_place(partial: Path, target: Path, old: Path) -> None:
    """Rename the finished checkpoint to ``target``; a previous one goes aside first and is deleted after."""
    if target.exists():
        _remove(old)
        os.replace(target, old)
        try:
            os.replace(partial, target)
        except BaseException:
            os.replace(old, target)  # put the previous checkpoint back
            raise
        _remove(old)
    else:
        os.replace(partial, target)
    _fsync_dir(target.parent)


# ---------------------------------------------------------------- load
def _read_manifest(path: Path) -> dict:
    if not path.exists():
        hint = ""
        if (path.parent / f".{path.name}.old").is_dir():
            hint = (
                f"; a save was interrupted while replacing it: the previous checkpoint is "
                f"{path.parent / f'.{path.name}.old'}"
            )
        raise CheckpointError(path, f"no checkpoint there{hint}")
    if not path.is_dir():
        raise _not_a_directory(path)
    mpath = path / MANIFEST
    if not mpath.is_file():
        found = sorted(p.name for p in path.iterdir())
        raise CheckpointError(
            path,
            f"has no {MANIFEST}, so it is not a complete jdlfs checkpoint "
            f"(it holds: {', '.join(found[:8]) or 'nothing'})",
        )
    try:
        doc = json.loads(mpath.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(path, f"{MANIFEST} is unreadable or not valid JSON ({_brief(e)})") from e
    try:
        _check_manifest(doc)
    except (TypeError, ValueError, KeyError) as e:
        raise CheckpointError(path, f"{MANIFEST} is not a jdlfs checkpoint manifest: {e}") from e
    return doc


def _check_manifest(doc) -> None:
    if not isinstance(doc, dict):
        raise TypeError(f"it holds a {type(doc).__name__}, not an object")
    if doc.get("format") != FORMAT:
        raise ValueError(f"'format' is not {FORMAT!r}")
    if doc.get("version") != VERSION:
        raise ValueError(f"version {doc.get('version')!r}; this jdlfs reads version {VERSION}")
    if (
        not isinstance(doc.get("arrays"), list)
        or not isinstance(doc.get("files"), dict)
        or not isinstance(doc.get("metadata"), dict)
    ):
        raise TypeError("'arrays' must be a list, 'files' and 'metadata' dicts")
    for i, e in enumerate(doc["arrays"]):
        if not (
            isinstance(e, dict)
            and isinstance(e.get("path"), str)
            and isinstance(e.get("dtype"), str)
            and isinstance(e.get("shape"), list)
            and all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in e["shape"])
        ):
            raise TypeError(f"arrays[{i}] is not {{'path': str, 'shape': [int, ...], 'dtype': str}}")
    for rel, info in doc["files"].items():
        parts = PurePosixPath(rel).parts
        if not parts or parts[0] != STATE or ".." in parts or len(parts) < 2:
            raise ValueError(f"file entry {rel!r} is not a path under {STATE}/")
        if not (isinstance(info, dict) and isinstance(info.get("size"), int) and isinstance(info.get("sha256"), str)):
            raise TypeError(f"file entry {rel!r} has no size and sha256")


def _verify_files(path: Path, files: dict) -> None:
    """Every file under ``state/`` is listed, present, of its size and SHA-256; CheckpointError otherwise."""
    on_disk = set(_files_under(path / STATE)) if (path / STATE).is_dir() else set()
    for rel, info in files.items():
        f = path / rel
        if not f.is_file():
            raise CheckpointError(path, f"{rel} is missing (the checkpoint is incomplete or was modified)")
        size = f.stat().st_size
        if size != info["size"]:
            raise CheckpointError(
                path, f"{rel} is truncated or modified: {size} bytes, the manifest says {info['size']}"
            )
        if _sha256(f) != info["sha256"]:
            raise CheckpointError(path, f"{rel} is corrupted: its SHA-256 does not match the manifest")
    extra = sorted(on_disk - set(files))
    if extra:
        raise CheckpointError(
            path, f"{extra[0]} was not written by save (the checkpoint was modified); refusing to read it"
        )


def _key_data(impl: str) -> jax.ShapeDtypeStruct:
    """Shape and dtype of the data of one key of the PRNG implementation ``impl`` (e.g. (2,) uint32)."""
    return jax.eval_shape(lambda: jax.random.key_data(jax.random.key(0, impl=impl)))


def _target_sharding(leaf):
    sharding = getattr(leaf, "sharding", None)
    return sharding if isinstance(sharding, jax.sharding.Sharding) else None


def load(path: str | os.PathLike, like) -> tuple[Any, dict]:
    """Read the checkpoint at ``path`` into the structure of ``like``; returns ``(tree, metadata)``.

    ``like`` is a pytree of the expected structure whose leaves are arrays or ``jax.ShapeDtypeStruct``. The
    stored manifest is compared with ``describe(like)`` and every file is checked against its SHA-256 before
    any array is read. The tree comes back as JAX arrays of ``like``'s structure, shapes and dtypes, placed with
    each ``like`` leaf's sharding where it has one (else on the default device). Raises CheckpointError naming
    ``path`` and the problem (see the module docstring for the list); it never unpickles anything.
    """
    path = Path(path)
    doc = _read_manifest(path)
    held = [(e["path"], tuple(e["shape"]), e["dtype"]) for e in doc["arrays"]]
    try:
        expected = describe(like)
    except TypeError as e:
        raise CheckpointError(path, f"cannot load into `like`: {e}") from e
    difference = _first_difference(held, expected)
    if difference:
        raise CheckpointError(path, difference)
    leaves, treedef = _flat(like)
    if not jax.config.jax_enable_x64:
        for name, _, dtype in held:
            if not dtype.startswith("key<") and jax.dtypes.canonicalize_dtype(np.dtype(dtype)) != np.dtype(dtype):
                raise CheckpointError(
                    path,
                    f"holds {name or 'the tree'} as {dtype}, which JAX can only hold "
                    "with jax_enable_x64 on (it would be narrowed silently)",
                )
    _verify_files(path, doc["files"])
    plans = [_plan(path, name, leaf, entry) for (name, leaf), entry in zip(leaves, doc["arrays"])]
    restored = _restore(path, {f"{i:06d}": plan[-1] for i, plan in enumerate(plans) if plan[-1] is not None})
    out = [_finish(path, plan, restored.get(f"{i:06d}")) for i, plan in enumerate(plans)]
    return jax.tree_util.tree_unflatten(treedef, out), doc["metadata"]


def _plan(path: Path, name: str, leaf, entry: dict) -> tuple:
    """``(name, shape, dtype, sharding, key_impl, what orbax restores or None)`` for one leaf of ``like``."""
    shape, dtype, sharding, impl = tuple(entry["shape"]), _leaf_spec(leaf)[1], _target_sharding(leaf), None
    stored_shape, stored_dtype, orbax_sharding = shape, dtype, sharding
    if _is_key(dtype):  # key data comes back as numpy, then is wrapped and placed
        impl = entry.get("key_impl")
        try:
            data = _key_data(impl)
        except Exception as e:
            raise CheckpointError(path, f"{name} has unknown PRNG implementation {impl!r}") from e
        stored_shape, stored_dtype, orbax_sharding = shape + data.shape, data.dtype, None
    abstract = None
    if math.prod(stored_shape):  # zero-size leaves were not stored
        abstract = jax.ShapeDtypeStruct(stored_shape, stored_dtype, sharding=orbax_sharding)
    return name, shape, dtype, sharding, impl, abstract


def _restore(path: Path, abstract: dict) -> dict:
    """Orbax reads the arrays: jax arrays where a sharding was given, numpy arrays elsewhere."""
    if not abstract:
        return {}
    if not (path / STATE).is_dir():
        raise CheckpointError(path, f"{STATE}/ is missing (the checkpoint is incomplete)")
    try:
        with _orbax_call():
            ocp, checkpointer = _checkpointer()
            return checkpointer.restore(
                (path / STATE).absolute(), args=ocp.args.StandardRestore(abstract)
            )  # orbax needs absolute paths
    except Exception as e:
        raise CheckpointError(path, f"orbax could not read the arrays in {STATE}/ ({_brief(e)})") from e


def _finish(path: Path, plan: tuple, value):
    """One restored leaf as a jax array of the planned shape, dtype and sharding."""
    name, shape, dtype, sharding, impl, _ = plan
    if _is_key(dtype):
        data = np.zeros(shape + _key_data(impl).shape, _key_data(impl).dtype) if value is None else value
        value = jax.random.wrap_key_data(jnp.asarray(data), impl=impl)
    elif value is None:
        value = np.zeros(shape, dtype)
    if sharding is not None and getattr(value, "sharding", None) != sharding:
        value = jax.device_put(value, sharding)
    elif not isinstance(value, jax.Array):
        value = jnp.asarray(value)
    if tuple(value.shape) != shape or value.dtype != dtype:
        raise CheckpointError(
            path, f"{name} came back with shape {tuple(value.shape)} and dtype {value.dtype}, not {shape} {dtype}"
        )
    return value


def exists(path: str | os.PathLike) -> bool:
    """Whether ``path`` holds a complete jdlfs checkpoint (a directory with a valid ``manifest.json``).

    Only the manifest is read; a checkpoint whose array files were damaged afterwards still "exists", and
    :func:`load` reports the damage.
    """
    try:
        _read_manifest(Path(path))
    except CheckpointError:
        return False
    return True
