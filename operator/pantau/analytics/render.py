"""Pictures of the analytics for `pantau analyse --render`: boxes with track ids, zones and lines
drawn on the frames (numpy only: the product has no OpenCV or Pillow), written as an MP4 (PyAV) or
as a JPEG contact sheet of evenly spaced frames."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import av
import numpy as np

from pantau.analytics import geometry
from pantau.analytics.engine import FrameResult, LineRule, ZoneRule

# A 3x5 pixel font (rows top to bottom, 3 bits each), enough for ids and rule names.
_FONT = {
    "0": "111101101101111", "1": "010110010010111", "2": "111001111100111", "3": "111001111001111",
    "4": "101101111001001", "5": "111100111001111", "6": "111100111101111", "7": "111001010010010",
    "8": "111101111101111", "9": "111101111001111", "A": "010101111101101", "B": "110101110101110",
    "C": "011100100100011", "D": "110101101101110", "E": "111100110100111", "F": "111100110100100",
    "G": "011100101101011", "H": "101101111101101", "I": "111010010010111", "J": "001001001101010",
    "K": "101101110101101", "L": "100100100100111", "M": "101111111101101", "N": "110101101101101",
    "O": "010101101101010", "P": "110101110100100", "Q": "010101101110011", "R": "110101110101101",
    "S": "011100010001110", "T": "111010010010010", "U": "101101101101111", "V": "101101101101010",
    "W": "101101111111101", "X": "101101010101101", "Y": "101101010010010", "Z": "111001010100111",
    "-": "000000111000000", "_": "000000000000111", ":": "000010000010000", " ": "000000000000000",
}  # fmt: skip
_PALETTE = np.array(
    [
        [230, 25, 75],
        [60, 180, 75],
        [255, 225, 25],
        [0, 130, 200],
        [245, 130, 48],
        [145, 30, 180],
        [70, 240, 240],
        [240, 50, 230],
        [210, 245, 60],
        [250, 190, 190],
        [0, 128, 128],
        [170, 110, 40],
    ],
    dtype=np.uint8,
)[:, ::-1]  # fmt: skip  (BGR, like the frames)
ZONE_COLOUR = np.array([0, 200, 255], dtype=np.uint8)
LINE_COLOUR = np.array([255, 0, 255], dtype=np.uint8)


def _dot(image: np.ndarray, x: np.ndarray, y: np.ndarray, colour: np.ndarray, size: int) -> None:
    h, w = image.shape[:2]
    for dy in range(-(size // 2), size - size // 2):
        for dx in range(-(size // 2), size - size // 2):
            xs, ys = np.clip(x + dx, 0, w - 1), np.clip(y + dy, 0, h - 1)
            image[ys, xs] = colour


def draw_segment(
    image: np.ndarray, p: geometry.Point, q: geometry.Point, colour: np.ndarray, size: int = 2
) -> None:
    n = int(max(abs(q[0] - p[0]), abs(q[1] - p[1]))) + 1
    x = np.rint(np.linspace(p[0], q[0], n)).astype(int)
    y = np.rint(np.linspace(p[1], q[1], n)).astype(int)
    _dot(image, x, y, colour, size)


def draw_text(image: np.ndarray, text: str, x: int, y: int, colour: np.ndarray, scale: int = 2) -> None:
    """Text with its top-left corner at (x, y), on a dark background for contrast."""
    glyphs = [_FONT.get(c, _FONT[" "]) for c in text.upper()]
    h, w = image.shape[:2]
    x0, y0 = max(0, x), max(0, y)
    x1, y1 = min(w, x + 4 * scale * len(glyphs) + scale), min(h, y + 7 * scale)
    image[y0:y1, x0:x1] = (image[y0:y1, x0:x1] * 0.3).astype(np.uint8)
    for k, bits in enumerate(glyphs):
        for i, bit in enumerate(bits):
            if bit == "1":
                gx, gy = x + scale + (4 * k + i % 3) * scale, y + scale + (i // 3) * scale
                image[max(0, gy) : max(0, min(h, gy + scale)), max(0, gx) : max(0, min(w, gx + scale))] = (
                    colour
                )


def annotate(
    image: np.ndarray, result: FrameResult, zones: Sequence[ZoneRule], lines: Sequence[LineRule]
) -> np.ndarray:
    """A copy of a BGR frame with the zones, lines (an arrow tick on the forward side) and tracks."""
    out = image.copy()
    hw = (out.shape[0], out.shape[1])
    for zone in zones:
        polygon = geometry.to_pixels(zone.points, hw)
        for i, p in enumerate(polygon):
            draw_segment(out, p, polygon[(i + 1) % len(polygon)], ZONE_COLOUR)
        draw_text(out, zone.name, int(polygon[0][0]), int(polygon[0][1]), ZONE_COLOUR)
    for line in lines:
        a, b = geometry.to_pixels((line.a, line.b), hw)
        draw_segment(out, a, b, LINE_COLOUR, 3)
        # The forward side is where cross(B - A, P - A) > 0: the normal (-(by - ay), bx - ax).
        mid, length = geometry.lerp(a, b, 0.5), max(1.0, float(np.hypot(b[0] - a[0], b[1] - a[1])))
        normal = (-(b[1] - a[1]) / length * 20, (b[0] - a[0]) / length * 20)
        draw_segment(out, mid, (mid[0] + normal[0], mid[1] + normal[1]), LINE_COLOUR, 3)
        draw_text(out, f"{line.name} A", int(a[0]), int(a[1]) - 16, LINE_COLOUR)
        draw_text(out, "B", int(b[0]), int(b[1]), LINE_COLOUR)
    for track in result.tracks:
        colour = _PALETTE[track.track_id % len(_PALETTE)]
        x1, y1, x2, y2 = track.box
        for p, q in (((x1, y1), (x2, y1)), ((x2, y1), (x2, y2)), ((x2, y2), (x1, y2)), ((x1, y2), (x1, y1))):
            draw_segment(out, p, q, colour)
        draw_text(out, str(track.track_id), int(x1), int(y1) - 14, colour)
    return out


def contact_sheet(frames: Sequence[np.ndarray], columns: int = 4, shrink: int = 2) -> np.ndarray:
    """Frames (same size) shrunk and tiled, row by row."""
    small = [f[::shrink, ::shrink] for f in frames]
    h, w = small[0].shape[:2]
    rows = (len(small) + columns - 1) // columns
    sheet = np.zeros((rows * h, columns * w, 3), dtype=np.uint8)
    for k, f in enumerate(small):
        r, c = divmod(k, columns)
        sheet[r * h : (r + 1) * h, c * w : (c + 1) * w] = f
    return sheet


def write_jpeg(image: np.ndarray, path: Path) -> None:
    even = image[: image.shape[0] // 2 * 2, : image.shape[1] // 2 * 2]
    with av.open(str(path), "w", format="image2") as out:
        stream = out.add_stream("mjpeg", rate=1)
        assert isinstance(stream, av.VideoStream)
        stream.width, stream.height, stream.pix_fmt = even.shape[1], even.shape[0], "yuvj420p"
        frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(even), format="bgr24")
        for packet in stream.encode(frame):
            out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)


class VideoWriter:
    """Annotated frames to an MP4 (H.264 when PyAV has it, else MPEG-4 part 2)."""

    def __init__(self, path: Path, fps: float) -> None:
        self._out = av.open(str(path), "w")
        self._fps = max(1, round(fps))
        self._stream: av.VideoStream | None = None

    def write(self, image: np.ndarray) -> None:
        even = np.ascontiguousarray(image[: image.shape[0] // 2 * 2, : image.shape[1] // 2 * 2])
        if self._stream is None:
            codec = "libx264" if "libx264" in av.codecs_available else "mpeg4"
            stream = self._out.add_stream(codec, rate=self._fps)
            assert isinstance(stream, av.VideoStream)
            stream.width, stream.height, stream.pix_fmt = even.shape[1], even.shape[0], "yuv420p"
            self._stream = stream
        for packet in self._stream.encode(av.VideoFrame.from_ndarray(even, format="bgr24")):
            self._out.mux(packet)

    def close(self) -> None:
        if self._stream is not None:
            for packet in self._stream.encode():
                self._out.mux(packet)
        self._out.close()
