"""What :func:`~jdlfs.gradcheck.check_vjp` returns: per-argument and per-output results, the
report, and its text rendering (``str(report)``, :func:`format_table`)."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Any

import numpy as np


def _dtype_short(dtype) -> str:
    try:
        dt = np.dtype(dtype)
    except TypeError:
        return str(dtype)
    short = {
        "float16": "f16",
        "bfloat16": "bf16",
        "float32": "f32",
        "float64": "f64",
        "int8": "i8",
        "int16": "i16",
        "int32": "i32",
        "int64": "i64",
        "uint8": "u8",
        "uint16": "u16",
        "uint32": "u32",
        "uint64": "u64",
        "bool": "bool",
    }
    return short.get(dt.name, dt.name)


def _fmt_aval(shape, dtype) -> str:
    if shape is None:
        return str(dtype)
    return f"{_dtype_short(dtype)}[{','.join(map(str, shape))}]"


def _fmt_err(x) -> str:
    if x is None:
        return "-"
    if isinstance(x, float) and math.isnan(x):
        return "nan"
    return f"{x:.1e}"


def _worst(values) -> float | None:
    vals = [v for v in values if v is not None]
    if not vals:
        return None
    if any(math.isnan(v) for v in vals):
        return float("nan")
    return max(vals)


@dataclasses.dataclass
class ArgResult:
    """Result for one positional argument of the checked function.

    ``kind`` is ``"float"`` (differentiated), ``"int"`` (integer/bool array,
    held fixed), ``"key"`` (PRNG key array, held fixed) or ``"static"``
    (Python value, held fixed).  Error fields are ``None`` when the check did
    not apply; the ``*_ok`` flags are ``None`` likewise.
    """

    index: int
    kind: str
    shape: tuple | None
    dtype: str
    autodiff_max_abs: float | None = None
    autodiff_rel: float | None = None
    autodiff_ok: bool | None = None
    fd_rel: float | None = None  # worst over directions
    fd_values: tuple | None = None  # (fd, analytic) of the worst direction
    fd_ok: bool | None = None
    reference_max_abs: float | None = None
    reference_rel: float | None = None
    reference_ok: bool | None = None
    zero_cotangent_ok: bool | None = None  # int/key args: hand cotangent is float0/zero
    # Low-precision args: relative distance of each gradient to the float64 hand
    # VJP (verified by FD), and the checks passed on that accuracy comparison.
    vs_float64: dict | None = None
    accepted_by_accuracy: list = dataclasses.field(default_factory=list)

    @property
    def passed(self) -> bool:
        flags = (self.autodiff_ok, self.fd_ok, self.reference_ok, self.zero_cotangent_ok)
        return all(f is not False for f in flags)


@dataclasses.dataclass
class OutputResult:
    """Forward comparison for one output leaf (hand ``fwd`` vs stripped primal,
    and vs reference)."""

    index: int
    path: str
    shape: tuple
    dtype: str
    stripped_max_abs: float | None = None
    stripped_rel: float | None = None
    stripped_ok: bool | None = None
    reference_max_abs: float | None = None
    reference_rel: float | None = None
    reference_ok: bool | None = None

    @property
    def passed(self) -> bool:
        return self.stripped_ok is not False and self.reference_ok is not False


@dataclasses.dataclass
class VJPReport:
    """Outcome of :func:`check_vjp`.

    ``worst`` maps ``"autodiff"``, ``"fd"`` and ``"reference"`` to the worst
    relative error of that check over all arguments and (for autodiff and
    reference) forward output leaves, or ``None`` if the check was not run.
    """

    name: str
    config: str
    args: list[ArgResult]
    outputs: list[OutputResult]
    tolerances: dict
    custom_vjp_calls: int
    unstripped_custom_vjp_calls: int = 0
    errors: list[str] = dataclasses.field(default_factory=list)
    notes: list[str] = dataclasses.field(default_factory=list)
    has_reference: bool = False

    @property
    def passed(self) -> bool:
        return not self.errors and all(a.passed for a in self.args) and all(o.passed for o in self.outputs)

    @property
    def worst(self) -> dict[str, float | None]:
        return {
            "autodiff": _worst([a.autodiff_rel for a in self.args] + [o.stripped_rel for o in self.outputs]),
            "fd": _worst([a.fd_rel for a in self.args]),
            "reference": (
                _worst([a.reference_rel for a in self.args] + [o.reference_rel for o in self.outputs])
                if self.has_reference
                else None
            ),
        }

    def as_row(self) -> dict[str, Any]:
        w = self.worst
        return {
            "op": self.name,
            "config": self.config,
            "vs_autodiff": w["autodiff"],
            "vs_fd": w["fd"],
            "vs_reference": w["reference"],
            "passed": self.passed,
        }

    def raise_if_failed(self) -> None:
        if not self.passed:
            raise AssertionError(str(self))

    def __str__(self) -> str:
        ok = lambda f: "-" if f is None else ("ok" if f else "FAIL")  # noqa: E731
        status = "PASSED" if self.passed else "FAILED"
        title = self.name + (f" [{self.config}]" if self.config else "")
        lines = [f"check_vjp {title}: {status}  ({self.custom_vjp_calls} custom_vjp call(s))"]
        w = self.worst
        lines.append(
            "  worst rel. error: autodiff {}  fd {}  reference {}".format(
                _fmt_err(w["autodiff"]), _fmt_err(w["fd"]), _fmt_err(w["reference"])
            )
        )
        for o in self.outputs:
            s = f"  out{o.path:<8} {_fmt_aval(o.shape, o.dtype):<16} forward vs primal "
            s += f"rel {_fmt_err(o.stripped_rel)} (abs {_fmt_err(o.stripped_max_abs)}) {ok(o.stripped_ok)}"
            if o.reference_ok is not None:
                s += f" | vs reference rel {_fmt_err(o.reference_rel)} {ok(o.reference_ok)}"
            lines.append(s)
        for a in self.args:
            head = f"  arg {a.index:<6} {_fmt_aval(a.shape, a.dtype):<16}"
            if a.kind == "float":
                s = (
                    f"{head} autodiff rel {_fmt_err(a.autodiff_rel)} "
                    f"(abs {_fmt_err(a.autodiff_max_abs)}) {ok(a.autodiff_ok)}"
                )
                if a.fd_ok is not None:
                    s += f" | fd rel {_fmt_err(a.fd_rel)} {ok(a.fd_ok)}"
                    if a.fd_values is not None and not a.fd_ok:
                        s += " (fd {:.6e} vs analytic {:.6e})".format(*a.fd_values)
                if a.reference_ok is not None:
                    s += (
                        f" | reference rel {_fmt_err(a.reference_rel)} "
                        f"(abs {_fmt_err(a.reference_max_abs)}) {ok(a.reference_ok)}"
                    )
                if a.accepted_by_accuracy:
                    d = a.vs_float64
                    s += (
                        f" | {'/'.join(a.accepted_by_accuracy)} accepted: as accurate vs float64 "
                        f"(hand {_fmt_err(d['hand'])}, "
                        + ", ".join(f"{k} {_fmt_err(v)}" for k, v in d.items() if k != "hand")
                        + ")"
                    )
                if not a.passed:
                    s += f"   <-- argument {a.index} FAILED"
            elif a.kind in ("int", "key"):
                s = f"{head} held fixed; hand cotangent float0/zero {ok(a.zero_cotangent_ok)}"
                if not a.passed:
                    s += f"   <-- argument {a.index} FAILED"
            else:
                s = f"{head} static, held fixed"
            lines.append(s)
        if self.unstripped_custom_vjp_calls:
            lines.append(
                f"  note: {self.unstripped_custom_vjp_calls} custom_vjp call(s) could not be "
                "stripped; the autodiff check partly compares the custom rule with itself"
            )
        for n in self.notes:
            lines.append(f"  note: {n}")
        for e in self.errors:
            lines.append(f"  ERROR: {e}")
        t = self.tolerances
        dt = ", ".join(f"{k} {v['autodiff']:.0e}/{v['reference']:.0e}" for k, v in t.items() if isinstance(v, dict))
        lines.append(f"  tolerances (autodiff/reference): {dt}; fd {t['fd']:.0e}")
        return "\n".join(lines)


def format_table(reports: Sequence[VJPReport]) -> str:
    """Render reports as an aligned text table (one row per report)."""
    header = ["op", "configuration", "rel. err vs autodiff", "vs finite diff.", "vs reference", "result"]
    rows = []
    for r in reports:
        row = r.as_row()
        rows.append(
            [
                str(row["op"]),
                str(row["config"]),
                _fmt_err(row["vs_autodiff"]),
                _fmt_err(row["vs_fd"]),
                _fmt_err(row["vs_reference"]),
                "pass" if row["passed"] else "FAIL",
            ]
        )
    widths = [max(len(h), *(len(row[i]) for row in rows)) for i, h in enumerate(header)]
    left = {0, 1}

    def fmt(cells):
        return "  ".join(
            c.ljust(w) if i in left else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths))
        ).rstrip()

    out = [fmt(header), "  ".join("-" * w for w in widths)]
    out += [fmt(row) for row in rows]
    return "\n".join(out)
