"""FID Inception weights from a file: refused with one message whatever the file holds."""

import pytest


def test_inception_weights_that_break_torchs_unpickler_are_refused_with_one_message(tmp_path):
    """Junk bytes reach torch's weights-only unpickler as any error: PROTO 2 then TUPLE2 on an empty stack is an
    IndexError inside torch (seen with random bytes in a CI run)."""
    from gand.errors import DataError
    from gand.eval.inception import load_inception

    junk = tmp_path / "inception.pth"
    junk.write_bytes(b"\x80\x02\x86.")
    with pytest.raises(DataError, match="not a file of plain tensors"):
        load_inception(str(junk))
