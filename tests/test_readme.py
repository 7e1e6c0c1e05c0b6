"""Every ```python block of README.md runs as written.

The blocks run **in order, in one namespace**, as a reader pastes them into one Python session: a later
block may use names an earlier one defined (``jax``, ``x``, ...), so each block must run after the blocks
above it. They run in a fresh subprocess (64-bit mode off, as for users) with the repository root as the
working directory, so paths such as ``data_dir="../shared/data"`` mean what they mean to a reader there;
the whole README gets ``TIMEOUT_S`` seconds. One pytest item per block reports that block: a failure shows
its README line numbers and traceback; blocks after a failed block are not run (a broken namespace would
only report follow-on errors) and fail as "not reached".

A block that loads real data (it calls ``data.load(`` or passes ``data_dir=``) runs when the data is there:
``$JDLFS_DATA_DIR`` (tests/conftest.py sets it to ``../shared/data`` when that exists) or ``../shared/data``
beside the repository. Only when neither exists is it skipped, with the reason, together with the blocks
after it (they may use what it loaded). ```bash and other blocks are not run.

This file is also the block runner: ``python tests/test_readme.py BLOCKS.json RESULTS.json``.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import subprocess
import sys
import time
import traceback
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
TIMEOUT_S = 300  # for all blocks together (today ~10 s); the default suite must stay under ~10 min
_NEEDS_DATA = re.compile(r"\bdata\.load\(|\bdata_dir\s*=")
_FENCE = re.compile(r"^(?P<indent>[ \t]*)(?P<fence>`{3,}|~{3,})[ \t]*(?P<info>[^`\s]*)[^`]*$")


def python_blocks(markdown: str) -> list[dict]:
    """The fenced code blocks tagged ``python`` (or ``py``/``python3``), in order.

    Each is ``{"index": i, "line": first code line (1-based), "code": dedented text}``; a block
    indented under a list item loses the fence's indentation.
    """
    blocks, lines, i = [], markdown.splitlines(), 0
    while i < len(lines):
        m = _FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        indent, fence, info = m["indent"], m["fence"], m["info"].lower()
        close = re.compile(rf"^[ \t]*{re.escape(fence[0])}{{{len(fence)},}}[ \t]*$")
        j = i + 1
        while j < len(lines) and not close.match(lines[j]):
            j += 1
        if info in ("python", "py", "python3"):
            body = [ln[len(indent) :] if ln.startswith(indent) else ln.lstrip() for ln in lines[i + 1 : j]]
            blocks.append({"index": len(blocks), "line": i + 2, "code": "\n".join(body) + "\n"})
        i = j + 1
    return blocks


def data_dir_available() -> str | None:
    """The dataset directory a README block can use, or None when there is none."""
    for d in (os.environ.get("JDLFS_DATA_DIR"), REPO.parent / "shared" / "data"):
        if d and Path(d).is_dir():
            return str(d)
    return None


def mark_data_blocks(blocks: list[dict], data_dir: str | None) -> list[dict]:
    """Copies of ``blocks``; with no ``data_dir``, the ones that load real data get a ``skip`` reason."""
    planned = [dict(b) for b in blocks]
    for b in planned:
        if data_dir is None and _NEEDS_DATA.search(b["code"]):
            b["skip"] = (
                f"{_describe(b)} loads real data and none was found: set JDLFS_DATA_DIR or put the "
                f"datasets in {REPO.parent / 'shared' / 'data'} (see the README's Data section)"
            )
    return planned


def _describe(block: dict) -> str:
    n = block["code"].count("\n")
    return f"README.md block {block['index'] + 1} (lines {block['line']}-{block['line'] + n - 1})"


def run_blocks(blocks: list[dict], workdir: Path, timeout_s: float, tmp: Path) -> list[dict]:
    """Run ``blocks`` in one namespace in a subprocess; one result dict per block.

    ``status`` is ``"passed"``, ``"failed"`` (with ``error``), ``"skipped"`` (with ``reason``), or
    ``"not reached"`` (an earlier block failed, or the time ran out: ``reason``); ``seconds`` and the
    block's ``output`` where it ran.
    """
    todo, results_file = tmp / "blocks.json", tmp / "results.json"
    todo.write_text(json.dumps(blocks))
    env = dict(os.environ, MPLBACKEND="Agg", PYTHONUNBUFFERED="1")
    try:
        proc = subprocess.run(
            [sys.executable, str(Path(__file__).resolve()), str(todo), str(results_file)],
            cwd=workdir,
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout_s,
        )
        crash = None if proc.returncode == 0 else f"runner exited {proc.returncode}:\n{proc.stderr[-4000:]}"
    except subprocess.TimeoutExpired:
        crash = f"timed out: all README blocks together took more than {timeout_s:.0f} s"
    done = json.loads(results_file.read_text()) if results_file.exists() else []
    for b in blocks[len(done) :]:
        done.append({"index": b["index"], "status": "not reached", "reason": crash or "runner stopped early"})
    return done


def _runner_main(todo: str, results_file: str) -> None:
    """Execute the blocks in ``todo`` one after another in one namespace; write results after each."""
    blocks, results = json.loads(Path(todo).read_text()), []
    namespace: dict = {"__name__": "__main__"}
    stop = None  # why the remaining blocks do not run
    for b in blocks:
        res = {"index": b["index"]}
        if stop:
            res.update(status="not reached", reason=stop)
        elif b.get("skip"):
            res.update(status="skipped", reason=b["skip"])
            stop = f"an earlier block was skipped: {b['skip']}"
        else:
            # Padding with newlines makes tracebacks show README.md line numbers.
            code = compile("\n" * (b["line"] - 1) + b["code"], "README.md", "exec", dont_inherit=True)
            out, t0 = io.StringIO(), time.perf_counter()
            try:
                with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
                    exec(code, namespace)
                res.update(status="passed")
            except BaseException as e:  # noqa: BLE001 - SystemExit/KeyboardInterrupt in a block fail it too
                tb = e.__traceback__.tb_next  # from the block's own frame on, without this runner's
                res.update(status="failed", error="".join(traceback.format_exception(type(e), e, tb)))
                stop = f"README.md block {b['index'] + 1} failed"
            res.update(seconds=round(time.perf_counter() - t0, 2), output=out.getvalue()[-4000:])
        results.append(res)
        Path(results_file).write_text(json.dumps(results))


# ---------------------------------------------------------------------------
# The README itself
# ---------------------------------------------------------------------------

BLOCKS = python_blocks(README.read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def readme_results(tmp_path_factory):
    blocks = mark_data_blocks(BLOCKS, data_dir_available())
    return run_blocks(blocks, REPO, TIMEOUT_S, tmp_path_factory.mktemp("readme"))


def test_readme_has_python_blocks():
    assert BLOCKS, "README.md has no ```python block (did the fence syntax change?)"


@pytest.mark.parametrize("block", BLOCKS, ids=lambda b: f"block{b['index'] + 1}-line{b['line']}")
def test_readme_block_runs(block, readme_results):
    res = readme_results[block["index"]]
    if res["status"] == "skipped":
        pytest.skip(res["reason"])
    where = _describe(block)
    assert res["status"] != "not reached", f"{where} did not run: {res['reason']}"
    assert res["status"] == "passed", (
        f"{where} fails as written:\n{block['code']}\n{res['error']}\noutput:\n{res['output']}"
    )


# ---------------------------------------------------------------------------
# The extractor and the runner (on small made-up READMEs)
# ---------------------------------------------------------------------------

_SAMPLE = """# Title

```bash
echo not python
```

```python
a = 1
```

1. a list item

   ```python
   b = a + 1
       # indented comment keeps its own indentation
   ```

````python
s = "```"
````

~~~py
c = 3
~~~
"""


def test_python_blocks_extracts_python_fences_in_order_with_readme_lines():
    blocks = python_blocks(_SAMPLE)
    assert [b["code"] for b in blocks] == [
        "a = 1\n",
        "b = a + 1\n    # indented comment keeps its own indentation\n",
        's = "```"\n',
        "c = 3\n",
    ]
    lines = _SAMPLE.splitlines()
    for b in blocks:  # "line" is the README line of the block's first code line
        assert lines[b["line"] - 1].strip() == b["code"].splitlines()[0].strip()


def test_runner_shares_one_namespace_and_reports_the_failing_readme_line(tmp_path):
    blocks = python_blocks(
        "```python\nx = 2\n```\n\n```python\nprint(x * 21)\ny = undefined_name\n```\n\n```python\nz = 1\n```\n"
    )
    results = run_blocks(blocks, tmp_path, 60, tmp_path)
    assert [r["status"] for r in results] == ["passed", "failed", "not reached"]
    assert results[1]["output"] == "42\n"  # the second block saw the first block's x
    assert "NameError" in results[1]["error"] and 'File "README.md", line 7' in results[1]["error"]


def test_blocks_that_load_data_are_skipped_only_without_data():
    blocks = python_blocks(
        "```python\nimport jax\n```\n\n```python\nx, y = data.load('mnist', 'test')\n```\n"
        "\n```python\nload_mnist(data_dir='/d')\n```\n"
    )
    assert [bool(b.get("skip")) for b in mark_data_blocks(blocks, None)] == [False, True, True]
    assert "JDLFS_DATA_DIR" in mark_data_blocks(blocks, None)[1]["skip"]
    assert not any(b.get("skip") for b in mark_data_blocks(blocks, "/some/data"))
    assert not any(b.get("skip") for b in blocks)  # the input is left as it was


def test_runner_skips_a_block_and_the_blocks_after_it(tmp_path):
    blocks = python_blocks(
        "```python\nimport os\nprint(os.getcwd())\n```\n\n```python\nq = 1\n```\n\n```python\nr = q\n```\n"
    )
    blocks[1]["skip"] = "needs data"
    results = run_blocks(blocks, tmp_path, 60, tmp_path)
    assert [r["status"] for r in results] == ["passed", "skipped", "not reached"]
    assert results[0]["output"].strip() == str(tmp_path)  # runs in the given working directory
    assert results[1]["reason"] == "needs data"


if __name__ == "__main__":
    _runner_main(*sys.argv[1:])
