"""`kopt inspect | optimize | report | export | latency` — thin wrappers over the library."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def _inspect(args: argparse.Namespace) -> int:
    from kopt.keras_io import from_keras, load_model

    g = from_keras(load_model(args.model, safe_mode=not args.unsafe))
    rows = g.summary_rows()
    width = max([len(r["name"]) for r in rows] + [4])
    opw = max([len(r["op"]) for r in rows] + [2])
    print(f"{'name':<{width}}  {'op':<{opw}}  {'output shape':<22} {'params':>11} "
          f"{'MACs':>15}  category")
    for r in rows:
        print(f"{r['name']:<{width}}  {r['op']:<{opw}}  {r['shape']:<22} {r['params']:>11,} "
              f"{r['macs']:>15,}  {r['category']}")
    tensor = sum(1 for r in rows if r["category"] == "tensor")
    print(f"\n{g.name}: {len(rows)} nodes ({tensor} tensor ops), {g.count_params():,} params, "
          f"{g.count_macs():,} MACs (batch 1)")
    return 0


def _optimize(args: argparse.Namespace) -> int:
    from kopt.api import Optimizer
    from kopt.keras_io import load_model
    from kopt.keras_io.loading import load_arrays

    model = load_model(args.model, safe_mode=not args.unsafe)
    opt = Optimizer(verify=not args.no_verify, tolerance=args.tolerance)
    if args.data is None and _target(args) is not None:
        print("kopt: error: --speedup / --target-ms need --data (the search fine-tunes and "
              "scores every candidate)", file=sys.stderr)
        return 2
    if args.data is None:
        new = opt.optimize(model)
        print(opt.report)
    else:
        data = load_arrays(args.data)
        validation = None if args.validation is None else load_arrays(args.validation)
        new = opt.optimize(model, data, validation, max_accuracy_drop=args.max_drop,
                           metric=args.metric, mode=args.mode,
                           max_metric_drop=args.max_metric_drop,
                           recalibrate_bn=args.recalibrate_bn, epochs=args.epochs,
                           progress=True, target=_target(args))
        label = f"val {opt.steps[0]['metric']}"
        w = max(9, len(label) + 1)
        ms = opt.search is not None  # the latency search also logs predicted / measured ms
        print(f"{'step':<28}{'params':>10}{'MACs':>14}{label:>{w}}"
              + (f"{'pred ms':>10}{'meas ms':>10}" if ms else "") + "  kept")
        for step in opt.steps:
            times = "".join(f"{step[k]:>10.4f}" if step.get(k) is not None else f"{'':>10}"
                            for k in ("predicted_ms", "measured_ms")) if ms else ""
            val = "-" if step["val_score"] is None else f"{step['val_score']:.4f}"
            print(f"{step['step']:<28}{step['params']:>10,}{step['macs']:>14,}"
                  f"{val:>{w}}{times}  {'yes' if step['kept'] else 'no'}")
        if ms:
            print(opt.search.message)
    new.save(args.output)
    print(f"wrote {args.output}")
    return 0


def _target(args: argparse.Namespace) -> Any:
    """optimize's target= from --speedup / --target-ms (None: the fixed recipe)."""
    if args.speedup is None and args.target_ms is None:
        return None
    from kopt.flows.search import Target

    return Target(speedup=args.speedup, ms=args.target_ms, runtime=args.runtime,
                  threads=args.threads)


def _latency(args: argparse.Namespace) -> int:
    """Predicted latency per fused group (measured and cached on this machine, or read from a
    device's times with --device-json), --measure the whole model, --bundle for a device."""
    from kopt.keras_io import load_model
    from kopt.runtime.latency import LatencyModel

    model = load_model(args.model, safe_mode=not args.unsafe)
    if args.device_json:
        lm = LatencyModel.from_device_json(args.device_json)
    else:
        lm = LatencyModel(args.runtime, args.threads, cache_dir=args.cache_dir, runs=args.runs)
    if args.bundle:
        path = lm.write_bundle(model, args.bundle)
        print(f"wrote {path}: copy it to the device, run `python time_bundle.py BUNDLE -o "
              "times.json` there (the script is in the bundle), then `kopt latency MODEL "
              "--device-json times.json` here")
        return 0
    rep = lm.per_layer(model)
    print(rep.table(args.top))
    print(f"predicted {rep.total_ms:.4f} ms ({lm!r}; {lm.timed} group(s) timed now)")
    if args.measure:
        measured = lm.measure(model)
        print(f"measured {measured:.4f} ms (predicted {rep.total_ms / measured - 1:+.1%})")
    if args.json:
        rep.to_json(args.json)
    return 0


def main(argv: list[str] | None = None) -> int:
    from kopt.errors import KoptError

    from kopt import __version__

    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] in ("report", "export"):
        return _delegate(argv[0], argv[1:])
    parser = argparse.ArgumentParser(prog="kopt", description=__doc__)
    parser.add_argument("--version", action="version", version=f"kopt {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log every rewrite")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("inspect", help="per-node table: op, shape, params, MACs, category")
    p.add_argument("model", help=".keras or .h5 file")
    p.add_argument("--unsafe", action="store_true",
                   help="load with safe_mode=False (runs code stored in the file: trusted only)")
    p.set_defaults(func=_inspect)
    p = sub.add_parser("optimize", help="apply the exact rewrites, verify, save; with --data "
                       "also merge blocks, prune and factor, retraining each step")
    p.add_argument("model")
    p.add_argument("-o", "--output", required=True, help="output .keras file")
    p.add_argument("--data", metavar="NPZ", help="training images 'x' (labels 'y' optional): "
                   "runs the approximate flow")
    p.add_argument("--validation", metavar="NPZ", help="held-out 'x' (and 'y') deciding what "
                   "is kept (default: the last 15%% of --data)")
    p.add_argument("--max-drop", type=float, default=0.005,
                   help="largest validation accuracy drop allowed (default 0.005)")
    p.add_argument("--metric", default=None,
                   help="what decides what is kept: accuracy, fidelity (to the original's "
                   "outputs) or a Keras metric or loss name, e.g. mae (default: accuracy for "
                   "a classifier, else fidelity)")
    p.add_argument("--mode", choices=("max", "min"), default=None,
                   help="whether higher or lower --metric is better (Keras losses: min)")
    p.add_argument("--max-metric-drop", type=float, default=None,
                   help="largest change of --metric allowed, in its own units")
    p.add_argument("--recalibrate-bn", action="store_true",
                   help="re-estimate stale BatchNormalization statistics on --data first")
    p.add_argument("--epochs", type=int, default=5, help="distillation epochs per step")
    p.add_argument("--speedup", type=float, default=None, help="with --data: search for the "
                   "most accurate model this many times faster than int8 PTQ of the original, "
                   "measured on --runtime (instead of the fixed recipe)")
    p.add_argument("--target-ms", type=float, default=None,
                   help="with --data: the same search for an absolute latency")
    p.add_argument("--runtime", choices=("litert-int8", "litert"), default="litert-int8",
                   help="with --speedup / --target-ms: the runtime measured")
    p.add_argument("--threads", type=int, default=1, help="with --speedup / --target-ms")
    p.add_argument("--no-verify", action="store_true")
    p.add_argument("--tolerance", type=float, default=1e-4)
    p.add_argument("--unsafe", action="store_true")
    p.set_defaults(func=_optimize)
    p = sub.add_parser("latency", help="predicted latency on LiteRT from per-group tables "
                       "(cached; --bundle to time them on a device)")
    p.add_argument("model")
    p.add_argument("--runtime", choices=("litert-int8", "litert"), default="litert-int8")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--runs", type=int, default=None, help="default: ~0.1 s of runs per group")
    p.add_argument("--cache-dir", default=None,
                   help="latency tables (default: $KOPT_CACHE_DIR/latency or ~/.cache/kopt)")
    p.add_argument("--bundle", metavar="DIR", help="write the group files for a device (a "
                   "folder, or a .zip) with kopt/runtime/time_bundle.py, instead of predicting")
    p.add_argument("--device-json", metavar="F", help="predict from times a device wrote")
    p.add_argument("--measure", action="store_true", help="also run the whole model")
    p.add_argument("--top", type=int, default=None, help="show only the N slowest groups")
    p.add_argument("--json", help="write the per-group table as JSON")
    p.add_argument("--unsafe", action="store_true")
    p.set_defaults(func=_latency)
    sub.add_parser("report", help="per-layer timing report (see `kopt report -h`)")
    sub.add_parser("export", help="TFLite int8/float or ONNX export (see `kopt export -h`)")
    args = parser.parse_args(argv)
    logging.basicConfig(format="%(message)s",
                        level=logging.INFO if args.verbose else logging.WARNING)
    try:
        return args.func(args)
    except KoptError as err:
        print(f"kopt: error: {err}", file=sys.stderr)
        return 2


def _delegate(command: str, argv: list[str]) -> int:
    from kopt.errors import KoptError

    logging.basicConfig(format="%(message)s", level=logging.WARNING)
    try:
        return _report(argv) if command == "report" else _export(argv)
    except KoptError as err:
        print(f"kopt: error: {err}", file=sys.stderr)
        return 2


def _export(argv: list[str]) -> int:
    """`kopt export MODEL -o OUT [--format tflite|onnx] [--quantize int8|float16|none]`."""
    p = argparse.ArgumentParser(prog="kopt export", description=_export.__doc__)
    p.add_argument("model", help=".keras or .h5 file")
    p.add_argument("-o", "--output", required=True, help=".tflite or .onnx file")
    p.add_argument("--format", choices=("tflite", "onnx"), default=None,
                   help="default: from the output's extension")
    p.add_argument("--quantize", choices=("int8", "float16", "none"), default="int8")
    p.add_argument("--float-io", action="store_true", help="int8 model with float input/output")
    p.add_argument("--data", help=".npy/.npz representative data (npz: key 'x')")
    p.add_argument("--digits", action="store_true", help="use sklearn digits as data")
    p.add_argument("--softmax", choices=("keep", "drop", "float"), default="keep",
                   help="a final softmax: keep it (int8, LiteRT's kernel), drop it (the file "
                   "ends at the logits, same class order) or make it float (all of the int8 "
                   "graph on XNNPACK)")
    p.add_argument("--no-int8-rewrites", action="store_true",
                   help="plain PTQ: skip the measured search for equalisation / bias correction")
    p.add_argument("--no-verify", action="store_true")
    p.add_argument("--unsafe", action="store_true", help="load with safe_mode=False")
    args = p.parse_args(argv)
    from kopt.flows.data import load_digits_like
    from kopt.keras_io import load_model
    from kopt.keras_io.loading import load_arrays
    from kopt.runtime import export_onnx, export_tflite

    model = load_model(args.model, safe_mode=not args.unsafe)
    fmt = args.format or ("onnx" if args.output.endswith(".onnx") else "tflite")
    if fmt == "onnx":
        print(export_onnx(model, args.output, verify=not args.no_verify).summary())
        return 0
    if args.digits:
        data = load_digits_like(model)[0]
    else:
        data = None if args.data is None else load_arrays(args.data)[0]
    quantize = None if args.quantize == "none" else args.quantize
    result = export_tflite(model, args.output, representative_data=data, quantize=quantize,
                           int8_io=not args.float_io, verify=not args.no_verify,
                           softmax=args.softmax, int8_rewrites=not args.no_int8_rewrites)
    print(result.summary())
    return 0


def _report(argv: list[str]) -> int:
    """`kopt report MODEL [--runtime R] [--compare OTHER] [--json F] [--csv F] [--plot F]`;
    with --int8-error [--data X.npz | --digits], each layer's int8 error instead of its time."""
    p = argparse.ArgumentParser(prog="kopt report", description=_report.__doc__)
    p.add_argument("model", help=".keras or .h5 file")
    p.add_argument("--runtime", choices=("keras", "litert", "litert-int8", "all"),
                   default="keras")
    p.add_argument("--batch-size", type=int, default=1)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--runs", type=int, default=None, help="default: ~0.1 s of runs per part")
    p.add_argument("--top", type=int, default=None, help="show only the N slowest layers "
                   "(with --int8-error: the N adding the most error)")
    p.add_argument("--compare", help="a second model (e.g. the optimized one) to compare with")
    p.add_argument("--json", help="write the report as JSON (suffixed per runtime for 'all')")
    p.add_argument("--csv")
    p.add_argument("--plot", help="PNG file")
    p.add_argument("--int8-error", action="store_true", help="per-layer error of the full-int8 "
                   "file against float32 on calibration data (SQNR, cosine, error added)")
    p.add_argument("--data", help="with --int8-error: .npy/.npz calibration data (npz: key 'x')")
    p.add_argument("--digits", action="store_true",
                   help="with --int8-error: use sklearn digits as calibration data")
    p.add_argument("--unsafe", action="store_true", help="load with safe_mode=False")
    args = p.parse_args(argv)
    from kopt.keras_io import load_model
    from kopt.runtime.timing import RUNTIMES, compare_reports, timing_report

    model = load_model(args.model, safe_mode=not args.unsafe)
    if args.int8_error:
        return _int8_error(model, args)
    other = load_model(args.compare, safe_mode=not args.unsafe) if args.compare else None
    runtimes = RUNTIMES if args.runtime == "all" else (args.runtime,)
    for rt in runtimes:
        kw = dict(runtime=rt, batch_size=args.batch_size, threads=args.threads, runs=args.runs,
                  progress=True)
        rep = timing_report(model, **kw)
        out: Any = rep
        if other is not None:
            out = compare_reports(rep, timing_report(other, **kw))
        print(out.table() if other is not None else rep.table(args.top))
        for opt, method in (("json", "to_json"), ("csv", "to_csv"), ("plot", "plot")):
            target = getattr(args, opt)
            if target and hasattr(out, method):
                getattr(out, method)(_suffixed(target, rt, len(runtimes) > 1))
    return 0


def _int8_error(model: Any, args: argparse.Namespace) -> int:
    """`kopt report MODEL --int8-error`: calibration data from --data or --digits, as in
    `kopt export`; the table, and --json / --plot files."""
    from kopt.errors import DataError
    from kopt.flows.data import load_digits_like
    from kopt.keras_io.loading import load_arrays
    from kopt.runtime import int8_layer_errors

    if args.digits:
        data = load_digits_like(model)[0]
    elif args.data:
        data = load_arrays(args.data)[0]
    else:
        raise DataError("--int8-error needs calibration data: --data X.npz or --digits")
    report = int8_layer_errors(model, data)
    print(report.table(args.top))
    if args.json:
        report.to_json(args.json)
    if args.plot:
        report.plot(args.plot)
    return 0


def _suffixed(path: str, runtime: str, many: bool) -> str:
    root, ext = os.path.splitext(path)
    return f"{root}_{runtime}{ext}" if many else path


if __name__ == "__main__":
    sys.exit(main())
