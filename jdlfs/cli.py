"""The ``jdlfs`` console script.

``jdlfs check`` runs :func:`jdlfs.gradcheck.check_vjp` on every op
configuration in :mod:`jdlfs.op_cases` (in float32 and float64 by default) and
prints one table row per check: op, configuration, relative error vs
autodiff, vs float64 finite differences, vs the independent reference, and
pass/FAIL. The exit status is 1 if any check fails.
"""

from __future__ import annotations

import argparse
import sys
import time


def _check(args: argparse.Namespace) -> int:
    import jax

    jax.config.update("jax_enable_x64", True)  # float64 cases and finite differences
    import jax.numpy as jnp
    import numpy as np

    from .gradcheck import check_vjp, format_table
    from .op_cases import CASES

    dtypes = {"float32": [np.float32], "float64": [np.float64], "both": [np.float32, np.float64]}[args.dtype]
    cases = [c for c in CASES if not args.op or c.op in args.op]
    if not cases:
        print(f"no op matches {args.op}; known ops: {sorted({c.op for c in CASES})}", file=sys.stderr)
        return 2
    reports, t0 = [], time.perf_counter()
    for dtype in dtypes:
        for case in cases:
            fargs = tuple(jnp.asarray(a) for a in case.make_args(np.random.default_rng(args.seed), np.dtype(dtype)))
            report = check_vjp(case.fn, *fargs, reference=case.reference, seed=args.seed, name=case.op)
            report.config = f"{np.dtype(dtype).name} {case.config}"
            reports.append(report)
            if args.verbose or not report.passed:
                print(report, file=sys.stderr)
    table = format_table(reports)
    if sys.stdout.isatty():  # green pass, red FAIL on a terminal
        table = table.replace(" pass", " \033[32mpass\033[0m").replace(" FAIL", " \033[31mFAIL\033[0m")
    print(table)
    failed = [r for r in reports if not r.passed]
    print()
    for d in dtypes:
        name = np.dtype(d).name
        rs = [r for r in reports if r.config.startswith(name)]
        w = {
            k: float(np.nanmax([np.nan if r.worst[k] is None else r.worst[k] for r in rs] + [0.0]))
            for k in ("autodiff", "fd", "reference")
        }
        if any(any(v is not None and not np.isfinite(v) for v in r.worst.values()) for r in rs):
            w = {k: float("nan") for k in w}  # a NaN anywhere is the headline
        print(
            f"worst {name}: vs autodiff {w['autodiff']:.1e}, vs finite differences (float64) {w['fd']:.1e}, "
            f"vs reference {w['reference']:.1e}"
        )
    print(f"{len(reports) - len(failed)}/{len(reports)} checks passed in {time.perf_counter() - t0:.1f} s")
    return 1 if failed else 0


def build_parser() -> argparse.ArgumentParser:
    """The ``jdlfs`` argument parser (every option documented, each default stated once)."""
    parser = argparse.ArgumentParser(prog="jdlfs", description="JAX deep learning from scratch.")
    sub = parser.add_subparsers(
        dest="command", required=True, metavar="COMMAND", help="`jdlfs COMMAND -h` lists a command's options"
    )
    check_help = "verify every hand-written backward rule three ways and print a table"
    p = sub.add_parser(
        "check",
        help=check_help,
        description=(
            "Check every op configuration of jdlfs.op_cases with jdlfs.gradcheck.check_vjp: the hand-written "
            "backward rule against JAX autodiff, float64 finite differences and an independent reference. "
            "Prints one row per check; exits with status 1 if any check fails."
        ),
    )
    p.add_argument(
        "--dtype",
        choices=["float32", "float64", "both"],
        default="both",
        help="precision of the checked inputs (default: %(default)s)",
    )
    p.add_argument(
        "--op", action="append", metavar="OP", help="only this op (repeatable), e.g. --op conv2d (default: every op)"
    )
    p.add_argument(
        "--seed", type=int, default=0, help="seed for inputs, cotangents and directions (default: %(default)s)"
    )
    p.add_argument("-v", "--verbose", action="store_true", help="print every per-argument report")
    p.set_defaults(run=_check)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
