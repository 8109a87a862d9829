"""`pantau bench analytics`: tracking accuracy and line counts on PETS09-S2L1 (vtest.avi), Pantau's
analytics engine against a naive IoU tracker on the same detections, plus the engine's CPU cost.

The in-process detector (the product's `LocalDetector`: same network and post-processing as the
Triton models) runs once per frame; both trackers then see those detections (people only), at full
rate (10 fps) and at a sampled rate. Tracks are scored with motmetrics (MOTA, IDF1, identity
switches) on the processed frames only. Ground-truth boxes marked conf 0 are ignore regions: a
track box matched to one is dropped before scoring (neither hit nor false alarm), as MOTChallenge's
own evaluation does. The line counts are compared with the crossings of the ground-truth tracks,
by the same sign rule (docs/analytics.md)."""

from __future__ import annotations

import json
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.table import Table

from pantau.analytics import geometry
from pantau.analytics.engine import CameraAnalytics, LineRule
from pantau.analytics.tracking import greedy_match, iou_matrix
from pantau.triton.contract import Detection

PERSON = 0
FPS = 10.0  # vtest.avi
# A vertical line across the square, from top to bottom: most of the walkers cross it. With y down,
# forward (cross(B - A, P - A) < 0 -> > 0) is right to left.
LINE = LineRule("middle", (0.5, 0.3), (0.5, 0.95), frozenset({"person"}))
IOU_MATCH = 0.5  # MOTChallenge's threshold for a true positive


@dataclass(frozen=True)
class Box:
    track_id: int
    xyxy: tuple[float, float, float, float]


Tracks = dict[int, list[Box]]  # frame number (from 1) -> boxes of that frame


@dataclass(frozen=True)
class GroundTruth:
    boxes: Tracks  # conf 1: scored
    ignore: dict[int, list[tuple[float, float, float, float]]]  # conf 0

    @classmethod
    def load(cls, path: Path) -> GroundTruth:
        boxes: Tracks = defaultdict(list)
        ignore: dict[int, list[tuple[float, float, float, float]]] = defaultdict(list)
        for line in path.read_text().splitlines():
            if not line.strip():
                continue
            f, i, x, y, w, h, conf = (float(v) for v in line.split(",")[:7])
            xyxy = (x, y, x + w, y + h)
            if conf > 0:
                boxes[int(f)].append(Box(int(i), xyxy))
            else:
                ignore[int(f)].append(xyxy)
        return cls(dict(boxes), dict(ignore))

    def all_boxes(self) -> Tracks:
        """Every ground-truth box with its id (ignored ones too), for the line crossings."""
        return {f: list(v) for f, v in self.boxes.items()}


@dataclass(frozen=True)
class Detections:
    """The detector's output for each frame, and its CPU seconds for each frame."""

    frames: list[list[Detection]]
    cpu_s: list[float]
    frame_hw: tuple[int, int]

    def save(self, path: Path) -> None:
        rows = [[f, d.class_id, d.score, *d.box] for f, ds in enumerate(self.frames) for d in ds]
        payload = {"frames": len(self.frames), "hw": self.frame_hw, "cpu_s": self.cpu_s, "rows": rows}
        path.write_text(json.dumps(payload))

    @classmethod
    def load(cls, path: Path) -> Detections:
        payload = json.loads(path.read_text())
        frames: list[list[Detection]] = [[] for _ in range(payload["frames"])]
        for f, c, s, *box in payload["rows"]:
            frames[int(f)].append(Detection.of(c, s, box))
        height, width = payload["hw"]
        return cls(frames, [float(v) for v in payload["cpu_s"]], (int(height), int(width)))


def detect_video(video: Path, model: Path, max_frames: int | None = None) -> Detections:
    """Run the in-process detector (one onnxruntime thread: one camera's share) on every frame."""
    import av

    from pantau.triton.local import LocalDetector

    detector = LocalDetector(model, threads=1)
    frames: list[list[Detection]] = []
    cpu: list[float] = []
    hw = (0, 0)
    with av.open(str(video)) as container:
        for frame in container.decode(video=0):
            image = frame.to_ndarray(format="bgr24")
            hw = (image.shape[0], image.shape[1])
            start = time.process_time()
            frames.append(detector.detect([image])[0])
            cpu.append(time.process_time() - start)
            if max_frames is not None and len(frames) >= max_frames:
                break
    return Detections(frames, cpu, hw)


class NaiveIouTracker:
    """The baseline: each detection takes the id of the previous sample's box it overlaps most
    (IoU >= 0.3, greedy), else a new id; nothing is remembered beyond one sample."""

    def __init__(self, min_score: float = 0.5, min_iou: float = 0.3) -> None:
        self.min_score, self.min_iou = min_score, min_iou
        self._prev: list[Box] = []
        self._next_id = 1

    def update(self, detections: Sequence[Detection]) -> list[Box]:
        kept = [d.box for d in detections if d.score >= self.min_score]
        prev = np.array([b.xyxy for b in self._prev]).reshape(-1, 4)
        pairs = dict(
            (c, r) for r, c in greedy_match(iou_matrix(prev, np.array(kept).reshape(-1, 4)), self.min_iou)
        )
        out = []
        for j, box in enumerate(kept):
            if j in pairs:
                track_id = self._prev[pairs[j]].track_id
            else:
                track_id, self._next_id = self._next_id, self._next_id + 1
            out.append(Box(track_id, box))
        self._prev = out
        return out


def sampled_frames(total: int, fps: float) -> list[int]:
    """Frame numbers (from 1) a camera sampling at `fps` processes out of a 10 fps video."""
    if fps >= FPS:
        return list(range(1, total + 1))
    chosen, due = [], 0.0
    for n in range(1, total + 1):
        t = (n - 1) / FPS
        if t + 1e-9 >= due:
            chosen.append(n)
            due += 1.0 / fps
    return chosen


def crossings(tracks: Tracks, frames: Iterable[int], line: LineRule, hw: tuple[int, int]) -> dict[str, int]:
    """Every change of side of each track's bottom centre between its consecutive samples that passes
    between the line's ends: the plain rule, no margin, no once-per-direction."""
    a, b = geometry.to_pixels((line.a, line.b), hw)
    last: dict[int, geometry.Point] = {}
    counts = {"forward": 0, "backward": 0}
    for f in frames:
        for box in tracks.get(f, []):
            point = geometry.reference_point(box.xyxy)
            now = geometry.side(a, b, point)
            before_point = last.get(box.track_id)
            if now != 0:
                last[box.track_id] = point
            if before_point is None or now == 0:
                continue
            before = geometry.side(a, b, before_point)
            if (
                before * now < 0
                and 0
                <= geometry.along(a, b, geometry.lerp(before_point, point, before / (before - now)))
                <= 1
            ):
                counts["forward" if now > 0 else "backward"] += 1
    return counts


def _motmetrics() -> Any:
    """motmetrics 1.4 still calls `np.asfarray`, which NumPy 2 removed."""
    if not hasattr(np, "asfarray"):
        np.asfarray = lambda a, dtype=float: np.asarray(a, dtype=dtype)  # type: ignore[attr-defined]
    import motmetrics  # type: ignore[import-untyped]

    return motmetrics


def _without_ignored(
    hyps: list[Box], gt: list[Box], ignore: list[tuple[float, float, float, float]]
) -> list[Box]:
    """Drop the track boxes that the best assignment pairs with an ignore region (IoU >= 0.5)."""
    if not ignore or not hyps:
        return hyps
    from scipy.optimize import linear_sum_assignment  # type: ignore[import-untyped]

    targets = np.array([b.xyxy for b in gt] + list(ignore))
    similarity = iou_matrix(targets, np.array([h.xyxy for h in hyps]))
    rows, cols = linear_sum_assignment(-similarity)
    dropped = {
        int(c) for r, c in zip(rows, cols, strict=True) if r >= len(gt) and similarity[r, c] >= IOU_MATCH
    }
    return [h for j, h in enumerate(hyps) if j not in dropped]


def _xywh(boxes: Sequence[Box]) -> np.ndarray:
    a = np.array([b.xyxy for b in boxes], dtype=np.float64).reshape(-1, 4)
    return np.column_stack([a[:, :2], a[:, 2:] - a[:, :2]])


@dataclass(frozen=True)
class Scores:
    mota: float
    idf1: float
    id_switches: int
    precision: float
    recall: float
    false_positives: int
    misses: int
    ids: int  # distinct track ids output


def score(truth: GroundTruth, hyps: Tracks, frames: Sequence[int]) -> Scores:
    mm = _motmetrics()
    acc = mm.MOTAccumulator(auto_id=False)
    for f in frames:
        gt = truth.boxes.get(f, [])
        mine = _without_ignored(hyps.get(f, []), gt, truth.ignore.get(f, []))
        distances = mm.distances.iou_matrix(_xywh(gt), _xywh(mine), max_iou=1 - IOU_MATCH)
        acc.update([b.track_id for b in gt], [b.track_id for b in mine], distances, frameid=f)
    names = ["mota", "idf1", "num_switches", "precision", "recall", "num_false_positives", "num_misses"]
    row = mm.metrics.create().compute(acc, metrics=names, name="run").iloc[0]
    ids = {b.track_id for f in frames for b in hyps.get(f, [])}
    return Scores(
        mota=round(float(row["mota"]), 4),
        idf1=round(float(row["idf1"]), 4),
        id_switches=int(row["num_switches"]),
        precision=round(float(row["precision"]), 4),
        recall=round(float(row["recall"]), 4),
        false_positives=int(row["num_false_positives"]),
        misses=int(row["num_misses"]),
        ids=len(ids),
    )


@dataclass(frozen=True)
class Row:
    tracker: str
    fps: float
    frames: int
    scores: Scores
    line: dict[str, int]  # forward, backward
    line_truth: dict[str, int]
    line_error: float  # |counted - true| / true, both directions together
    cpu_ms_per_frame: float  # the tracker and counting only


def _line_error(counted: dict[str, int], truth: dict[str, int]) -> float:
    total = truth["forward"] + truth["backward"]
    wrong = abs(counted["forward"] - truth["forward"]) + abs(counted["backward"] - truth["backward"])
    return round(wrong / total, 4) if total else 0.0


def run_pantau(
    dets: Detections, frames: Sequence[int], line: LineRule, **engine: Any
) -> tuple[Tracks, dict[str, int], float]:
    analytics = CameraAnalytics((), (line,), **engine)
    out: Tracks = {}
    cpu = 0.0
    for f in frames:
        people = [d for d in dets.frames[f - 1] if d.class_id == PERSON]
        start = time.process_time()
        result = analytics.update((f - 1) / FPS, dets.frame_hw, people)
        cpu += time.process_time() - start
        out[f] = [Box(t.track_id, t.box) for t in result.tracks]
    counts = analytics.summary()["lines"][line.name]
    return out, {"forward": counts["forward"], "backward": counts["backward"]}, cpu


def run_naive(
    dets: Detections, frames: Sequence[int], line: LineRule
) -> tuple[Tracks, dict[str, int], float]:
    tracker = NaiveIouTracker()
    out: Tracks = {}
    cpu = 0.0
    for f in frames:
        people = [d for d in dets.frames[f - 1] if d.class_id == PERSON]
        start = time.process_time()
        out[f] = tracker.update(people)
        cpu += time.process_time() - start
    start = time.process_time()
    counts = crossings(out, frames, line, dets.frame_hw)
    cpu += time.process_time() - start
    return out, counts, cpu


@dataclass
class Report:
    footage: str
    ground_truth: str
    line: dict[str, Any]
    detector_cpu_ms_per_frame: float
    rows: list[Row] = field(default_factory=list)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2) + "\n"

    def overhead(self, row: Row) -> float:
        """The engine's CPU as a share of the detector's, per processed frame."""
        return (
            row.cpu_ms_per_frame / self.detector_cpu_ms_per_frame if self.detector_cpu_ms_per_frame else 0.0
        )


def evaluate(
    dets: Detections,
    truth: GroundTruth,
    rates: Sequence[float],
    footage: str,
    gt_path: str,
    line: LineRule = LINE,
) -> Report:
    report = Report(
        footage=footage,
        ground_truth=gt_path,
        line=asdict(line) | {"classes": sorted(line.classes or ())},
        detector_cpu_ms_per_frame=round(1000 * float(np.mean(dets.cpu_s)), 3),
    )
    total = len(dets.frames)
    runners: dict[str, Callable[..., tuple[Tracks, dict[str, int], float]]] = {
        "pantau": run_pantau,
        "naive-iou": run_naive,
    }
    for fps in rates:
        frames = sampled_frames(total, fps)
        truth_counts = crossings(truth.all_boxes(), frames, line, dets.frame_hw)
        for name, runner in runners.items():
            tracks, counts, cpu = runner(dets, frames, line)
            report.rows.append(
                Row(
                    tracker=name,
                    fps=fps,
                    frames=len(frames),
                    scores=score(truth, tracks, frames),
                    line=counts,
                    line_truth=truth_counts,
                    line_error=_line_error(counts, truth_counts),
                    cpu_ms_per_frame=round(1000 * cpu / len(frames), 3),
                )
            )
    return report


def render(report: Report, console: Console) -> None:
    table = Table(title=f"Tracking and line counts on {Path(report.footage).name} (PETS09-S2L1)")
    for column in ("tracker", "fps", "frames", "MOTA", "IDF1", "ID sw", "prec", "recall", "FP", "FN", "ids",
                   "line fwd/bwd", "truth", "line err", "CPU ms/frame", "vs detector"):  # fmt: skip
        table.add_column(column, justify="left" if column == "tracker" else "right")
    for row in report.rows:
        s = row.scores
        table.add_row(
            row.tracker,
            f"{row.fps:g}",
            str(row.frames),
            f"{s.mota:.3f}",
            f"{s.idf1:.3f}",
            str(s.id_switches),
            f"{s.precision:.3f}",
            f"{s.recall:.3f}",
            str(s.false_positives),
            str(s.misses),
            str(s.ids),
            f"{row.line['forward']}/{row.line['backward']}",
            f"{row.line_truth['forward']}/{row.line_truth['backward']}",
            f"{row.line_error:.1%}",
            f"{row.cpu_ms_per_frame:.2f}",
            f"{report.overhead(row):.1%}",
        )
    console.print(table)
    console.print(
        f"detector (in-process YOLOX, 1 thread): {report.detector_cpu_ms_per_frame:.1f} ms CPU per frame; "
        f"line {report.line['name']} from {tuple(report.line['a'])} to {tuple(report.line['b'])}"
    )
