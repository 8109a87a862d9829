"""`pantau bench analytics` end to end on the shared footage: it runs, prints its table and writes every
figure; Pantau's tracker scores above the naive IoU baseline it is compared with in the same run.
(Accuracy goals are the benchmark's to report, not a test's to assert: see bench/README.md.)"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

PANTAU = str(Path(sys.executable).parent / "pantau")


def test_the_benchmark_scores_both_trackers_on_the_same_detections(tmp_path: Path) -> None:
    out = tmp_path / "analytics.json"
    cache = tmp_path / "detections.json"
    done = subprocess.run(
        [PANTAU, "bench", "analytics", "--rates", "10,5", "--detections", str(cache), "--json", str(out)],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "naive" in done.stdout
    report = json.loads(out.read_text())
    rows = {(r["tracker"], r["fps"]): r for r in report["rows"]}
    assert set(rows) == {("pantau", 10.0), ("pantau", 5.0), ("naive-iou", 10.0), ("naive-iou", 5.0)}
    for fps in (10.0, 5.0):
        ours, naive = rows["pantau", fps], rows["naive-iou", fps]
        assert ours["scores"]["mota"] > naive["scores"]["mota"]
        assert ours["scores"]["idf1"] > naive["scores"]["idf1"]
        assert sum(ours["line_truth"].values()) > 0
        assert ours["line_error"] >= 0
    assert cache.is_file()  # the detections are cached for the next run
