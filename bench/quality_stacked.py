"""Mode coverage on stacked digits: the Stacked-MNIST protocol (1000 modes) with scikit-learn's bundled digits.

Each training image's three colour channels are three independent real digits (scikit-learn's 1,797 scans, 8 -> 32
px, drawn uniformly), so the set has 10 x 10 x 10 = 1000 modes. For each config: train with gand's own command for a
wall-clock budget (then a SIGTERM, as a preemption would send: gand commits a checkpoint and exits 75), draw 26,000
samples (PacGAN's and R3GAN's protocol) from that commit (the EMA generator where there is one, BatchNorm
recalibrated as `gand sample` does), classify each channel with a classifier trained on the real digits, and
report, as R3GAN's Table 3 does:
  - modes covered: how many of the 1000 digit triples occur at least once among the samples;
  - KL(samples || uniform) over the 1000 modes (0 for a perfectly even spread, but a finite sample of a perfectly
    uniform generator scores about 999 / (2 x samples): 0.019 at 26,000, 0.05 at 10,000);
  - confident: the share of samples whose three channels are each classified with probability > 0.9.
The real stacked set, scored the same way, is the ceiling. Published numbers (R3GAN, Huang et al. 2024, Table 3):
DCGAN 99 modes, WGAN-GP 959, StyleGAN2 940, PacGAN 992 (KL 0.28), R3GAN 1000 (KL 0.029); those use MNIST and a
CNN classifier, this bench scikit-learn's digits and a small MLP on their 8x8 scans.

    .venv/bin/python bench/quality_stacked.py                        # CPU: 20 minutes per config, width 0.5
    .venv/bin/python bench/quality_stacked.py --configs r3gan32 --minutes 5
    .venv/bin/python bench/quality_stacked.py --gpu                  # 10 minutes per config, the configs' widths
    .venv/bin/python bench/quality_stacked.py --score-only           # score the runs in --work again, no training

Targets: 1000/1000 modes, KL <= 0.05, >= 90% confident within 10 minutes on an H100/H200; >= 998 modes,
KL <= 0.1, >= 85% confident within 20 minutes on a 2-core CPU.
"""

from __future__ import annotations

import argparse
import io
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
import webdataset as wds
from PIL import Image
from sklearn.model_selection import train_test_split
from sklearn.neural_network import MLPClassifier

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.common import REPO, print_table, write_record

SIDE = 32
MODES = 1000
CONFIDENT = 0.9
STOPPED_WITH_COMMIT = 75  # gand's exit code after a stop signal with a committed checkpoint


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--configs", default="dcgan32,wgangp32,r3gan32", help="configs/<name>.yaml, comma-separated")
    parser.add_argument("--minutes", type=float, default=None, help="training budget per config (20 CPU, 10 --gpu)")
    parser.add_argument("--gpu", action="store_true", help="the configs' own widths and a 10-minute budget")
    parser.add_argument("--images", type=int, default=30_000, help="stacked training images to make and pack")
    parser.add_argument("--samples", type=int, default=26_000, help="generated images scored per config")
    parser.add_argument("--score-only", action="store_true", help="score the runs already in --work, no training")
    parser.add_argument("--width", type=float, default=0.5, help="model.width on the CPU (--gpu: the config's)")
    parser.add_argument("--work", default="bench/work/quality_stacked", help="scratch directory")
    parser.add_argument("--out", default="bench/results/quality_stacked.json")
    args = parser.parse_args()
    minutes = args.minutes if args.minutes is not None else (10.0 if args.gpu else 20.0)

    work = REPO / args.work
    digits, digit_labels = upscaled_digits()
    classifier, accuracy = fit_classifier(digits, digit_labels)
    print(f"digit classifier: held-out accuracy {accuracy:.3f} on real 32 px digits", flush=True)
    packed = prepare_stacked(work, digits, args.images)
    rows = [{"config": "real stacked digits", **score(read_packed(packed, args.samples), classifier)}]
    print(format_row(rows[0]), flush=True)
    for name in args.configs.split(","):
        run_dir = work / f"run-{name}-{minutes:g}min{'-gpu' if args.gpu else ''}"
        if not args.score_only:
            train(name, packed, run_dir, minutes, None if args.gpu else args.width)
        images, trained = sample(run_dir, args.samples)
        row = {"config": name, **trained, **score(images, classifier)}
        rows.append(row)
        print(format_row(row), flush=True)
    columns = [("config", "config"), ("minutes", "minutes"), ("steps", "steps"), ("kimg", "kimg"),
               ("modes", "modes (of 1000)"), ("kl", "KL to uniform"), ("confident", "confident share")]  # fmt: skip
    print_table(rows, columns)
    settings = {"configs": args.configs, "minutes": minutes, "gpu": args.gpu, "images": args.images,
                "samples": args.samples, "width": None if args.gpu else args.width}  # fmt: skip
    write_record("quality_stacked", args.out, settings, rows, classifier_accuracy=round(accuracy, 4))
    return 0


# -- data ---------------------------------------------------------------------------------------------------------
def upscaled_digits() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's 1,797 real digit scans as N x 32 x 32 uint8, as gand's demo digits are made, and their labels."""
    from gand.data.demo import upscaled_digits as digit_images

    images, labels = digit_images()
    return np.stack([np.asarray(image) for image in images]), labels


def prepare_stacked(work: Path, digits: np.ndarray, count: int) -> Path:
    """`count` RGB images, each channel an independent uniformly drawn digit (seeded), packed by `gand pack`."""
    from gand.data.pack import PackOptions, pack

    raw, packed = work / f"raw-{count}", work / f"packed-{count}"
    if (packed / "manifest.json").exists():
        return packed
    folder = raw / "stacked"  # one folder: the set is unconditional
    folder.mkdir(parents=True, exist_ok=True)
    picks = np.random.default_rng(0).integers(0, len(digits), size=(count, 3))
    started = time.perf_counter()
    for index, (a, b, c) in enumerate(picks):
        Image.fromarray(np.stack([digits[a], digits[b], digits[c]], axis=-1), "RGB").save(folder / f"{index:06d}.png")
    pack(str(raw), str(packed), PackOptions(resolutions=(SIDE,), shard_size=2000, exact_duplicates=False,
                                            labels="none", overwrite=True))  # fmt: skip
    print(f"made and packed {count} stacked digits in {time.perf_counter() - started:.0f} s", flush=True)
    return packed


def read_packed(packed: Path, limit: int) -> np.ndarray:
    """Up to `limit` packed training images as N x 3 x 32 x 32 uint8: what the GANs were trained on."""
    manifest = json.loads((packed / "manifest.json").read_text())
    urls = [str(packed / shard["path"]) for shard in manifest["shards"][str(SIDE)]]
    images = []
    for sample in wds.WebDataset(urls, shardshuffle=False):
        images.append(np.asarray(Image.open(io.BytesIO(sample["png"])).convert("RGB")).transpose(2, 0, 1))
        if len(images) == limit:
            break
    return np.stack(images)


# -- training and sampling ---------------------------------------------------------------------------------------
def train(name: str, packed: Path, run_dir: Path, minutes: float, width: float | None) -> None:
    """`gand train configs/<name>.yaml` on the stacked set for `minutes`, then SIGTERM: it commits and exits 75."""
    command = [sys.executable, "-m", "gand.cli", "train", str(REPO / "configs" / f"{name}.yaml"),
               f"data.path={packed}", f"data.resolution={SIDE}", f"run.dir={run_dir}", "train.max_steps=100000000",
               "train.log_every_steps=100", "samples.every_steps=1000", "checkpoint.every_seconds=300",
               "metrics.port=null", "--fresh"] + ([f"model.width={width}"] if width is not None else [])  # fmt: skip
    print(f"training {name} for {minutes:g} minutes -> {run_dir}", flush=True)
    run_dir.parent.mkdir(parents=True, exist_ok=True)
    log = (run_dir.parent / f"{run_dir.name}.log").open("w")
    process = subprocess.Popen(command, cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
    started = time.perf_counter()
    try:
        process.wait(timeout=minutes * 60)
        raise SystemExit(f"{name}: training ended before its budget (exit {process.returncode}); see {log.name}")
    except subprocess.TimeoutExpired:
        process.send_signal(signal.SIGTERM)  # as a preemption: commit, then exit 75
    code = process.wait(timeout=600)
    if code != STOPPED_WITH_COMMIT:
        raise SystemExit(f"{name}: exit {code} after SIGTERM, expected {STOPPED_WITH_COMMIT}; see {log.name}")
    (run_dir / "bench-minutes.txt").write_text(f"{(time.perf_counter() - started) / 60:.1f}\n")


def sample(run_dir: Path, count: int) -> tuple[np.ndarray, dict]:
    """`count` images from the run's last commit as N x 3 x 32 x 32 uint8, as `gand sample` draws them, and what
    trained it: minutes, steps and kimg of that commit."""
    from gand.eval.samples import generate, load_generator, sampling_mode
    from gand.models import Sampling

    generator, cfg, num_classes, name = load_generator(str(run_dir / "checkpoints"))
    state = json.loads((run_dir / "checkpoints" / name / "state.json").read_text())["train"]
    minutes_file = run_dir / "bench-minutes.txt"
    trained = {"minutes": float(minutes_file.read_text()) if minutes_file.exists() else None,
               "steps": state["step"], "kimg": round(state["images_seen"] / 1000, 1)}  # fmt: skip
    recipe = Sampling.from_config(cfg, num_classes)
    torch.manual_seed(1234)
    batches = []
    with torch.no_grad(), sampling_mode(generator, recipe):
        for start in range(0, count, 500):
            images = generate(generator, torch.randn(min(500, count - start), cfg.model.latent_dim))
            low, high = recipe.value_range
            batches.append(((images.clamp(low, high) - low) / (high - low) * 255).round().to(torch.uint8).numpy())
    return np.concatenate(batches), trained


# -- scoring -----------------------------------------------------------------------------------------------------
def features(channels: np.ndarray) -> np.ndarray:
    """N x 32 x 32 uint8 digit images -> N x 64 in [0, 1]: 4x4 block means, the scans' own 8x8 resolution."""
    return channels.reshape(len(channels), 8, 4, 8, 4).mean(axis=(2, 4), dtype=np.float32).reshape(-1, 64) / 255.0


def classifier_for_digits(seed: int = 0) -> MLPClassifier:
    return MLPClassifier((256,), max_iter=2000, random_state=seed)


def fit_classifier(digits: np.ndarray, labels: np.ndarray) -> tuple[MLPClassifier, float]:
    """A small MLP on the scans' 8x8 resolution (97.8% held-out accuracy; a logistic regression on 32 px reached
    96.4% and was sure of too few real digits to be a useful judge). Returns the judge, fitted on every real digit,
    and the held-out accuracy of one fitted on 80%."""
    inputs = features(digits)
    train_x, test_x, train_y, test_y = train_test_split(inputs, labels, test_size=0.2, random_state=0,
                                                        stratify=labels)  # fmt: skip
    accuracy = float(classifier_for_digits().fit(train_x, train_y).score(test_x, test_y))
    return classifier_for_digits().fit(inputs, labels), accuracy


def score(images: np.ndarray, classifier: MLPClassifier) -> dict:
    """Modes covered, KL to uniform over the 1000 modes and the confident share of N x 3 x 32 x 32 uint8 images."""
    count = len(images)
    channels = features(images.reshape(count * 3, SIDE, SIDE))  # each channel on its own, as the real digits were
    probabilities = classifier.predict_proba(channels).reshape(count, 3, 10)
    digits = probabilities.argmax(axis=2)
    modes = digits[:, 0] * 100 + digits[:, 1] * 10 + digits[:, 2]
    shares = np.bincount(modes, minlength=MODES) / count
    seen = shares[shares > 0]
    kl = float((seen * np.log(seen * MODES)).sum())
    confident = float((probabilities.max(axis=2) > CONFIDENT).all(axis=1).mean())
    return {"samples": count, "modes": int((shares > 0).sum()), "kl": round(kl, 4), "confident": round(confident, 4)}


def format_row(row: dict) -> str:
    minutes = f"{row['minutes']} min, " if row.get("minutes") is not None else ""
    trained = f"{minutes}{row['steps']} steps, {row['kimg']} kimg: " if "steps" in row else ""
    return (f"{row['config']}: {trained}{row['modes']}/1000 modes, KL {row['kl']:.3f}, "
            f"{row['confident']:.1%} confident ({row['samples']} images)")  # fmt: skip


if __name__ == "__main__":
    sys.exit(main())
