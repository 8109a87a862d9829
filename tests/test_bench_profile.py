"""`pantau bench operator --profile`: py-spy's collapsed stacks summarised into self and cumulative
shares. No py-spy needed: the file is written here."""

from __future__ import annotations

from pathlib import Path

from pantau_dev.bench.profile import top


def test_self_and_cumulative_shares_leave_the_event_loop_out(tmp_path: Path) -> None:
    raw = tmp_path / "profile.txt"
    loop = "run (asyncio/runners.py:190);Handle._run (asyncio/events.py:80)"
    raw.write_text(
        f"{loop};apply (pantau/k8s/api.py:10);dumps (json/__init__.py:231) 3\n"
        f"{loop};apply (pantau/k8s/api.py:12) 1\n"
        f"{loop};index (kopf/_core/engines/indexing.py:5);index (kopf/_core/engines/indexing.py:9) 4\n"
    )
    got = top(raw, n=2)
    assert got["self"] == [
        ("index (kopf/_core/engines/indexing.py)", 50.0),
        ("dumps (json/__init__.py)", 37.5),
    ]
    # Once per stack however deep the recursion; asyncio's frames are in every stack and left out.
    assert got["cumulative"] == [
        ("apply (pantau/k8s/api.py)", 50.0),
        ("index (kopf/_core/engines/indexing.py)", 50.0),
    ]
    assert top(tmp_path / "missing.txt") == {"self": [], "cumulative": []}
