"""The quantizer's view of calibration images: onnxruntime's `CalibrationDataReader` protocol.

`get_next()` returns one input feed or None; `set_range()` lets the quantizer collect statistics a slice
at a time (its `CalibStridedMinMax` option), so histograms are built without holding every activation of
every image in memory. Duck-typed: importing this module does not import onnxruntime.
"""

from __future__ import annotations

import sys

from calibration.images import ImageSet, Preprocess


class CalibrationReader:
    def __init__(self, images: ImageSet, preprocess: Preprocess, input_name: str, batch_size: int = 8,
                 progress: str | None = "calibrate"):
        self.images, self.preprocess, self.input_name = images, preprocess, input_name
        self.batch_size = batch_size
        self.starts = list(range(0, len(images), batch_size))
        self.begin, self.end, self.pos = 0, len(self.starts), 0
        self.bar = None
        if progress:
            from tqdm import tqdm

            self.bar = tqdm(total=len(images), desc=progress, unit="img", file=sys.stderr, leave=False)

    def __len__(self) -> int:
        return len(self.starts)

    def set_range(self, start_index: int, end_index: int) -> None:
        self.begin, self.end, self.pos = start_index, min(end_index, len(self.starts)), start_index

    def get_next(self) -> dict | None:
        if self.pos >= self.end:
            return None
        s = self.starts[self.pos]
        self.pos += 1
        pixels = self.images.pixels[s : s + self.batch_size]
        if self.bar is not None:
            self.bar.update(len(pixels))
        return {self.input_name: self.preprocess.normalize(pixels)}

    def rewind(self) -> None:
        self.set_range(0, len(self.starts))

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
