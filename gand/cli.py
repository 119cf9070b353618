"""`gand <verb>`: parse arguments, call one function, turn gand's errors into messages and exit codes."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Sequence
from typing import NoReturn

from gand import __version__
from gand.errors import ConfigError, GandError


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:  # argparse's own exit code is 2 too; keep its usage line
        self.print_usage(sys.stderr)
        raise ConfigError(f"{self.prog}: {message}")


def _resolutions(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated sizes such as 32,64 (got {text!r})") from None


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="gand", description="Fault-tolerant GAN training for constrained hardware.")
    parser.add_argument("--version", action="version", version=f"gand {__version__}")
    verbs = parser.add_subparsers(dest="verb", required=True, parser_class=_Parser)

    demo = verbs.add_parser("demo-data", help="generate the built-in demo image collection (no downloads)")
    demo.add_argument("dest", help="folder to write <style>/<image> files into")
    demo.add_argument(
        "--kind",
        default="landscapes",
        choices=["landscapes", "digits"],
        help="landscapes: painted, 4 styles; digits: scikit-learn's 1,797 real scans, 10 classes",
    )
    demo.add_argument("--n", type=int, default=None, help="landscapes only: number of images (default 2000)")
    demo.add_argument("--seed", type=int, default=0)

    pack = verbs.add_parser("pack", help="pack images into WebDataset shards at every resolution (incremental)")
    _add_pack_arguments(pack)

    daemon = verbs.add_parser("daemon", help="keep packing new images from SRC into DEST until stopped")
    _add_pack_arguments(daemon)
    daemon.add_argument("--interval", type=float, default=60.0, help="seconds between polls of SRC (default 60)")
    daemon.add_argument("--metrics-port", type=int, default=9465, help="Prometheus /metrics port (default 9465)")
    daemon.add_argument("--max-polls", type=int, default=None, help=argparse.SUPPRESS)  # tests

    plan = verbs.add_parser("plan", help="measure a config's memory and find the fastest setting that fits a GPU")
    plan.add_argument("config", help="YAML file, e.g. configs/can256.yaml")
    plan.add_argument("overrides", nargs="*", help="section.field=value, e.g. train.batch_size=128")
    plan.add_argument("--gpu-mem", required=True, help="memory per GPU, e.g. 16GiB (a T4), 40GiB, 80GiB")
    plan.add_argument("--ranks", type=int, default=1, help="GPUs the run will use (ZeRO divides state by it)")
    plan.add_argument("--classes", type=int, default=10, help="class count when the dataset cannot be read")
    plan.add_argument("--device", default=None, help="where to probe (default: cuda if present, else cpu)")

    train = verbs.add_parser("train", help="train from a YAML config (also: accelerate launch -m gand.train)")
    train.add_argument("config", help="YAML file, e.g. configs/dcgan32.yaml")
    train.add_argument("overrides", nargs="*", help="section.field=value, e.g. train.max_steps=20")
    train.add_argument(
        "--fresh", action="store_true", help="delete this run's checkpoints and start over (default: resume)"
    )

    launch = verbs.add_parser("launch", help="start one training process per GPU on this node (keeps exit codes)")
    launch.add_argument("config", help="YAML file")
    launch.add_argument("overrides", nargs="*", help="section.field=value")
    launch.add_argument("--nproc-per-node", type=int, default=1, help="processes (GPUs) on this node")
    launch.add_argument("--nnodes", type=int, default=1, help="nodes in the run")
    launch.add_argument("--node-rank", type=int, default=None, help="default: $JOB_COMPLETION_INDEX, else 0")
    launch.add_argument("--main-address", default="127.0.0.1", help="host of node rank 0")
    launch.add_argument("--main-port", type=int, default=None, help="on node rank 0 (default 29500; one node: any)")

    evaluate = verbs.add_parser("eval", help="FID / KID / IS of a run's generator against its dataset")
    evaluate.add_argument("run", help="run directory, checkpoint store URL (newest commit) or one ckpt-... checkpoint")
    evaluate.add_argument("--n", type=int, default=None, help="generated images (default eval.samples, 10000)")
    evaluate.add_argument("--metrics", default="fid,kid,is", help="any of fid, kid, is (comma-separated)")
    evaluate.add_argument("--weights", default=None, help="FID Inception weights, path or URL (default: the run's)")
    evaluate.add_argument("--batch", type=int, default=50)

    sample = verbs.add_parser("sample", help="sample grids, latent walks and vector arithmetic from a run")
    sample.add_argument("run", help="run directory, checkpoint store URL or one ckpt-... checkpoint")
    sample.add_argument("--out", required=True, help="folder (or URL) for the PNGs")
    sample.add_argument("--n", type=int, default=64, help="images in grid.png (default 64)")
    sample.add_argument("--class", dest="class_index", type=int, default=None, help="conditional G: this class only")
    sample.add_argument("--seed", type=int, default=0, help="grid image i uses seed + i")
    sample.add_argument(
        "--interpolate",
        type=int,
        default=0,
        metavar="STEPS",
        help="walk STEPS points between consecutive --seeds, linear and spherical",
    )
    sample.add_argument("--seeds", default=None, help="seeds to walk between, e.g. 3,17,42 (default: seed, seed+1)")
    sample.add_argument(
        "--arithmetic",
        default=None,
        metavar="EXPR",
        help="e.g. 'smile=1,2,3 neutral=4,5,6 man=7,8,9 : smile - neutral + man'",
    )

    features = verbs.add_parser("features", help="D as a feature extractor: linear SVM on its features vs raw pixels")
    features.add_argument("run", help="run directory, checkpoint store URL or one ckpt-... checkpoint")
    features.add_argument("--data", required=True, help="a labelled packed dataset (e.g. the digits demo data)")
    features.add_argument("--test-share", type=float, default=0.3, help="held-out share (default 0.3)")

    plot = verbs.add_parser("plot", help="PNG charts of a run: losses, D outputs, gradients, vanishing gradients")
    plot.add_argument("run", help="run directory, checkpoint store URL or one ckpt-... checkpoint")
    plot.add_argument("--out", default=None, help="folder (or URL) for the PNGs (default: <run>/plots)")
    plot.add_argument(
        "--smooth",
        type=int,
        default=None,
        metavar="POINTS",
        help="moving average over this many logged points beside the raw line (1 = off; default: a 25th of the points)",
    )

    submit = verbs.add_parser("submit", help="run a config as a Kubernetes Job (spot-friendly; resumes itself)")
    submit.add_argument("config", help="YAML file; data.path and checkpoint.url must be object storage URLs")
    submit.add_argument("overrides", nargs="*", help="section.field=value")
    submit.add_argument("--image", required=True, help="gand container image, e.g. ghcr.io/you/gand:0.1.0")
    submit.add_argument("--gpus", type=int, default=1, help="GPUs per pod (default 1; 0 = CPU only)")
    submit.add_argument("--nodes", type=int, default=1, help="pods (nodes); more than 1 makes an Indexed Job")
    submit.add_argument("--spot", default=None, help="gke, eks or aks: schedule on that provider's spot nodes")
    submit.add_argument("--namespace", default="default")
    submit.add_argument(
        "--queue",
        default=None,
        help="a Kueue LocalQueue: the Job is created suspended with the "
        "kueue.x-k8s.io/queue-name label, and Kueue starts it when the quota allows",
    )
    submit.add_argument("--priority-class", default=None, help="the pods' PriorityClass (Kueue orders by it too)")
    submit.add_argument("--dry-run", action="store_true", help="print the objects as YAML; create nothing")

    status = verbs.add_parser("status", help="a submitted run: its Job, pods, restarts and newest checkpoint")
    status.add_argument("run", help="run.name (or the Job's name, gand-<run>)")
    status.add_argument("--namespace", default="default")
    return parser


def _add_pack_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("src", help="image folder or fsspec URL (labels: first-level sub-folders), or a CSV/JSONL list")
    parser.add_argument("dest", help="output directory or fsspec URL (shards per resolution + manifest.json)")
    shape = parser.add_argument_group("output")
    shape.add_argument(
        "--resolutions",
        type=_resolutions,
        default=(32, 64),
        metavar="SIZES",
        help="square sizes in pixels, comma-separated (default: 32,64; e.g. 32,64,128,256)",
    )
    shape.add_argument("--shard-size", type=int, default=1000, help="images per shard (default 1000)")
    shape.add_argument("--resize", default="center_crop", choices=["center_crop", "keep_ratio", "none"])
    shape.add_argument(
        "--output-format",
        default="png",
        choices=["png", "webp", "jpg", "raw"],
        help="png (lossless, default), webp (lossless), jpg (--quality >= 95), or raw: uncompressed uint8 .npy "
        "arrays that training reads without decoding, for fast GPUs that PNG decoding (~1.6 ms per 256 px image "
        "per core) would starve. raw costs 3 bytes per pixel + 128: 196,736 bytes per 256 px image against about "
        "87 kB as PNG and 18 kB as JPEG q95 on the demo landscapes",
    )
    shape.add_argument("--quality", type=int, default=95, help="JPEG quality for --output-format jpg (95-100)")
    shape.add_argument("--upscale", action="store_true", help="allow images smaller than the largest resolution")
    shape.add_argument("--no-draft", action="store_true", help="decode JPEGs at full size (slower, same result)")
    filters = parser.add_argument_group("filters (each skip is counted by reason)")
    filters.add_argument("--min-side", type=int, default=0, help="skip images whose shortest side is smaller")
    filters.add_argument("--max-aspect", type=float, default=None, help="skip images longer than this x wide")
    filters.add_argument("--max-pixels", type=int, default=178_956_970, help="skip larger headers (bomb guard)")
    filters.add_argument(
        "--formats",
        type=_names,
        default=None,
        help="allowed source format families: jpeg (incl. MPO), png (incl. APNG), webp, gif, tiff, bmp, ...",
    )
    filters.add_argument(
        "--near-duplicates",
        type=int,
        default=None,
        metavar="BITS",
        help="skip images within BITS of an earlier one's perceptual hash (off by default)",
    )
    filters.add_argument("--keep-duplicates", action="store_true", help="keep byte-identical copies")
    filters.add_argument("--exclude", default=None, metavar="FILE", help="file of names or globs to leave out")
    labels = parser.add_argument_group("labels")
    labels.add_argument(
        "--labels",
        default="auto",
        choices=["auto", "folder", "none"],
        help="folders: auto = sub-folders are classes when every image is in one",
    )
    labels.add_argument("--label-column", default=None, help="lists: the column holding the class (e.g. style)")
    run = parser.add_argument_group("run")
    run.add_argument("--workers", type=int, default=None, help="decode processes (default: cores, up to 8)")
    run.add_argument("--overwrite", action="store_true", help="start DEST over instead of adding to it")
    run.add_argument(
        "--generation-seconds",
        type=float,
        default=30.0,
        help="while packing, publish a manifest generation at most this often (default 30)",
    )


def _names(text: str) -> tuple[str, ...]:
    return tuple(part.strip().upper() for part in text.split(",") if part.strip())


def _pack_options(args: argparse.Namespace):
    from gand.data.pack import PackOptions

    formats = tuple(name.lower() for name in args.formats) if args.formats else None
    return PackOptions(
        resolutions=args.resolutions,
        shard_size=args.shard_size,
        overwrite=args.overwrite,
        min_side=args.min_side,
        max_aspect=args.max_aspect,
        max_pixels=args.max_pixels,
        formats=formats,
        exact_duplicates=not args.keep_duplicates,
        near_duplicates=args.near_duplicates,
        exclude=_read_exclusions(args.exclude),
        upscale=args.upscale,
        resize=args.resize,
        output=args.output_format,
        quality=args.quality,
        draft=not args.no_draft,
        labels=args.labels,
        label_column=args.label_column,
        generation_seconds=args.generation_seconds,
        **({"workers": args.workers} if args.workers is not None else {}),
    )


def _read_exclusions(path: str | None) -> tuple[str, ...]:
    if path is None:
        return ()
    try:
        with open(path, encoding="utf-8") as handle:
            lines = handle.read().splitlines()
    except OSError as err:
        raise ConfigError(f"--exclude {path}: {err.strerror}") from None
    return tuple(line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#"))


def main(argv: Sequence[str] | None = None) -> int:
    try:
        parser = build_parser()
        args, extra = parser.parse_known_args(argv)
        # Overrides may come after options (`gand plan c.yaml --gpu-mem 16GiB precision=bf16`): argparse leaves
        # those to us. Anything else unknown is an error, as usual.
        unknown = [token for token in extra if "=" not in token or token.startswith("-")]
        if unknown or (extra and not hasattr(args, "overrides")):
            parser.error(f"unrecognized arguments: {' '.join(unknown or extra)}")
        if extra:
            args.overrides = [*args.overrides, *extra]
        return _dispatch(args)
    except GandError as err:
        print(f"error: {err}", file=sys.stderr)
        return err.exit_code
    except OSError as err:  # the machine said no: a read-only or full disk, a permission; never a traceback
        explained = _os_error_message(err)
        if explained is None or os.environ.get("GAND_DEBUG", "").lower() in ("1", "true", "yes"):
            raise  # not a situation gand has words for (or asked for): the traceback is the useful report
        message, exit_code = explained
        print(f"error: {message}", file=sys.stderr)
        return exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


def _emit(result: dict, text: str) -> None:
    """A verb's result on stdout: readable text at a terminal, one JSON object anywhere else (`> result.json`,
    pipes, scripts)."""
    print(text if sys.stdout.isatty() else json.dumps(result))


def _scores_text(result: dict) -> str:
    names = {"fid": "FID", "kid_mean": "KID", "is_mean": "IS"}
    shown = []
    for key, name in names.items():
        if key in result:
            spread = result.get(key.replace("_mean", "_std"))
            shown.append(
                f"{name} {result[key]:.4g}" + (f" ± {spread:.2g}" if spread is not None and key != "fid" else "")
            )
    return (
        f"{result['checkpoint']}: " + ", ".join(shown) + f" ({result['generated']} generated vs "
        f"{result['real']} real images)"
    )


def _os_error_message(err: OSError) -> tuple[str, int] | None:
    """A person's message for an operating-system error that names a file (the file, the reason, what to do) and
    its exit code: 2 where the command named a place gand cannot use, 1 where running again later may work. None
    for anything else (no errno, no file, or an errno without advice), which is shown as it is."""
    import errno

    if err.errno is None:
        return None
    where, reason = (f"{err.filename}: " if err.filename else ""), err.strerror or str(err)
    if err.errno in (errno.ENOSPC, errno.EDQUOT):  # a failed write often names no file
        return (
            f"{where}{reason}; free some space or choose another location, then run the same command again "
            "(nothing half-written was kept)",
            1,
        )
    if not err.filename:
        return None
    if err.errno == errno.EROFS:
        return (
            f"{where}{reason}; choose a location on a writable file system (a folder argument, --out, run.dir "
            "or checkpoint.url)",
            2,
        )
    if err.errno in (errno.EACCES, errno.EPERM):
        return (
            f"{where}{reason}; check its permissions, or choose a location this user can read and write (a "
            "folder argument, --out, run.dir or checkpoint.url)",
            2,
        )
    if err.errno == errno.ENOENT:  # 1, not 2: a file that vanished mid-run is worth a retry
        return f"{where}{reason}; check the path", 1
    if err.errno == errno.EISDIR:
        return f"{where}{reason}: a folder where a file was expected", 2
    if err.errno == errno.EEXIST:
        return f"{where}{reason}: a file where a folder was expected; give a folder path", 2
    if err.errno == errno.ENOTDIR:
        return f"{where}{reason}: part of the path is a file where a folder was expected", 2
    if err.errno == errno.ENAMETOOLONG:
        return f"{where}{reason}; choose a shorter path", 2
    return None


def _dispatch(args: argparse.Namespace) -> int:
    handler = VERBS.get(args.verb)
    if handler is None:
        raise ConfigError(f"unknown command {args.verb!r}")
    return handler(args)


def _demo_data(args: argparse.Namespace) -> int:
    from gand.data.demo import generate_landscapes, write_digits
    from gand.observability.logging import configure_logging

    configure_logging(stream=sys.stderr)  # stdout is the result

    if args.n is not None and args.n < 1:
        raise ConfigError(f"--n must be at least 1 (got {args.n})")
    if args.kind == "digits":
        if args.n is not None:  # writing 1,797 when 5 were asked for would surprise
            raise ConfigError(
                f"--n {args.n}: --kind digits writes all 1,797 of scikit-learn's scans; --n is "
                "for --kind landscapes (pick a subset with `gand pack --exclude`)"
            )
        summary = write_digits(args.dest)
    else:
        summary = generate_landscapes(args.dest, count=args.n or 2000, seed=args.seed)
    _emit(
        summary,
        f"wrote {summary['images']} images to {summary['dest']}: "
        + ", ".join(
            f"{name} {count}" for name, count in (summary.get("per_style") or summary.get("per_class") or {}).items()
        ),
    )
    return 0


def _pack(args: argparse.Namespace) -> int:
    from gand.data.pack import pack
    from gand.observability.logging import configure_logging
    from gand.observability.progress import ProgressReporter, pack_summary

    configure_logging()
    progress = ProgressReporter()
    try:
        report = pack(args.src, args.dest, _pack_options(args), on_progress=progress)
    finally:
        progress.close()
    print(pack_summary(report), file=sys.stderr)
    return 0


def _daemon(args: argparse.Namespace) -> int:
    from gand.data.daemon import run_daemon
    from gand.observability.logging import configure_logging

    configure_logging()
    return run_daemon(args.src, args.dest, _pack_options(args), args.interval, args.metrics_port, args.max_polls)


def _plan(args: argparse.Namespace) -> int:
    import torch

    from gand.config import load_config
    from gand.observability.logging import configure_logging
    from gand.train.planner import class_count, format_plan, make_plan, parse_size

    configure_logging(stream=sys.stderr)  # stdout is the plan

    cfg = load_config(args.config, args.overrides)
    try:
        budget = parse_size(args.gpu_mem)
    except ValueError as err:
        raise ConfigError(f"--gpu-mem: {err}") from None
    if args.ranks < 1:
        raise ConfigError(f"--ranks must be at least 1 (got {args.ranks})")
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    plan = make_plan(cfg, class_count(cfg, args.classes), budget, args.ranks, device, show_progress=True)
    print(format_plan(plan, cfg))
    return 0 if plan.best is not None else 1


def _train(args: argparse.Namespace) -> int:
    from gand.config import load_config
    from gand.observability.logging import configure_logging
    from gand.train.launch import follow_launcher, requested_cpu_ranks, run_cpu_ranks, shutdown_distributed
    from gand.train.loop import train

    configure_logging()
    follow_launcher()  # under `accelerate launch`, a launcher that goes is a SIGTERM: save and exit
    cfg = load_config(args.config, args.overrides)  # validate once, before any rank starts
    ranks = requested_cpu_ranks()
    if ranks > 1:
        return run_cpu_ranks(ranks, "gand.train", [args.config, *args.overrides, *(["--fresh"] * args.fresh)])
    try:
        train(cfg, fresh=args.fresh)
    finally:
        shutdown_distributed()
    return 0


def _launch(args: argparse.Namespace) -> int:
    from gand.config import load_config
    from gand.observability.logging import configure_logging
    from gand.train.launch import free_port, launch_ranks

    configure_logging()
    load_config(args.config, args.overrides)  # a bad config fails here, once, with exit code 2
    if args.nproc_per_node < 1 or args.nnodes < 1:
        raise ConfigError("--nproc-per-node and --nnodes must be at least 1")
    node_rank = args.node_rank if args.node_rank is not None else int(os.environ.get("JOB_COMPLETION_INDEX", 0))
    port = args.main_port or (free_port() if args.nnodes == 1 else 29500)
    return launch_ranks(
        "gand.train",
        [args.config, *args.overrides],
        args.nproc_per_node,
        args.nnodes,
        node_rank,
        args.main_address,
        port,
    )


def _eval(args: argparse.Namespace) -> int:
    from gand.eval.fid import evaluate_checkpoint
    from gand.observability.logging import configure_logging

    configure_logging(stream=sys.stderr)  # stdout is the scores: `gand eval RUN > scores.json`
    if args.n is not None and args.n < 10:
        raise ConfigError(f"--n must be at least 10 (got {args.n})")
    metrics = tuple(name.strip().lower() for name in args.metrics.split(",") if name.strip())
    result = evaluate_checkpoint(args.run, args.n, metrics, args.weights, args.batch)
    _emit(result, _scores_text(result))
    return 0


def _sample(args: argparse.Namespace) -> int:
    from gand.eval.samples import write_samples
    from gand.observability.logging import configure_logging
    from gand.observability.progress import plural

    configure_logging(stream=sys.stderr)  # stdout is the result

    if args.n < 1:
        raise ConfigError(f"--n must be at least 1 (got {args.n})")
    try:
        seeds = [int(part) for part in args.seeds.split(",")] if args.seeds else None
    except ValueError:
        raise ConfigError(f"--seeds: expected integers such as 3,17,42 (got {args.seeds!r})") from None
    written = write_samples(
        args.run, args.out, args.n, args.class_index, args.seed, args.interpolate, seeds, args.arithmetic
    )
    _emit(
        {"out": args.out, "written": written},
        f"wrote {plural(len(written), 'PNG file')} to {args.out}: " + ", ".join(written),
    )
    return 0


def _features(args: argparse.Namespace) -> int:
    from gand.eval.features import compare_on_dataset
    from gand.observability.logging import configure_logging

    configure_logging(stream=sys.stderr)  # stdout is the result

    if not 0 < args.test_share < 1:
        raise ConfigError(f"--test-share must be between 0 and 1 (got {args.test_share})")
    result = compare_on_dataset(args.run, args.data, args.test_share)
    _emit(
        result,
        f"{result['checkpoint']}: linear SVM on {result['test_images']} held-out images of "
        f"{result['classes']} classes: D's features {result['discriminator_features_accuracy']:.1%} "
        f"({result['feature_dims']} dims), raw pixels {result['raw_pixels_accuracy']:.1%} "
        f"({result['pixel_dims']} dims)",
    )
    return 0


def _plot(args: argparse.Namespace) -> int:
    from gand.eval.samples import plot_run
    from gand.observability.logging import configure_logging

    configure_logging(stream=sys.stderr)  # stdout is the result

    result = plot_run(args.run, args.out, args.smooth)
    _emit(
        result,
        f"{result['checkpoint']}: {result['points']} logged points -> {result['out']}: " + ", ".join(result["written"]),
    )
    return 0


def _submit(args: argparse.Namespace) -> int:
    from gand.config import load_config
    from gand.k8s.render import SubmitOptions, render_run, to_yaml

    cfg = load_config(args.config, args.overrides)
    options = SubmitOptions(
        image=args.image,
        gpus=args.gpus,
        nodes=args.nodes,
        spot=args.spot,
        namespace=args.namespace,
        queue=args.queue,
        priority_class=args.priority_class,
    )
    objects = render_run(cfg, options)
    if args.dry_run:
        print(to_yaml(objects), end="")
        return 0
    from gand.k8s.cluster import create_objects

    for line in create_objects(objects, options.namespace):
        print(line)
    return 0


def _status(args: argparse.Namespace) -> int:
    from gand.k8s.cluster import run_status

    print(run_status(args.run, args.namespace))
    return 0


# `gand <verb>` -> its handler: each validates what argparse cannot, calls one function and prints the result.
VERBS: dict[str, Callable[[argparse.Namespace], int]] = {
    "demo-data": _demo_data,
    "pack": _pack,
    "daemon": _daemon,
    "plan": _plan,
    "train": _train,
    "launch": _launch,
    "eval": _eval,
    "sample": _sample,
    "features": _features,
    "plot": _plot,
    "submit": _submit,
    "status": _status,
}


if __name__ == "__main__":
    sys.exit(main())
