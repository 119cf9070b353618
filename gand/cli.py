"""`gand <verb>`: parse arguments, call one function, turn gand's errors into messages and exit codes."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

from gand import __version__
from gand.errors import ConfigError, GandError


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # argparse's own exit code is 2 too; keep its usage line
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
    demo.add_argument("--n", type=int, default=2000, help="landscapes only: number of images (default 2000)")
    demo.add_argument("--seed", type=int, default=0)

    pack = verbs.add_parser("pack", help="pack an image folder into WebDataset shards at every resolution")
    pack.add_argument("src", help="image folder; first-level sub-folder names become class labels")
    pack.add_argument("dest", help="output directory or URL (shards per resolution + manifest.json)")
    pack.add_argument("--resolutions", type=_resolutions, default=(32, 64), help="e.g. 32,64,128,256")
    pack.add_argument("--shard-size", type=int, default=1000, help="images per shard (default 1000)")
    pack.add_argument("--min-side", type=int, default=0, help="skip images whose shortest side is smaller")
    pack.add_argument("--upscale", action="store_true", help="allow images smaller than the largest resolution")
    pack.add_argument("--workers", type=int, default=None, help="decode processes (default: cores, up to 8)")
    pack.add_argument("--overwrite", action="store_true", help="replace a packed dataset already at DEST")

    train = verbs.add_parser("train", help="train from a YAML config (also: accelerate launch -m gand.train)")
    train.add_argument("config", help="YAML file, e.g. configs/dcgan32.yaml")
    train.add_argument("overrides", nargs="*", help="section.field=value, e.g. train.max_steps=20")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
        return _dispatch(args)
    except GandError as err:
        print(f"error: {err}", file=sys.stderr)
        return err.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


def _dispatch(args: argparse.Namespace) -> int:
    if args.verb == "demo-data":
        from gand.data.demo import generate_landscapes, write_digits

        if args.n < 1:
            raise ConfigError(f"--n must be at least 1 (got {args.n})")
        if args.kind == "digits":
            summary = write_digits(args.dest)
        else:
            summary = generate_landscapes(args.dest, count=args.n, seed=args.seed)
        print(json.dumps(summary))
        return 0
    if args.verb == "pack":
        from gand.data.pack import PackOptions, pack
        from gand.observability.logging import configure_logging

        configure_logging()
        options = PackOptions(
            resolutions=args.resolutions,
            shard_size=args.shard_size,
            min_side=args.min_side,
            upscale=args.upscale,
            overwrite=args.overwrite,
            **({"workers": args.workers} if args.workers is not None else {}),
        )
        pack(args.src, args.dest, options)
        return 0
    if args.verb == "train":
        from gand.config import load_config
        from gand.observability.logging import configure_logging
        from gand.train.engine import requested_cpu_ranks, run_cpu_ranks
        from gand.train.loop import train

        configure_logging()
        cfg = load_config(args.config, args.overrides)  # validate once, before any rank starts
        ranks = requested_cpu_ranks()
        if ranks > 1:
            return run_cpu_ranks(ranks, "gand.train", [args.config, *args.overrides])
        train(cfg)
        return 0
    raise ConfigError(f"unknown command {args.verb!r}")


if __name__ == "__main__":
    sys.exit(main())
