"""Sample quality on real data, offline: DCGAN and AC-GAN on scikit-learn's handwritten digits at 32 px, CPU.

For each model: train for a fixed number of steps with gand's own CLI (the shipped config plus overrides), draw
1,000 samples from the final checkpoint, and let a classifier trained on the real digits judge them:
  - classes found: how many of the 10 digits the classifier assigns at least 1% of the samples to
  - confident: the share of samples it labels with probability > 0.9
  - for AC-GAN, also the share whose predicted digit is the class G was asked for
The classifier's own held-out accuracy on real digits is printed as the yardstick.

    .venv/bin/python bench/quality_digits.py [--steps 1500] [--width 0.5] [--out bench/results/quality_digits.json]
"""

from __future__ import annotations

import argparse
import io
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
import webdataset as wds
from PIL import Image
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import train_test_split

from gand.data.demo import write_digits
from gand.data.pack import PackOptions, pack
from gand.eval.samples import generate, load_generator

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.common import REPO, write_record

SAMPLES = 1000
CONFIDENT = 0.9
FOUND_SHARE = 0.01


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=1500, help="training steps per model (batch 64)")
    parser.add_argument("--width", type=float, default=0.5, help="model.width for both models")
    parser.add_argument("--work", default="bench/work/quality_digits", help="scratch directory")
    parser.add_argument("--out", default="bench/results/quality_digits.json")
    args = parser.parse_args()

    work = REPO / args.work
    packed = prepare_digits(work)
    pixels, labels = read_packed(packed)
    classifier, accuracy = fit_classifier(pixels, labels)
    print(f"classifier on real digits: held-out accuracy {accuracy:.3f}")

    rows = []
    for name, config in (("dcgan", "configs/dcgan32.yaml"), ("acgan", "configs/acgan32.yaml")):
        run_dir = work / f"run-{name}-{args.steps}"
        seconds = train(config, packed, run_dir, args.steps, args.width)
        rows.append({"model": name, "steps": args.steps, "train_seconds": round(seconds, 1),
                     **judge(run_dir, classifier)})  # fmt: skip

    print_table(rows, accuracy)
    settings = {"steps": args.steps, "width": args.width, "batch_size": 64, "samples": SAMPLES}
    write_record("quality_digits", args.out, settings, rows, classifier_accuracy=round(accuracy, 4))
    return 0


def prepare_digits(work: Path) -> Path:
    raw, packed = work / "raw", work / "packed"
    if not (packed / "manifest.json").exists():
        write_digits(raw)
        pack(str(raw), str(packed), PackOptions(resolutions=(32,), shard_size=300, overwrite=True))
    return packed


def read_packed(packed: Path) -> tuple[np.ndarray, np.ndarray]:
    """The packed 32 px digits as [0, 1] grayscale vectors: exactly what the GANs were trained on."""
    manifest = json.loads((packed / "manifest.json").read_text())
    urls = [str(packed / shard["path"]) for shard in manifest["shards"]["32"]]
    pixels, labels = [], []
    for sample in wds.WebDataset(urls, shardshuffle=False):
        pixels.append(np.asarray(Image.open(io.BytesIO(sample["png"])).convert("L"), np.float32).ravel() / 255)
        labels.append(int(sample["cls"]))
    return np.stack(pixels), np.array(labels)


def fit_classifier(pixels: np.ndarray, labels: np.ndarray) -> tuple[LogisticRegression, float]:
    train_x, test_x, train_y, test_y = train_test_split(pixels, labels, test_size=0.2, random_state=0, stratify=labels)
    held_out = LogisticRegression(max_iter=3000).fit(train_x, train_y)
    accuracy = float(held_out.score(test_x, test_y))
    return LogisticRegression(max_iter=3000).fit(pixels, labels), accuracy  # the judge sees every real digit


def train(config: str, packed: Path, run_dir: Path, steps: int, width: float) -> float:
    command = [
        sys.executable, "-m", "gand.cli", "train", config,
        f"data.path={packed}", "data.channels=1", "data.workers=1", f"run.dir={run_dir}", f"model.width={width}",
        "train.batch_size=64", f"train.max_steps={steps}", "train.log_every_steps=100",
        f"checkpoint.every_steps={max(steps // 3, 1)}", f"samples.every_steps={max(steps // 5, 1)}",
        "samples.count=100", "metrics.port=null",
    ]  # fmt: skip
    started = time.perf_counter()
    print(f"training {config} for {steps} steps -> {run_dir.relative_to(REPO)}", flush=True)
    subprocess.run(command, check=True, cwd=REPO, stdout=subprocess.DEVNULL)
    return time.perf_counter() - started


def judge(run_dir: Path, classifier: LogisticRegression) -> dict:
    generator, cfg, classes, _ = load_generator(str(run_dir / "checkpoints"))
    torch.manual_seed(1234)
    asked = torch.arange(SAMPLES) % classes if cfg.model.arch == "acgan" else None
    images = generate(generator, torch.randn(SAMPLES, cfg.model.latent_dim), asked)
    vectors = ((images.clamp(-1, 1) + 1) / 2).flatten(1).numpy()
    probabilities = classifier.predict_proba(vectors)
    predicted = probabilities.argmax(axis=1)
    shares = np.bincount(predicted, minlength=10) / SAMPLES
    row = {
        "classes_found": int((shares >= FOUND_SHARE).sum()),
        "confident_share": round(float((probabilities.max(axis=1) > CONFIDENT).mean()), 3),
        "class_shares": [round(float(share), 3) for share in shares],
    }
    if asked is not None:
        row["matches_asked_class"] = round(float((predicted == asked.numpy()).mean()), 3)
    return row


def print_table(rows: list[dict], accuracy: float) -> None:
    print(f"\n{SAMPLES} samples per model, judged by a logistic regression on real digits (accuracy {accuracy:.3f})")
    print(f"{'model':8} {'steps':>6} {'train s':>8} {'classes found':>14} {'p>0.9':>7} {'= asked class':>14}")
    for row in rows:
        match = f"{row['matches_asked_class']:.3f}" if "matches_asked_class" in row else "-"
        print(f"{row['model']:8} {row['steps']:>6} {row['train_seconds']:>8.0f} {row['classes_found']:>11}/10 "
              f"{row['confident_share']:>7.3f} {match:>14}")  # fmt: skip


if __name__ == "__main__":
    sys.exit(main())
