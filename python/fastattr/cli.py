"""The ``fastattr`` command: ``fastattr report`` (the main job), ``fastattr evaluate`` (a dataset streamed)
and ``fastattr bench``.

Errors a person can act on print one line and exit non-zero; ``--debug`` shows the traceback.
"""
from __future__ import annotations

import argparse
import sys
from typing import Optional

import torch

BENCHES: dict[str, str] = {
    "sparsemax": "fastattr.bench.sparsemax",
    "ig": "fastattr.bench.ig",
    "metrics": "fastattr.bench.metrics",
    "cd": "fastattr.bench.cd",
    "cdep": "fastattr.bench.cdep",
    "perturb": "fastattr.bench.perturb",
    "shap": "fastattr.bench.shap",
    "agg": "fastattr.bench.agg",
    "sop": "fastattr.bench.sop",
    "theory": "fastattr.bench.theory",
    "iba": "fastattr.bench.iba",
    "seann": "fastattr.bench.seann",
}


class UserError(Exception):
    """An error caused by the command line or the user's files: shown as one line."""


def _threads(n: Optional[int]) -> None:
    if n is not None:
        if n < 1:
            raise UserError(f"--threads must be a positive integer, got {n}")
        torch.set_num_threads(n)


def _bench(args: argparse.Namespace) -> int:
    import importlib

    from .bench import write_results
    from .report import ReportError, usable_device, writable_folder

    _threads(args.threads)
    if args.repeat < 1:
        raise UserError(f"--repeat must be a positive integer, got {args.repeat}")
    try:
        if args.device is not None:
            usable_device(args.device)
        if args.out:  # checked before hours of timing, not after
            writable_folder(args.out)
    except ReportError as e:
        raise UserError(str(e)) from e
    names = list(BENCHES) if args.which == "all" else [args.which]
    picked = {}
    if args.tables is not None:
        module = importlib.import_module(BENCHES[args.which]) if args.which != "all" else None
        choices = list(getattr(module, "TABLES", ()))
        if not choices:
            raise UserError(f"--tables picks tables of one bench that names them (metrics, agg, sop), not {args.which}")
        wanted = [t.strip() for t in args.tables.split(",") if t.strip()]
        unknown = [t for t in wanted if t not in choices]
        if unknown or not wanted:
            raise UserError(f"--tables must name tables of bench {args.which}: {', '.join(choices)}; "
                            f"got {args.tables!r}")
        picked = {"tables": wanted}
    tables, path = [], None
    for name in names:
        module = importlib.import_module(BENCHES[name])
        for table in module.default_tables(device=args.device, repeat=args.repeat, **picked):
            print(table.render(), flush=True)
            print()
            tables.append(table)
            if args.out:  # rewritten after every table, so a run cut short keeps what it measured
                try:
                    path = write_results(tables, args.out, tables[0].params.get("device", "cpu"), tag=args.which)
                except OSError as e:
                    raise UserError(f"cannot write results to {args.out}: {e.strerror or e}") from e
    if path is not None:
        print(f"results written to {path}")
    return 0


def _defaults(text: Optional[str]) -> Optional[dict]:
    """``--defaults name=value,...`` as ``{name: int or None}`` (``none`` for None)."""
    if text is None:
        return None
    out = {}
    for pair in (p.strip() for p in text.split(",") if p.strip()):
        name, eq, value = (s.strip() for s in pair.partition("="))
        if not eq or not name or not value:
            raise UserError(f"--defaults takes name=value pairs separated by commas, got {pair!r}")
        if value.lower() == "none":
            out[name] = None
            continue
        try:
            out[name] = int(value)
        except ValueError:
            raise UserError(f"--defaults {name} must be an integer or 'none', got {value!r}") from None
    if not out:
        raise UserError(f"--defaults takes name=value pairs separated by commas, got {text!r}")
    return out


def _split(value: Optional[str]) -> Optional[list[str]]:
    """A comma-separated option as a list of names (None when not given)."""
    return [p.strip() for p in value.split(",") if p.strip()] if value else None


def _target(text: Optional[str]):
    """``--target``: None, ``"pred"``, ``"label"`` or a class index."""
    if text in (None, "pred", "label"):
        return text
    try:
        return int(text)
    except ValueError:
        raise UserError(f"--target must be 'pred', 'label' or a class index, got {text!r}") from None


def _report(args: argparse.Namespace) -> int:
    from .report import ReportError, run_report, summary_table

    target = _target(args.target)
    _threads(args.threads)
    try:
        result = run_report(model=args.model, data=args.data, target=target, methods=_split(args.methods),
                            metrics=_split(args.metrics), n=args.n, device=args.device, out=args.out,
                            seed=args.seed, progress=not args.no_progress, defaults=_defaults(args.defaults),
                            max_seconds=args.max_seconds, boxes=args.boxes)
    except ReportError as e:
        raise UserError(str(e)) from e
    if result is None:  # a torchrun rank other than 0: rank 0 writes the report
        return 0
    print(summary_table(result))
    print(f"\nreport written to {result.out / 'index.html'}")
    return 0


def _stream(args: argparse.Namespace) -> int:
    from .report import ReportError
    from .report.streaming import stream_report

    target = _target(args.target)
    _threads(args.threads)
    try:
        result = stream_report(model=args.model, data=args.data, out=args.out, methods=_split(args.methods),
                               metrics=_split(args.metrics), target=target, batch_size=args.batch_size,
                               resume=args.resume, seed=args.seed, defaults=_defaults(args.defaults),
                               device=args.device, progress=not args.no_progress)
    except ReportError as e:
        raise UserError(str(e)) from e
    if result is None:  # a torchrun rank other than 0: rank 0 merges and prints
        return 0
    for metric, by in result.summary.items():
        print(f"{metric}: " + ", ".join(f"{m} {v:.4f}" for m, v in by.items()))
    print(f"\n{result.n} rows in {result.path}")
    return 0


def _names() -> tuple[str, str]:
    """The method and metric names ``fastattr report`` knows, for ``--help``."""
    from .report import CONTROL
    from .report.running import known_names

    methods, metrics = known_names()
    return ", ".join([*methods, CONTROL]), ", ".join(metrics)


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="show tracebacks on errors")
    parser = argparse.ArgumentParser(prog="fastattr", description="Fast feature attribution and its evaluation.",
                                     parents=[common])
    sub = parser.add_subparsers(dest="command", required=True)

    report = sub.add_parser("report", parents=[common], help="attribute, evaluate and write an HTML report (default: embedded digits CNN)")
    report.add_argument("--model", default=None, help="'package.module:factory' returning the model, the module importable from the "
                        "current folder or PYTHONPATH (default: embedded digits CNN)")
    report.add_argument("--data", default=None, help=".pt file (a tensor, (x, y) or {'x': x, 'y': y}, one label per input), .npy "
                        "file or a folder of images (default: digits test split)")
    report.add_argument("--target", default=None, help="'pred' (default), 'label', or a class index")
    method_names, metric_names = _names()
    report.add_argument("--methods", default=None,
                        help="comma-separated attribution methods (default: all that apply to the model and data; "
                             f"'random' is a control map): {method_names}")
    report.add_argument("--metrics", default=None,
                        help="comma-separated metrics (default: the faithfulness metrics, sparseness, complexity and "
                             "random_logit; the relative stabilities and model_randomisation on request): "
                             f"{metric_names}")
    report.add_argument("--n", "--num-inputs", dest="n", type=int, default=32,
                        help="number of inputs (default 32; under torchrun spell it --num-inputs)")
    report.add_argument("--device", default="cpu", help="cpu or cuda")
    report.add_argument("--out", default="report", help="output folder (default ./report)")
    report.add_argument("--seed", type=int, default=0)
    report.add_argument("--defaults", default=None,
                        help="comma-separated name=value replacing the settings chosen from the input size "
                             "(printed with the summary): patch_size (feature ablation's and the ranked metrics' "
                             "square patches, 'none' for single elements / pixels), occlusion_window, "
                             "surrogate_block (KernelSHAP / LIME), curve_step (features per deletion / insertion "
                             "step), perturbations (KernelSHAP / LIME / RISE samples, 'none' for theirs), "
                             "agg_samples (AGG's m), sea_nn_grid ('none' for its own); e.g. "
                             "--defaults patch_size=8,curve_step=2")
    report.add_argument("--boxes", default=None,
                        help=".pt file of one integer box x0,y0,x1,y1 per input ([N, 4], end exclusive): adds the "
                             "localisation metrics (ehr, pointing_game, iou) to the default metrics")
    report.add_argument("--max-seconds", type=float, default=None,
                        help="a budget for the whole run: after the warm-up (every method and metric once on the "
                             "first input) the estimate is printed and --n shrinks to the inputs that fit")
    report.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    report.add_argument("--no-progress", action="store_true", help="no progress bars")
    report.set_defaults(func=_report)

    stream = sub.add_parser("evaluate", parents=[common],
                            help="score methods on every input of a dataset, one JSON line per input, as they come")
    stream.add_argument("--model", default=None, help="'package.module:factory' (default: the embedded digits CNN)")
    stream.add_argument("--data", default=None, help="a folder of images or a .npy array (read one input at a time), "
                        "or a .pt file (default: the digits test split)")
    stream.add_argument("--out", default="rows.jsonl", help="the JSON-lines file of per-input rows (default rows.jsonl)")
    stream.add_argument("--methods", default=None, help="comma-separated attribution methods "
                        "(default: saliency,input_x_gradient,integrated_gradients)")
    stream.add_argument("--metrics", default=None, help="comma-separated metrics "
                        "(default: deletion,insertion,mdrs,aupc,sparseness)")
    stream.add_argument("--target", default=None, help="'pred' (default), 'label', or a class index")
    stream.add_argument("--batch-size", type=int, default=32, help="inputs per batch (keep it for --resume)")
    stream.add_argument("--resume", action="store_true", help="keep the complete batches in --out, run the rest")
    stream.add_argument("--seed", type=int, default=0)
    stream.add_argument("--defaults", default=None, help="as for report: patch_size, curve_step")
    stream.add_argument("--device", default="cpu", help="cpu or cuda")
    stream.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    stream.add_argument("--no-progress", action="store_true", help="no progress bar")
    stream.set_defaults(func=_stream)

    bench = sub.add_parser("bench", parents=[common], help="time fastattr against its references and peer libraries")
    bench.add_argument("which", nargs="?", default="all", choices=[*BENCHES, "all"])
    bench.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    bench.add_argument("--repeat", type=int, default=7, help="timed runs per measurement (median reported)")
    bench.add_argument("--threads", type=int, default=None, help="torch.set_num_threads before timing")
    bench.add_argument("--out", default=None, help="folder for the JSON record (e.g. benchmarks/results)")
    bench.add_argument("--tables", default=None,
                       help="comma-separated tables of the chosen bench, in this order (metrics: flipping, "
                            "evaluate, stability, impute, road, resnet; agg: qp, aggregate, aggregate_released, pool, conv, "
                            "reproduction; sop: forward, throughput (CUDA by default), reproduction; default: all)")
    bench.set_defaults(func=_bench)
    return parser


def main(argv: Optional[list[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except UserError as e:
        if getattr(args, "debug", False):
            raise
        print(f"fastattr: error: {e}", file=sys.stderr)
        return 2
    except Exception as e:  # not foreseen: still one line, with the way to the traceback
        if getattr(args, "debug", False):
            raise
        first = (str(e).splitlines() or [""])[0]
        print(f"fastattr: error: {type(e).__name__}: {first} (run with --debug for the traceback)",
              file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
