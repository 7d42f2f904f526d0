"""Activations a chunk at a time (compress.prune.stream): spilled to disk they read back exactly what memory would
hold, by chunk and by random batch, and leave no file behind."""

import numpy as np
import pytest

torch = pytest.importorskip("torch")
from conftest import TINY, images  # noqa: E402

from compress.prune import stream  # noqa: E402


def _activations(n: int = 37):
    return torch.randn(n, 3, 5, 4, generator=torch.Generator().manual_seed(0)) * 10


def test_spilled_activations_read_back_what_memory_holds(tmp_path):
    x = _activations()
    kept = stream.gather(lambda i: x[i:i + 8] * 2, len(x), 8)
    spilled = stream.gather(lambda i: x[i:i + 8] * 2, len(x), 8, tmp_path)
    assert isinstance(spilled, stream.Spill) and not isinstance(kept, stream.Spill)
    assert len(spilled) == len(x) and kept.dtype == torch.float16
    assert torch.equal(spilled[0:len(x)], kept) and torch.equal(spilled[30:45], kept[30:])  # a last short chunk
    batch = torch.tensor([36, 0, 17, 17, 5])  # a refinement batch: any order, repeats allowed
    assert torch.equal(spilled[batch], kept[batch])
    # what is computed from a spilled set is spilled beside it, and equals what memory gives
    again = stream.chunked(lambda xs: xs.relu(), spilled, 6)
    assert stream.folder_of(again) == tmp_path
    assert torch.equal(again[0:len(x)], stream.chunked(lambda xs: xs.relu(), kept, 6))
    assert list(tmp_path.iterdir()) == []  # unnamed files: gone with their objects, and with a killed run


def test_a_spilled_set_refuses_what_it_cannot_read(tmp_path):
    spilled = stream.gather(lambda i: _activations()[i:i + 8], 37, 8, tmp_path)
    with pytest.raises(ValueError):
        spilled[0:10:2]
    spilled.file.truncate(10 * spilled.row)  # a file cut short under it
    with pytest.raises(OSError):
        spilled[5:20]


@pytest.mark.parametrize("spill", [False, True])
def test_recorded_rows_play_back_exactly_and_again(tmp_path, spill):
    g = torch.Generator().manual_seed(1)
    rows = [(torch.randn(50, 7, generator=g), torch.randn(50, 3, generator=g), torch.zeros(())) for _ in range(4)]
    tape = stream.Tape(iter(rows), tmp_path if spill else None)
    for _ in range(2):  # one recording, played for every round
        played = list(tape)
        assert len(played) == len(rows)
        assert all(torch.equal(a, b) for got, want in zip(played, rows) for a, b in zip(got, want))
    assert list(tmp_path.iterdir()) == []


def test_pixels_are_normalised_a_chunk_at_a_time(data_dirs):
    calib = images(data_dirs["calib"])
    pixels = stream.Pixels(calib, TINY)
    assert len(pixels) == len(calib)
    np.testing.assert_array_equal(pixels[3:9].numpy(), TINY.normalize(calib.pixels[3:9]))
