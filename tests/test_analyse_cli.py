"""`pantau analyse` on the shared footage with the real model (in-process detector, no stack)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

CAMERA = """\
apiVersion: pantau.io/v1alpha1
kind: Camera
metadata:
  name: pets-square
spec:
  siteRef: {name: test}
  source: {url: "rtsp://camera/stream"}
  sampling:
    fps: 5
  detection:
    classes: [person]
  zones:
    - name: left
      points: [[0.0, 0.3], [0.4, 0.3], [0.4, 1.0], [0.0, 1.0]]
      loiterSeconds: 2
  lines:
    - name: middle
      start: [0.5, 0.3]
      end: [0.5, 0.95]
"""


def test_analyse_writes_mot_and_json(shared_dir: Path, vtest: Path, tmp_path: Path) -> None:
    camera = tmp_path / "camera.yaml"
    camera.write_text(CAMERA)
    mot, out, sheet = tmp_path / "out.txt", tmp_path / "out.json", tmp_path / "sheet.jpg"
    argv = [sys.executable, "-m", "pantau.cli", "analyse", str(vtest), "--camera", str(camera)]
    argv += ["--model", str(shared_dir / "models" / "yolox_nano.onnx"), "--max-frames", "60"]
    argv += ["--mot", str(mot), "--json", str(out), "--render", str(sheet)]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr

    rows = [line.split(",") for line in mot.read_text().splitlines()]
    assert rows, "no tracks written"
    frames = set()
    for row in rows:
        assert len(row) == 10
        frame, track_id = int(row[0]), int(row[1])
        x, y, w, h, score = (float(v) for v in row[2:7])
        assert row[7:] == ["-1", "-1", "-1"]
        assert 1 <= frame <= 60
        assert (frame - 1) % 2 == 0
        assert track_id >= 1
        assert w > 0
        assert h > 0
        assert 0 < score <= 1
        assert -50 < x < 768
        assert -50 < y < 576
        frames.add(frame)
    assert len(frames) > 20

    result = json.loads(out.read_text())
    assert result["frames"] == 30
    assert result["fps"] == 5
    assert set(result["lines"]["middle"]) >= {"forward", "backward"}
    zone = result["zones"]["left"]
    assert set(zone) >= {"entered", "exited", "loitering", "occupancy", "classes"}
    assert zone["entered"] >= 1
    assert {e["type"] for e in result["events"]} <= {
        "line_crossed",
        "zone_entered",
        "zone_exited",
        "loitering",
    }
    assert sheet.read_bytes()[:2] == b"\xff\xd8"  # a JPEG
