"""The shard index: tar headers read without the data, damage skipped to the next valid header, webdataset's keys."""

import io
import tarfile

import numpy as np

from gand.data.images import IMAGE_EXTENSIONS
from gand.data.tarindex import UNLABELLED, SampleReader, index_shard


def write_tar(path, members: list[tuple[str, bytes]], fmt=tarfile.USTAR_FORMAT) -> None:
    with tarfile.open(path, "w", format=fmt) as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


MEMBERS = [("a1.png", b"A" * 700), ("a1.cls", b"3"), ("b2.npy", b"B" * 100), ("c3.jpg", b"C" * 1500),
           ("c3.cls", b"1"), ("c3.json", b"{}")]  # fmt: skip


def test_samples_keys_offsets_and_classes(tmp_path):
    path = tmp_path / "shard.tar"
    write_tar(path, MEMBERS)
    index = index_shard(str(path))
    assert [index.key(i) for i in range(len(index))] == ["a1", "b2", "c3"] and index.complete
    assert [IMAGE_EXTENSIONS[k] for k in index.image_kinds] == ["png", "npy", "jpg"]
    assert index.labels.tolist() == [3, UNLABELLED, 1]
    reader = SampleReader()
    assert [reader.image_bytes(index, i) for i in range(3)] == [b"A" * 700, b"B" * 100, b"C" * 1500]


def test_a_damaged_header_loses_its_member_only(tmp_path):
    path = tmp_path / "shard.tar"
    write_tar(path, MEMBERS)
    data = bytearray(path.read_bytes())
    second_header = 512 + 1024 + 512 + 512  # a1.png header + 2 data blocks, a1.cls header + 1 data block
    assert data[second_header : second_header + 6] == b"b2.npy"
    data[second_header + 1] ^= 0xFF  # one flipped byte in b2.npy's header
    path.write_bytes(bytes(data))
    index = index_shard(str(path))
    assert [index.key(i) for i in range(len(index))] == ["a1", "c3"] and not index.complete
    assert SampleReader().image_bytes(index, 1) == b"C" * 1500


def test_a_truncated_shard_keeps_what_is_whole(tmp_path):
    path = tmp_path / "shard.tar"
    write_tar(path, MEMBERS)
    path.write_bytes(path.read_bytes()[:5000])  # inside c3.jpg's data (4096 to 5596)
    index = index_shard(str(path))
    assert [index.key(i) for i in range(len(index))] == ["a1", "b2"] and not index.complete


def test_pax_headers_fall_back_to_tarfile(tmp_path):
    path = tmp_path / "shard.tar"
    long = "x" * 120
    write_tar(path, [(f"{long}.png", b"P" * 10), (f"{long}.cls", b"2")], fmt=tarfile.PAX_FORMAT)
    index = index_shard(str(path))
    assert index.key(0) == long and index.labels.tolist() == [2]
    assert np.array_equal(index.image_sizes, [10])
