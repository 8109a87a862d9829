"""Multi-object tracking for one camera: ByteTrack's association with a constant-velocity Kalman
filter, in numpy, driven by timestamps so that it works at any sampled rate (2-10 fps as well as
full rate).

Why not the `trackers` package (Roboflow's ByteTrack), measured here: `trackers` 2.6.1 requires
`opencv-python` (the GUI build), `supervision` and scipy, and `import trackers` imports cv2. Installed,
that is ~500 MB of dependencies (OpenCV and its bundled libraries 288 MB, scipy 143 MB, matplotlib,
pillow) for a product image of 450 MB; a second OpenCV that overwrites the development package's
opencv-python-headless (both install `cv2/`); and cv2, which the product's import rules forbid. On
the same detections of PETS09-S2L1 it also scored lower than this module (docs/analytics.md).

ByteTrack in short (Zhang et al., 2022): detections are split by score. Confident ones are matched to
every live track by IoU with the track's predicted box; the weak ones get a second chance, only with
the tracks still unmatched that were seen on the previous sample (an occluded person scores low, a
false alarm rarely overlaps a predicted box). Only confident, unmatched detections start tracks, and a
track gets an id once it has been matched `min_hits` times, so one-sample false alarms burn none.
A track not matched for `lost_seconds` is forgotten.

The Kalman filter's state per track is (cx, cy, aspect, height) and their velocities per second.
With diagonal noise each coordinate is an independent 2x2 filter (position, velocity), so the state
of all tracks is a few (N, 4) arrays and one frame's predict and update are a handful of vectorised
operations whatever the number of tracks."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

# Noise as a fraction of the box height, per second (random-walk rates; ByteTrack's per-frame
# figures at 30 fps converted to seconds); the aspect ratio (w/h) has absolute figures.
_MEASURE_STD = np.array([0.05, 0.05, 0.1, 0.05])
_POS_RATE = np.array([0.075, 0.075, 3e-3, 0.075])  # variance / s of the position, x scale^2
_VEL_RATE = np.array([1.05, 1.05, 3e-6, 1.05])  # variance / s of the velocity (per s), x scale^2
_INIT_POS_STD = np.array([0.1, 0.1, 1e-2, 0.1])
_INIT_VEL_STD = np.array([1.9, 1.9, 3e-4, 1.9])
_ABSOLUTE = np.array([False, False, True, False])  # aspect: not scaled by the height


@dataclass(frozen=True)
class TrackerSettings:
    """The tracker's knobs; the defaults are tuned on PETS09-S2L1 with YOLOX-nano (docs/analytics.md)."""

    high_score: float = 0.6  # first-stage detections; those below only extend existing tracks
    activation_score: float = 0.7  # an unmatched detection starts a track only from this score
    min_hits: int = 2  # matches before a track is confirmed and gets an id
    match_iou: float = 0.2  # first stage: confident detections to live tracks
    low_match_iou: float = 0.5  # second stage: weak detections to tracks seen on the last sample
    tentative_iou: float = 0.3  # confident detections to not-yet-confirmed tracks
    lost_seconds: float = 3.0  # a confirmed track unmatched for longer is forgotten
    # Buffered IoU (as in C-BIoU): before matching, a track's predicted box and the detections are
    # widened on each side by this share of their size per second since the track was last seen
    # (capped), so that sparse samples (2 fps) and tracks lost for a while still overlap.
    buffer_per_second: float = 0.5
    max_buffer: float = 0.5
    max_tracks: int = 512  # bounded memory: beyond it the longest-unseen tracks are dropped


@dataclass(frozen=True)
class Track:
    """A confirmed track matched on this sample."""

    track_id: int
    class_id: int
    score: float
    box: tuple[float, float, float, float]  # x1, y1, x2, y2, the filtered estimate, pixels


@dataclass(frozen=True)
class TrackerUpdate:
    tracks: tuple[Track, ...]  # confirmed tracks matched now, by id
    alive: frozenset[int]  # ids of confirmed tracks still remembered (matched now or lost a while)
    removed: tuple[int, ...]  # ids forgotten during this update, ascending


@dataclass
class _Bank:
    """All tracks' state, one row each."""

    pos: np.ndarray = field(default_factory=lambda: np.empty((0, 4)))
    vel: np.ndarray = field(default_factory=lambda: np.empty((0, 4)))
    p_pp: np.ndarray = field(default_factory=lambda: np.empty((0, 4)))
    p_pv: np.ndarray = field(default_factory=lambda: np.empty((0, 4)))
    p_vv: np.ndarray = field(default_factory=lambda: np.empty((0, 4)))
    ids: np.ndarray = field(default_factory=lambda: np.empty(0, dtype=np.int64))  # -1: tentative
    classes: np.ndarray = field(default_factory=lambda: np.empty(0, dtype=np.int64))
    hits: np.ndarray = field(default_factory=lambda: np.empty(0, dtype=np.int64))
    last_seen: np.ndarray = field(default_factory=lambda: np.empty(0))
    score: np.ndarray = field(default_factory=lambda: np.empty(0))  # of the latest match
    seen_last_sample: np.ndarray = field(default_factory=lambda: np.empty(0, dtype=bool))

    def __len__(self) -> int:
        return len(self.ids)

    def keep(self, mask: np.ndarray) -> None:
        for name in self.__dataclass_fields__:
            setattr(self, name, getattr(self, name)[mask])

    def append(self, other: _Bank) -> None:
        for name in self.__dataclass_fields__:
            setattr(self, name, np.concatenate([getattr(self, name), getattr(other, name)]))


def _scale(height: np.ndarray) -> np.ndarray:
    """Per-coordinate noise scale: the box height (at least 1 px), or 1 for the aspect ratio."""
    h = np.maximum(height, 1.0)[:, None]
    return np.where(_ABSOLUTE, 1.0, h)


def xyxy_to_state(boxes: np.ndarray) -> np.ndarray:
    w = boxes[:, 2] - boxes[:, 0]
    h = np.maximum(boxes[:, 3] - boxes[:, 1], 1e-6)
    return np.stack([boxes[:, 0] + w / 2, boxes[:, 1] + h / 2, w / h, h], axis=1)


def state_to_xyxy(pos: np.ndarray) -> np.ndarray:
    h = np.maximum(pos[:, 3], 1.0)
    w = np.maximum(pos[:, 2], 0.0) * h
    return np.stack([pos[:, 0] - w / 2, pos[:, 1] - h / 2, pos[:, 0] + w / 2, pos[:, 1] + h / 2], axis=1)


def _widen(boxes: np.ndarray, buffer: np.ndarray) -> np.ndarray:
    """Boxes (..., 4) widened on each side by `buffer` (broadcast against (...)) of their size."""
    w = (boxes[..., 2] - boxes[..., 0]) * buffer
    h = (boxes[..., 3] - boxes[..., 1]) * buffer
    return np.stack([boxes[..., 0] - w, boxes[..., 1] - h, boxes[..., 2] + w, boxes[..., 3] + h], axis=-1)


def iou_matrix(a: np.ndarray, b: np.ndarray, buffer: np.ndarray | None = None) -> np.ndarray:
    """IoU of every box of `a` (N, 4) with every box of `b` (M, 4), xyxy; with `buffer` (N,), both
    boxes of each pair widened by the buffer of the row (buffered IoU)."""
    if len(a) == 0 or len(b) == 0:
        return np.zeros((len(a), len(b)))
    if buffer is None:
        aa, bb = a[:, None, :], b[None, :, :]
    else:
        aa = _widen(a, buffer)[:, None, :]
        bb = _widen(np.broadcast_to(b[None, :, :], (len(a), len(b), 4)), buffer[:, None])
    x1 = np.maximum(aa[..., 0], bb[..., 0])
    y1 = np.maximum(aa[..., 1], bb[..., 1])
    x2 = np.minimum(aa[..., 2], bb[..., 2])
    y2 = np.minimum(aa[..., 3], bb[..., 3])
    inter = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
    area_a = (aa[..., 2] - aa[..., 0]) * (aa[..., 3] - aa[..., 1])
    area_b = (bb[..., 2] - bb[..., 0]) * (bb[..., 3] - bb[..., 1])
    union = area_a + area_b - inter
    result: np.ndarray = np.where(union > 0, inter / np.maximum(union, 1e-9), 0.0)
    return result


def greedy_match(similarity: np.ndarray, threshold: float) -> list[tuple[int, int]]:
    """Pairs (row, column), best similarity first, each row and column at most once, ties broken by
    position: deterministic. With IoU and few objects it nearly always agrees with the optimal
    assignment (docs/analytics.md)."""
    rows, cols = np.nonzero(similarity >= threshold)
    if len(rows) == 0:
        return []
    order = np.lexsort((cols, rows, -similarity[rows, cols]))
    used_rows: set[int] = set()
    used_cols: set[int] = set()
    pairs = []
    for k in order:
        r, c = int(rows[k]), int(cols[k])
        if r not in used_rows and c not in used_cols:
            used_rows.add(r)
            used_cols.add(c)
            pairs.append((r, c))
    return pairs


def _box(row: np.ndarray) -> tuple[float, float, float, float]:
    x1, y1, x2, y2 = (float(v) for v in row)
    return (x1, y1, x2, y2)


class Tracker:
    """ByteTrack for one camera. Ids start at 1 and only grow over the tracker's life, `reset`
    included, so an id never names two objects of the same camera."""

    def __init__(self, settings: TrackerSettings | None = None) -> None:
        self.settings = settings or TrackerSettings()
        self._bank = _Bank()
        self._next_id = 1
        self._last_t: float | None = None

    def __len__(self) -> int:
        """Tracks held (tentative ones included): bounded by `settings.max_tracks`."""
        return len(self._bank)

    @property
    def next_id(self) -> int:
        return self._next_id

    def reset(self) -> tuple[int, ...]:
        """Forget every track (a reconnect: positions before it say nothing about those after).
        Ids keep growing. Returns the confirmed ids forgotten."""
        removed = tuple(sorted(int(i) for i in self._bank.ids if i > 0))
        self._bank = _Bank()
        self._last_t = None
        return removed

    def update(self, t: float, boxes: np.ndarray, scores: np.ndarray, classes: np.ndarray) -> TrackerUpdate:
        """One sample at time `t` (seconds, any origin, not decreasing): boxes (M, 4) xyxy pixels,
        scores (M,), class ids (M,)."""
        dt = 0.0 if self._last_t is None else max(0.0, t - self._last_t)
        self._last_t = t if self._last_t is None else max(t, self._last_t)
        self._predict(dt)
        boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
        scores = np.asarray(scores, dtype=np.float64).reshape(-1)
        classes = np.asarray(classes, dtype=np.int64).reshape(-1)
        matched_rows, matched_dets, unmatched_high = self._associate(boxes, scores, classes, t)
        self._correct(matched_rows, boxes[matched_dets], scores[matched_dets], t)
        removed = self._prune(t, set(matched_rows))
        spawn = [d for d in unmatched_high if scores[d] >= self.settings.activation_score]
        self._spawn(boxes[spawn], scores[spawn], classes[spawn], t)
        removed += self._cap()
        return self._report(removed)

    def _predict(self, dt: float) -> None:
        b = self._bank
        if len(b) == 0 or dt <= 0:
            return
        s2 = _scale(b.pos[:, 3]) ** 2
        b.pos = b.pos + b.vel * dt
        b.p_pp = b.p_pp + 2 * dt * b.p_pv + dt * dt * b.p_vv + _POS_RATE * dt * s2
        b.p_pv = b.p_pv + dt * b.p_vv
        b.p_vv = b.p_vv + _VEL_RATE * dt * s2

    def _associate(
        self, boxes: np.ndarray, scores: np.ndarray, classes: np.ndarray, t: float
    ) -> tuple[list[int], list[int], list[int]]:
        """ByteTrack's three stages -> (matched track rows, their detections, unmatched confident
        detections)."""
        b, s = self._bank, self.settings
        buffer = np.minimum((t - b.last_seen) * s.buffer_per_second, s.max_buffer)
        similarity = iou_matrix(state_to_xyxy(b.pos), boxes, buffer)
        similarity[b.classes[:, None] != classes[None, :]] = 0.0  # a person never becomes a car
        high = scores >= s.high_score
        confirmed = b.ids > 0
        stages = (
            (confirmed, high, s.match_iou),
            (confirmed & b.seen_last_sample, ~high, s.low_match_iou),
            (~confirmed, high, s.tentative_iou),
        )
        free_rows = np.ones(len(b), dtype=bool)
        free_dets = np.ones(len(boxes), dtype=bool)
        rows_out: list[int] = []
        dets_out: list[int] = []
        for row_mask, det_mask, threshold in stages:
            rows = np.flatnonzero(row_mask & free_rows)
            dets = np.flatnonzero(det_mask & free_dets)
            for r, d in greedy_match(similarity[np.ix_(rows, dets)], threshold):
                rows_out.append(int(rows[r]))
                dets_out.append(int(dets[d]))
                free_rows[rows[r]] = False
                free_dets[dets[d]] = False
        return rows_out, dets_out, [int(d) for d in np.flatnonzero(high & free_dets)]

    def _correct(self, rows: list[int], boxes: np.ndarray, scores: np.ndarray, t: float) -> None:
        b = self._bank
        b.seen_last_sample = np.zeros(len(b), dtype=bool)
        if not rows:
            return
        idx = np.array(rows)
        z = xyxy_to_state(boxes)
        r = (_MEASURE_STD * _scale(b.pos[idx, 3])) ** 2
        p_pp, p_pv, p_vv = b.p_pp[idx], b.p_pv[idx], b.p_vv[idx]
        k_p = p_pp / (p_pp + r)
        k_v = p_pv / (p_pp + r)
        innovation = z - b.pos[idx]
        b.pos[idx] = b.pos[idx] + k_p * innovation
        b.vel[idx] = b.vel[idx] + k_v * innovation
        b.p_pp[idx] = (1 - k_p) * p_pp
        b.p_pv[idx] = (1 - k_p) * p_pv
        b.p_vv[idx] = p_vv - k_v * p_pv
        b.hits[idx] += 1
        b.last_seen[idx] = t
        b.score[idx] = scores
        b.seen_last_sample[idx] = True
        for i in rows:
            if b.ids[i] < 0 and b.hits[i] >= self.settings.min_hits:
                b.ids[i] = self._next_id
                self._next_id += 1

    def _prune(self, t: float, matched: set[int]) -> list[int]:
        """Drop tentative tracks that missed a sample and confirmed ones unseen for too long."""
        b = self._bank
        matched_mask = np.zeros(len(b), dtype=bool)
        matched_mask[list(matched)] = True
        expired = (t - b.last_seen) > self.settings.lost_seconds
        drop = ~matched_mask & ((b.ids < 0) | expired)
        removed = [int(i) for i in b.ids[drop] if i > 0]
        b.keep(~drop)
        return removed

    def _spawn(self, boxes: np.ndarray, scores: np.ndarray, classes: np.ndarray, t: float) -> None:
        n = len(boxes)
        if n == 0:
            return
        pos = xyxy_to_state(boxes)
        s2 = _scale(pos[:, 3]) ** 2
        new = _Bank(
            pos=pos,
            vel=np.zeros((n, 4)),
            p_pp=_INIT_POS_STD**2 * s2,
            p_pv=np.zeros((n, 4)),
            p_vv=_INIT_VEL_STD**2 * s2,
            ids=np.full(n, -1, dtype=np.int64),
            classes=classes.astype(np.int64),
            hits=np.ones(n, dtype=np.int64),
            last_seen=np.full(n, t),
            score=scores.astype(np.float64),
            seen_last_sample=np.ones(n, dtype=bool),
        )
        if self.settings.min_hits <= 1:
            new.ids = np.arange(self._next_id, self._next_id + n, dtype=np.int64)
            self._next_id += n
        self._bank.append(new)

    def _cap(self) -> list[int]:
        """Bounded memory: beyond `max_tracks`, drop the tracks unseen for longest (oldest first)."""
        b = self._bank
        excess = len(b) - self.settings.max_tracks
        if excess <= 0:
            return []
        order = np.lexsort((np.arange(len(b)), b.last_seen))
        drop = np.zeros(len(b), dtype=bool)
        drop[order[:excess]] = True
        removed = [int(i) for i in b.ids[drop] if i > 0]
        b.keep(~drop)
        return removed

    def _report(self, removed: list[int]) -> TrackerUpdate:
        b = self._bank
        boxes = state_to_xyxy(b.pos)
        tracks = [
            Track(int(b.ids[i]), int(b.classes[i]), float(b.score[i]), _box(boxes[i]))
            for i in range(len(b))
            if b.seen_last_sample[i] and b.ids[i] > 0
        ]
        tracks.sort(key=lambda tr: tr.track_id)
        return TrackerUpdate(
            tracks=tuple(tracks),
            alive=frozenset(int(i) for i in b.ids if i > 0),
            removed=tuple(sorted(removed)),
        )
