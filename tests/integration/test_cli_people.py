"""The command line tried as a new user would: the machine saying no (read-only, full disk, no cluster), damaged
files, bad input, output meant for people at a terminal and for programs elsewhere, progress on long work."""

import json
import os
import subprocess
from pathlib import Path

import pytest
import yaml
from PIL import Image

from gand.train.planner import CHECKPOINTING
from tests.conftest import REPO, free_port, gand, on_terminal, tiny_config

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def small_run(tmp_path_factory, packed) -> Path:
    tmp_path = tmp_path_factory.mktemp("people")
    config = tiny_config(tmp_path, packed, train={"max_steps": 2})
    result = gand("train", str(config))
    assert result.returncode == 0, result.stderr
    return tmp_path / "run"


@pytest.fixture
def mount_tmpfs(tmp_path):
    """Mount a tmpfs with the given options (ro; size=...) under tmp_path: a real read-only or full file system.
    Needs root (CI and `make test` run as root); skipped elsewhere."""
    mounted = []

    def mount(name: str, options: str) -> Path:
        target = tmp_path / name
        target.mkdir()
        result = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(target)], capture_output=True)
        if result.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here (needs root): {result.stderr.decode().strip()}")
        mounted.append(target)
        return target

    yield mount
    for target in mounted:
        subprocess.run(["umount", str(target)], check=False)


def one_error(result: subprocess.CompletedProcess) -> str:
    """The single `error:` line a failed command prints; no traceback around it."""
    assert "Traceback" not in result.stderr and "Exception ignored" not in result.stderr, result.stderr[-3000:]
    lines = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1, result.stderr[-3000:]
    return lines[0]


def test_read_only_places_are_one_message_naming_them_with_exit_2(tmp_path, demo_raw, packed, small_run,
                                                                  mount_tmpfs):  # fmt: skip
    read_only = mount_tmpfs("ro", "ro,size=1m")
    packing = gand("pack", str(demo_raw), str(read_only / "packed"), "--resolutions", "32", "--workers", "1")
    assert packing.returncode == 2
    assert f"{read_only}/packed: Read-only file system; choose a location" in one_error(packing)
    config = tiny_config(tmp_path / "cfg", packed)
    training = gand("train", str(config), f"run.dir={read_only}/run")
    assert training.returncode == 2 and f"{read_only}/run: Read-only file system" in one_error(training)
    sampling = gand("sample", str(small_run), "--out", str(read_only / "samples"))
    assert sampling.returncode == 2 and f"{read_only}/samples: Read-only file system" in one_error(sampling)
    plotting = gand("plot", str(small_run), "--out", str(read_only / "plots"))
    assert plotting.returncode == 2 and "Read-only file system" in one_error(plotting)


def test_a_full_disk_while_packing_is_one_message_and_leaves_no_half_written_shard(demo_raw, mount_tmpfs):
    full = mount_tmpfs("full", "size=160k")  # the 64 px shard of 45 landscapes is ~600 KiB
    result = gand("pack", str(demo_raw), str(full / "packed"), "--resolutions", "32,64", "--min-side", "128",
                  "--workers", "1")  # fmt: skip
    assert result.returncode == 1
    message = one_error(result)
    assert f"{full}/packed" in message and "No space left on device" in message and "run the same command" in message
    left = [path for path in (full / "packed").rglob("*") if path.is_file()]
    assert not [path for path in left if path.suffix == ".tar" or ".tmp-" in path.name], left
    assert not (full / "packed" / "manifest.json").exists()


def test_junk_weights_an_unreachable_cluster_and_damaged_dataset_records_are_one_message(tmp_path, demo_raw,
                                                                                         small_run):  # fmt: skip
    junk = tmp_path / "inception.pth"
    junk.write_bytes(os.urandom(4096))
    scored = gand("eval", str(small_run), "--weights", str(junk), "--n", "10")
    message = one_error(scored)
    assert scored.returncode == 1 and f"{junk}: not a file of plain tensors" in message
    assert "weights_only" not in message  # torch's hint (load it with code execution on) is not passed on

    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "x",
        "clusters": [{"name": "c", "cluster": {"server": f"https://127.0.0.1:{free_port()}"}}],
        "users": [{"name": "u", "user": {"token": "t"}}],
        "contexts": [{"name": "x", "context": {"cluster": "c", "user": "u"}}],
    }))  # fmt: skip
    env = {"KUBECONFIG": str(kubeconfig), "KUBERNETES_SERVICE_HOST": ""}
    submitted = gand("submit", str(REPO / "configs" / "can256.yaml"), "--image", "r/g:1", "data.path=s3://b/p",
                     "checkpoint.url=s3://b/c", env=env)  # fmt: skip
    assert submitted.returncode == 1
    assert "cannot reach the Kubernetes API server at https://127.0.0.1:" in one_error(submitted)
    status = gand("status", "can256", env=env)
    assert status.returncode == 1 and "cannot reach the Kubernetes API server" in one_error(status)

    dest = tmp_path / "packed"
    assert gand("pack", str(demo_raw), str(dest), "--resolutions", "32", "--workers", "1").returncode == 0
    (dest / "manifest.json").write_text('{"generation": 1, "parts"')  # cut short
    damaged = gand("pack", str(demo_raw), str(dest), "--resolutions", "32", "--workers", "1")
    assert damaged.returncode == 1
    assert f"{dest}/manifest.json is damaged" in one_error(damaged) and "delete it and run" in damaged.stderr
    (dest / "manifest.json").unlink()  # what the message says to do: the part records rebuild it
    rebuilt = gand("pack", str(demo_raw), str(dest), "--resolutions", "32", "--workers", "1")
    assert rebuilt.returncode == 0 and json.loads((dest / "manifest.json").read_text())["num_samples"] > 0
    next(iter(sorted((dest / "parts").iterdir()))).write_text("{}")
    part = gand("pack", str(demo_raw), str(dest), "--resolutions", "32", "--workers", "1")
    assert part.returncode == 1 and "part-000000.json is damaged" in one_error(part) and "--overwrite" in part.stderr


def test_bad_input_is_refused_or_warned_about(tmp_path, demo_raw, packed, small_run):
    dropped = gand("pack", str(demo_raw), str(tmp_path / "none"), "--min-side", "5000", "--resolutions", "32")
    assert dropped.returncode == 2 and "every file in" in one_error(dropped) and "--min-side" in dropped.stderr
    assert not (tmp_path / "none" / "manifest.json").exists()
    formats = gand("pack", str(demo_raw), str(tmp_path / "f"), "--formats", "jpeg,pngg")
    assert formats.returncode == 2 and "'pngg' is not a format family" in one_error(formats)
    walk = gand("sample", str(small_run), "--out", str(tmp_path / "s"), "--interpolate", "5", "--seeds", "3")
    assert walk.returncode == 2 and "give at least two" in one_error(walk)
    config = tiny_config(tmp_path / "cfg", packed)
    boolean = gand("train", str(config), "train.max_steps=true")
    assert boolean.returncode == 2 and "train.max_steps: expected a number, not a boolean" in boolean.stderr
    digits = gand("demo-data", str(tmp_path / "digits"), "--kind", "digits", "--n", "5")
    assert digits.returncode == 2 and "--n is for --kind landscapes" in one_error(digits)
    assert not (tmp_path / "digits").exists()
    big = gand("train", str(config), "train.batch_size=64", "train.max_steps=1", f"run.dir={tmp_path / 'big'}")
    assert big.returncode == 0, big.stderr
    warning = next(json.loads(line) for line in big.stdout.splitlines() if "batch_larger_than_dataset" in line)
    assert warning["batch_images"] == 64 and warning["dataset_images"] < 64


def test_results_are_text_at_a_terminal_and_json_elsewhere(tmp_path, small_run):
    code, text = on_terminal("plot", str(small_run), "--out", str(tmp_path / "plots"))
    assert code == 0 and f"logged points -> {tmp_path / 'plots'}: " in text and "losses.png" in text
    assert '{"checkpoint"' not in text
    piped = gand("plot", str(small_run), "--out", str(tmp_path / "plots"))
    assert json.loads(piped.stdout)["written"]  # the whole of stdout is one JSON object
    code, text = on_terminal("sample", str(small_run), "--out", str(tmp_path / "s"), "--n", "4")
    assert code == 0 and "wrote 1 PNG file to" in text
    code, text = on_terminal("demo-data", str(tmp_path / "demo"), "--n", "8")
    assert code == 0 and "wrote 8 images to" in text


def test_long_work_shows_progress_and_the_first_training_step_is_logged(tmp_path, packed):
    plan = gand("plan", str(REPO / "configs" / "dcgan32.yaml"), "--gpu-mem", "16GiB", f"data.path={packed}",
                "--device", "cpu")  # fmt: skip
    assert plan.returncode in (0, 1), plan.stderr[-2000:]
    probes = [json.loads(line) for line in plan.stderr.splitlines() if '"progress"' in line]
    assert probes and probes[-1]["done"] == probes[-1]["total"] == len(CHECKPOINTING) and probes[-1]["unit"] == "probes"
    assert "fits" in plan.stdout or "setting" in plan.stdout.lower()  # the plan itself stays on stdout

    config = tiny_config(tmp_path, packed, train={"max_steps": 3, "log_every_steps": 100})
    result = gand("train", str(config))
    assert result.returncode == 0, result.stderr
    steps = [json.loads(line)["step"] for line in result.stdout.splitlines() if '"train_step"' in line]
    assert steps == [1, 3]  # the first step (alive, warmed up), then the last


def test_small_things_a_new_user_meets(tmp_path, demo_raw, packed):
    helped = gand("pack", "--help")
    assert "default: 32,64" in " ".join(helped.stdout.split())
    packing = gand("pack", str(demo_raw), str(tmp_path / "p"), "--resolutions", "32", "--min-side", "128")
    assert "1 part, 4 classes" in packing.stderr and "1 shard " in packing.stderr and "1 parts" not in packing.stderr

    port = free_port()
    import socket

    with socket.socket() as holder:
        holder.bind(("127.0.0.1", port))
        holder.listen()
        config = tiny_config(tmp_path, packed, train={"max_steps": 1}, metrics={"port": port})
        result = gand("train", str(config))
    assert result.returncode == 0, result.stderr
    busy = next(json.loads(line) for line in result.stdout.splitlines() if "metrics_port_unavailable" in line)
    assert "metrics.port=" in busy["fix"] and "--metrics-port" in busy["fix"]


def test_walks_arithmetic_and_class_grids_are_labelled(tmp_path, small_run, packed):
    out = tmp_path / "s"
    result = gand("sample", str(small_run), "--out", str(out), "--n", "4", "--interpolate", "5", "--seeds", "3,4",
                  "--arithmetic", "a=1,2 b=3,4 c=5,6 : a - b + c")  # fmt: skip
    assert result.returncode == 0, result.stderr
    plain = Image.open(out / "grid.png")
    walk = Image.open(out / "interpolate-linear-3-4.png").convert("L")
    assert walk.height > 64 and walk.width >= 5 * 64  # enlarged to 64 px cells, with a band for the labels
    band = [walk.getpixel((x, y)) for x in range(walk.width) for y in range(30)]
    assert min(band) < 100 and plain.size == (2 * 34 + 2, 2 * 34 + 2)  # text drawn; the plain grid unchanged
    assert Image.open(out / "arithmetic.png").width > 4 * 64

    config = tiny_config(tmp_path / "acgan", packed, model={"arch": "acgan", "latent_dim": 16, "width": 0.125},
                         loss={"class_mode": "auxiliary"}, train={"max_steps": 1})  # fmt: skip
    trained = gand("train", str(config))
    assert trained.returncode == 0, trained.stderr[-2000:]
    grid_out = tmp_path / "ac"
    assert gand("sample", str(tmp_path / "acgan" / "run"), "--out", str(grid_out), "--n", "8").returncode == 0
    grid = Image.open(grid_out / "grid.png")
    assert grid.width >= 4 * 64  # one column per class (4 styles), each 64 px or more


def test_pack_warnings_print_above_the_progress_bar_not_through_it(tmp_path, demo_raw):
    code, text = on_terminal("pack", str(demo_raw), str(tmp_path / "p"), "--resolutions", "32", "--min-side", "128",
                             "--workers", "1")  # fmt: skip
    assert code == 0, text[-2000:]
    starts = [text.rfind("{", 0, index) for index in range(len(text)) if text.startswith('"image_skipped"', index)]
    assert len(starts) == 3  # the demo's three thumbnails
    for start in starts:  # each warning begins on an erased line (the bar is drawn again under it), never after it
        assert text[:start].endswith("\x1b[K"), repr(text[max(0, start - 120) : start])
    assert "[##############################] 48/48" in text


def test_operating_system_errors_get_advice_only_where_gand_has_some(tmp_path):
    import errno

    from gand.cli import _os_error_message

    assert _os_error_message(OSError(errno.ENOSPC, "No space left on device", "/data/p"))[1] == 1
    assert _os_error_message(OSError(errno.EACCES, "Permission denied", "/etc/x"))[0].startswith(
        "/etc/x: Permission denied; check its permissions"
    )
    assert _os_error_message(OSError(errno.ENOENT, "No such file or directory", "/nope"))[1] == 1  # may vanish mid-run
    assert _os_error_message(OSError(errno.ECONNRESET, "Connection reset", "/x")) is None  # shown as it is
    assert _os_error_message(OSError("no errno, no file")) is None
    assert _os_error_message(OSError(errno.ENOSPC, "No space left on device"))[1] == 1  # a failed write: no file
    assert _os_error_message(TimeoutError()) is None
    folder = gand("train", str(tmp_path))  # a folder given as the config file
    assert folder.returncode == 2 and "Traceback" not in folder.stderr


def test_an_output_folder_that_is_a_file_is_one_message(tmp_path, small_run):
    taken = tmp_path / "picks.png"
    taken.write_bytes(b"not a folder")
    result = gand("sample", str(small_run), "--out", str(taken), "--n", "4")
    assert result.returncode == 2 and "a file where a folder was expected" in one_error(result)
