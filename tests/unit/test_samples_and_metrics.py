import io
import urllib.request
from types import SimpleNamespace

import torch
from PIL import Image

from gand.eval.samples import generate, grid_png, sampling_mode
from gand.models import ModelSpec, build_models
from gand.observability.metrics import TrainingMetrics
from gand.observability.report import DataCounts, DiscriminatorOutputs, LoggedStep, NetworkNumbers


def test_grid_layout_and_value_mapping():
    images = torch.full((6, 3, 8, 8), -1.0)
    images[0] = 1.0
    grid = Image.open(io.BytesIO(grid_png(images, padding=2)))
    assert grid.size == (3 * 10 + 2, 2 * 10 + 2)  # 3 columns x 2 rows of 8 px with 2 px gaps
    assert grid.getpixel((2, 2)) == (255, 255, 255)
    assert grid.getpixel((12, 2)) == (0, 0, 0)


def test_sampling_leaves_batchnorm_buffers_untouched_and_does_not_depend_on_the_batch():
    generator, _ = build_models("dcgan", ModelSpec(32, latent_dim=8, width=0.125))
    before = {k: v.clone() for k, v in generator.state_dict().items()}
    recipe = SimpleNamespace(latent_dim=8, num_classes=0, sample_classes=False)
    noise = torch.randn(16, 8)
    with sampling_mode(generator, recipe):
        many = generate(generator, noise)
    with sampling_mode(generator, recipe):
        one = generate(generator, noise[:1])
    assert many.shape == (16, 3, 32, 32) and torch.allclose(one[0], many[0], atol=1e-6)
    plain = generate(generator, noise[:1])  # outside sampling_mode: the running statistics, still batch-free
    assert torch.allclose(plain[0], generate(generator, noise)[0], atol=1e-6)
    assert generator.training  # its mode restored
    for key, value in generator.state_dict().items():
        assert torch.equal(value, before[key]), key


def logged_step(step: int, images_seen: int, d_terms: dict[str, float]) -> LoggedStep:
    def numbers(terms: dict[str, float]) -> NetworkNumbers:
        return NetworkNumbers(loss=sum(terms.values()), terms=terms, grad_norm=2.0, vanishing={"blocks.0": 0.5},
                              learning_rate=2e-4)  # fmt: skip

    return LoggedStep(step=step, images_seen=images_seen, epoch=1, images_per_second=12.0,
                      generator=numbers({"adv": 1.5}), discriminator=numbers(d_terms),
                      d_outputs=DiscriminatorOutputs(0.75, 0.25, 1.0, 0.5), d_dominating=False,
                      data=DataCounts(wait_seconds=0.5, batches=3, shards_opened=2,
                                      skipped={"undecodable": 1}))  # fmt: skip


def test_metrics_endpoint_serves_progress():
    metrics = TrainingMetrics(port=0, run_name="unit")
    try:
        metrics.record_step(logged_step(step=3, images_seen=96, d_terms={"adv": 0.125, "gp": 0.125}))
        body = urllib.request.urlopen(f"http://127.0.0.1:{metrics.port}/metrics", timeout=5).read().decode()
    finally:
        metrics.close()
    assert "gand_train_steps 3.0" in body
    assert "gand_train_images_seen 96.0" in body
    assert 'gand_train_loss{network="d",term="total"} 0.25' in body
    assert 'gand_train_loss{network="d",term="gp"} 0.125' in body
    assert 'gand_build_info{run="unit"' in body
    assert 'gand_discriminator_accuracy{input="fake"} 0.5' in body
    assert 'gand_vanishing_gradient_ratio{group="blocks.0",network="generator"} 0.5' in body
    assert 'gand_data_samples_skipped_total{reason="undecodable"} 1.0' in body
    assert 'gand_grad_norm{network="discriminator"} 2.0' in body


def test_no_port_means_no_exporter():
    metrics = TrainingMetrics(port=None, run_name="unit")
    metrics.record_step(logged_step(1, 1, {"adv": 1.0}))  # a no-op, not an error
    assert not metrics.enabled
