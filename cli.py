"""The `sweep` command. Each subcommand is a thin layer over the packages.

A user's mistake (any `trainable.errors.UserError`, the root of every layer's
errors) is printed as one line with exit code 2; anything else is a bug and
keeps its traceback.
"""
from __future__ import annotations

import argparse
import json
import os
import sys


def _set_args(p: argparse.ArgumentParser, what: str) -> None:
    p.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                   help=f"override {what} (repeatable), e.g. budget.trials=4 or base.train.epochs=1")


def _where(p: argparse.ArgumentParser) -> None:
    p.add_argument("--storage", help="SQLAlchemy URL of the results (default: sqlite file in --dir)")
    p.add_argument("--dir", default="runs", help="folder for default SQLite storage (default: ./runs)")


def cmd_validate(args) -> int:
    from search_spaces import describe
    print(describe(_load(args)))
    return 0


def _load(args, worker: bool = False):
    """The spec, checked before anything is stored: every config it can produce, under every preset,
    against the trial config's rules, then the engine's own refusals."""
    import sweeps
    from search_spaces import load_spec
    from trainable.context import Context
    sets = list(args.sets)
    if getattr(args, "trials", None) is not None:
        sets.append(f"budget.trials={args.trials}")
    if getattr(args, "engine", None):
        sets.append(f"engine={args.engine}")
    address = getattr(args, "address", None)
    # On a Ray cluster the trials run on machines this process cannot see: no device or file checks.
    context = Context(device=None, local=False) if address else None  # None: this machine's, once needed
    spec = load_spec(args.spec, sets, args.preset, context=context, every_preset=True)
    sweeps.check(spec, workers=getattr(args, "workers", None), address=address, worker=worker)
    return spec


def _print_summary(spec, summary) -> None:
    budget = f"/{summary.budget}" if summary.budget else ""
    print(f"{summary.finished}{budget} trials finished; best: "
          + (f"trial {summary.best_number} {spec.objective.metric}={summary.best_value:.4g}"
             if summary.best_number is not None else "none yet"))


def cmd_run(args) -> int:
    import analysis
    import sweeps
    from sweeps.storage import shown
    spec = _load(args)
    url = sweeps.resolve(spec.name, args.storage, args.dir, create=True)
    print(f"sweep {spec.name!r} on {spec.engine}: results in {shown(url)}", flush=True)
    summary = sweeps.run(spec, url, quiet=args.quiet, workers=args.workers, address=args.address,
                         run_dir=args.dir)
    frame = analysis.load(spec, url)
    if len(frame):
        table = analysis.trials_table(frame, spec.objective.metric, spec.objective.mode).head(args.top)
        shown = table.dropna(axis=1, how="all").drop(columns=[] if spec.seeds > 1 else ["seed"])
        print(analysis.render(shown))
    _print_summary(spec, summary)
    if summary.interrupted:
        print("stopped; run the same command again to resume", file=sys.stderr)
        return 130
    if summary.ran and summary.failed == summary.ran:
        print(f"error: every trial of this run failed ({summary.failed} of {summary.ran}); fix: see the reasons "
              "above (`sweep status` lists them), then run the same command again", file=sys.stderr)
        return 1
    return 0


def cmd_worker(args) -> int:
    import sweeps
    from sweeps.gpus import VISIBLE
    from sweeps.record import worker_id
    from sweeps.storage import shown
    from sweeps.workers import auto_workers, join, join_many
    if args.gpus:  # before anything starts CUDA: its trials see only these
        os.environ[VISIBLE] = ",".join(args.gpus)
    spec = _load(args, worker=True)
    url = sweeps.resolve(spec.name, args.storage, args.dir, create=True)
    workers = auto_workers(spec) if args.workers is None else args.workers
    if workers > 1:
        print(f"{workers} workers join sweep {spec.name!r}: results in {shown(url)}", flush=True)
        return join_many(spec, url, args.dir, workers, args.threads)
    print(f"worker {worker_id()} joins sweep {spec.name!r}: results in {shown(url)}", flush=True)
    summary = join(spec, url, run_dir=args.dir, threads=args.threads)
    _print_summary(spec, summary)
    if summary.interrupted:
        print("stopped; its trial is enqueued again for the other workers", file=sys.stderr)
        return 130
    return 0


def _sweep(args) -> str:
    """The sweep NAME|SPEC names (a spec file's name is read within the spec's bounds)."""
    from search_spaces import sweep_name
    return sweep_name(args.sweep)


def cmd_status(args) -> int:
    import analysis
    print(analysis.status(_sweep(args), args.storage, args.dir))
    return 0


def cmd_table(args) -> int:
    import analysis
    frame = analysis.load(_sweep(args), args.storage, args.dir)
    objective = frame.attrs.get("spec", {}).get("objective") or {}
    if args.by is not None or args.summary:
        by = [c for c in (args.by or "").split(",") if c]
        table = analysis.with_reference(analysis.summary(frame, by or None, args.metric), frame.attrs.get("reference"))
    else:
        table = analysis.trials_table(frame, objective.get("metric", "val_error"), objective.get("mode", "min"))
    print(analysis.render(table, args.format))
    return 0


def cmd_plot(args) -> int:
    from pathlib import Path

    import analysis
    from analysis import figures
    figures.KINDS.get(args.kind)  # an unknown kind fails before the sweep is read
    frame = analysis.load(_sweep(args), args.storage, args.dir)
    fig = figures.plot(args.kind, frame, metric=args.metric, by=args.by)
    from analysis.report import CannotWrite
    out = Path(args.out or Path(args.dir) / f"{frame.attrs['name']}-{args.kind}.html")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise CannotWrite(f"cannot write {out}: {e.strerror or e}; fix: pass --out a file in a folder you can write")
    try:
        figures.save(fig, out)
    except (ImportError, ValueError, RuntimeError) as e:
        if out.suffix.lower() not in figures.IMAGE_SUFFIXES:
            raise
        print(f"error: --out {out.name}: images need kaleido and Chromium ({str(e).splitlines()[0][:120]}); "
              "fix: pip install 'recipe-sweep[images]', or write .html", file=sys.stderr)
        return 2
    print(out)
    return 0


def _workers(text: str) -> int | None:
    if text == "auto":
        return None
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of workers; use e.g. 2, or auto") from None


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive number; use e.g. 1000")
    return value


def _image_size(text: str) -> int | tuple[int, int]:
    parts = text.lower().split("x")
    if len(parts) > 2 or not all(p.isdigit() and 8 <= int(p) <= 4096 for p in parts):
        raise argparse.ArgumentTypeError(f"{text!r} is not an image size; use N or WxH, each 8-4096, e.g. 64 or 500x375")
    return int(parts[0]) if len(parts) == 1 else (int(parts[0]), int(parts[1]))


def _gpus(text: str) -> list[str]:
    from sweeps.gpus import parse
    try:
        return parse(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _parse_sets(sets: list[str], example: str) -> dict:
    from search_spaces import parse_override
    return dict(parse_override(item, example) for item in sets)


def cmd_train(args) -> int:
    from trainable import from_flat, train
    cfg = from_flat(_parse_sets(args.sets, "train.epochs=1"))

    def report(epoch, metrics):
        if args.json:
            print(json.dumps({"epoch": epoch, **metrics}), flush=True)
        else:
            shown = "  ".join(f"{k}={v:.4g}" for k, v in metrics.items())
            print(f"epoch {epoch:>3}  {shown}", flush=True)

    if cfg.train.devices * cfg.train.nodes > 1:  # a process per rank, as the engines start them
        result = _train_ranks(cfg, report)
    else:
        result = train(cfg, report)
    if args.json:
        print(json.dumps({"final": True, **result}))
    else:
        print("final  " + "  ".join(f"{k}={v:.4g}" for k, v in result.items()))
    return 0


def _train_ranks(cfg, report) -> dict:
    """One trial of several ranks (train.devices), run as a one-trial sweep runs it (sweeps.isolated)."""
    import yaml

    from search_spaces.load import parse_spec
    from sweeps import isolated
    from trainable import rules
    from trainable.config import non_defaults
    rules.check(cfg, rules.Context.here())  # its mistakes as --set keys, not as a spec's lines
    spec = parse_spec(yaml.safe_dump({"name": "train", "budget": {"trials": 1}, "base": non_defaults(cfg),
                                      "space": {}}), "sweep train")
    rows: list[dict] = []
    isolated.run(spec, {}, lambda epoch, per_seed: report(epoch, per_seed[0]), rows.extend)
    return {k: v for k, v in rows[0].items() if k not in ("seed", "state", "error")}


def cmd_config(args) -> int:
    from trainable.config import defaults_text
    print(defaults_text())
    return 0


def cmd_data(args) -> int:
    from trainable.config import from_flat
    from trainable.export import write
    source = from_flat({"data.dataset": args.source, **{f"data.{k}": v for k, v in
                                                         _parse_sets(args.sets, "root=~/data").items()}}).data
    root = write(args.out, source, args.train, args.test, args.size, shards=args.shards)
    what = (f"as shards of {args.shards} images" if args.shards else "as an image folder")
    dataset = "image_shards" if args.shards else "image_folder"
    print(f"{root}: {args.source} {what}; use it with --set base.data.dataset={dataset} --set base.data.root={root}")
    return 0


def cmd_models(args) -> int:
    from trainable.config import from_flat
    from trainable.model_info import families_text, size
    if not args.name:
        print(families_text())
        return 0
    sets = {f"model.{k}": v for k, v in _parse_sets(args.sets, "depth=20").items()}
    cfg = from_flat({"model.name": args.name, **sets})
    params, macs = size(cfg.model, args.dataset)
    print(f"{args.name}: {params:,} parameters ({params / 1e6:.2f}M), "
          f"{macs / 1e6:,.1f}M multiply-adds per {args.dataset} image")
    return 0


def cmd_report(args) -> int:
    from analysis.report import write
    print(write(_sweep(args), args.out, args.storage, args.dir, top=args.top))
    return 0


def cmd_dashboard(args) -> int:
    from analysis.load import open_study
    from sweeps.base import SweepError
    from sweeps.storage import resolve
    if not 0 < args.port < 65536:
        raise SweepError(f"--port {args.port} is not a TCP port; fix: pass one from 1 to 65535, e.g. 8080")
    name = _sweep(args)
    url = resolve(name, args.storage, args.dir)
    open_study(name, url)  # fails clearly if the sweep does not exist
    try:
        from optuna_dashboard import run_server
    except ImportError:
        print("error: optuna-dashboard is not installed; fix: pip install optuna-dashboard", file=sys.stderr)
        return 2
    # In this process (not a child that would outlive it when this one is terminated), on loopback only.
    print(f"dashboard for {name!r}: http://127.0.0.1:{args.port}/  (Ctrl-C stops it)", flush=True)
    try:
        run_server(url, host="127.0.0.1", port=args.port)
    except KeyboardInterrupt:
        pass
    except (OSError, OverflowError) as e:  # the port is taken, or one root alone may open
        print(f"error: cannot listen on 127.0.0.1:{args.port}: {getattr(e, 'strerror', None) or e}; "
              "fix: pass another --port", file=sys.stderr)
        return 2
    return 0


def parser() -> argparse.ArgumentParser:
    from analysis.figures import KINDS
    from sweeps import ENGINES
    ap = argparse.ArgumentParser(prog="sweep", description="Random-search sweeps for PyTorch image classification.")
    sub = ap.add_subparsers(dest="command", required=True)

    p = sub.add_parser("run", help="run a sweep (run it again to resume)")
    p.add_argument("spec")
    p.add_argument("--engine", choices=ENGINES.names(), help="overrides the spec's engine")
    _where(p)
    p.add_argument("--trials", type=int, help="trial budget (overrides budget.trials)")
    p.add_argument("--workers", type=_workers, default=None, metavar="N|auto",
                   help="worker processes on one storage (Optuna), or trials at once (Ray); default auto: "
                        "as many as pay (on CPUs one per resources.cpu cores, on a GPU 1/resources.gpu)")
    p.add_argument("--address", help="Ray: run on an existing cluster ('auto' or ray://host:port)")
    p.add_argument("--preset", help="apply a named preset of the spec (e.g. cpu)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--top", type=int, default=10, help="rows of the final table")
    _set_args(p, "spec keys")
    p.set_defaults(fn=cmd_run)

    p = sub.add_parser("worker", help="join a running Optuna sweep (from any machine) and run its trials")
    p.add_argument("spec")
    _where(p)
    p.add_argument("--threads", type=int, help="torch CPU threads for trials that do not set train.threads "
                   "(default: torch's, all cores)")
    p.add_argument("--gpus", type=_gpus, metavar="LIST", help="the GPUs this machine's workers may use, e.g. 0,1 "
                   "(as CUDA_VISIBLE_DEVICES names them; default: every visible one)")
    p.add_argument("--workers", type=_workers, default=1, metavar="N|auto",
                   help="worker processes to start here, spread over the GPUs (auto: 1/resources.gpu per GPU, "
                        "or per resources.cpu cores on CPUs); default 1")
    p.add_argument("--preset", help="apply a named preset of the spec (the same as the sweep's)")
    p.add_argument("--quiet", action="store_true", help="no progress bar (a worker never shows one: it prints "
                   "a line per trial it finishes)")
    _set_args(p, "spec keys (the same as the sweep's)")
    p.set_defaults(fn=cmd_worker, trials=None, engine=None)

    p = sub.add_parser("validate", help="check a spec and print it resolved")
    p.add_argument("spec")
    p.add_argument("--preset")
    _set_args(p, "spec keys")
    p.set_defaults(fn=cmd_validate)

    p = sub.add_parser("status", help="trials by state and the best so far")
    p.add_argument("sweep", help="sweep name or spec file")
    _where(p)
    p.set_defaults(fn=cmd_status)

    p = sub.add_parser("table", help="the sweep's trials, or a summary grouped --by columns")
    p.add_argument("sweep", help="sweep name or spec file")
    _where(p)
    p.add_argument("--by", help="comma-separated columns to group by (median and spread over the rest)")
    p.add_argument("--summary", action="store_true", help="group by every sampled parameter (seeds pooled)")
    p.add_argument("--metric", default="test_error", help="metric summarised by --by (default test_error)")
    p.add_argument("--format", choices=["markdown", "csv"], default="markdown")
    p.set_defaults(fn=cmd_table)

    p = sub.add_parser("plot", help="one figure of the sweep as a standalone HTML file")
    p.add_argument("sweep", help="sweep name or spec file")
    p.add_argument("--kind", required=True, help=f"one of: {', '.join(KINDS.names())}")
    p.add_argument("--out", help="file to write: .html (default: DIR/NAME-KIND.html), or .png/.svg/.pdf (needs kaleido)")
    p.add_argument("--by", help="column to group lines or bars by (e.g. variant, optim.name)")
    p.add_argument("--metric", help="metric to plot (default test_error; the objective's for history "
                   "and importance; val_error for curves)")
    _where(p)
    p.set_defaults(fn=cmd_plot)

    p = sub.add_parser("report", help="one self-contained HTML file: spec, status, best trials, tables, "
                       "failures and every figure that fits")
    p.add_argument("sweep", help="sweep name or spec file")
    p.add_argument("--out", help="HTML file to write (default: DIR/NAME-report.html)")
    p.add_argument("--top", type=int, default=10, help="best trials listed (default 10)")
    _where(p)
    p.set_defaults(fn=cmd_report)

    p = sub.add_parser("train", help="run one trial without an engine")
    _set_args(p, "trial-config keys")
    p.add_argument("--json", action="store_true", help="one JSON object per epoch, the result last")
    p.set_defaults(fn=cmd_train)

    p = sub.add_parser("config", help="the trial config's keys")
    p.add_argument("--defaults", action="store_true", help="print every key with its default (the default)")
    p.set_defaults(fn=cmd_config)

    p = sub.add_parser("data", help="write a data set out as image files (train/ and val/): an image folder "
                       "(a folder per class) or tar shards; e.g. for the ImageNet recipes' small presets, or an "
                       "image folder as shards")
    p.add_argument("out", help="the folder to write (kept as it is once complete)")
    p.add_argument("--source", default="fashion_mnist", help="the data set to write out (default fashion_mnist; "
                   "image_folder with --set root=DIR copies that folder's files)")
    p.add_argument("--size", type=_image_size, default=64, help="image size of a registered data set's JPEGs: N or "
                   "WxH (default 64)")
    p.add_argument("--train", type=_positive, help="training images (default 10000, all of an image folder)")
    p.add_argument("--test", type=_positive, help="test images (default 2000, all of an image folder)")
    p.add_argument("--shards", type=_positive, default=0, metavar="N",
                   help="write tar shards of N images each (WebDataset's layout) instead of a folder per class")
    _set_args(p, "data keys of the source (e.g. root=~/data)")
    p.set_defaults(fn=cmd_data)

    p = sub.add_parser("models", help="registered architectures")
    p.add_argument("name", nargs="?")
    p.add_argument("--dataset", default="cifar10", help="input shape and classes to count for (default cifar10)")
    _set_args(p, "model keys (without the model. prefix)")
    p.set_defaults(fn=cmd_models)

    p = sub.add_parser("dashboard", help="optuna-dashboard on the sweep's storage, bound to 127.0.0.1")
    p.add_argument("sweep")
    _where(p)
    p.add_argument("--port", type=int, default=8080)
    p.set_defaults(fn=cmd_dashboard)
    return ap


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    from trainable.errors import UserError
    try:
        return args.fn(args)
    except UserError as e:
        print("error: " + str(e).replace("\n", "\\n"), file=sys.stderr)  # one line, whatever it quotes
        return 2


if __name__ == "__main__":
    sys.exit(main())
