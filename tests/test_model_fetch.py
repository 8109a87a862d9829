"""`pantau model fetch`: a download is kept only when its SHA-256 matches."""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Iterator
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from typer.testing import CliRunner

from pantau.cli import app
from pantau.triton.fetch import FetchError, fetch


class _Quiet(SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[str, str]]:
    """A model file served over HTTP on loopback: (its URL, its SHA-256)."""
    root = tmp_path / "www"
    root.mkdir()
    data = bytes(range(256)) * 4096
    (root / "model.onnx").write_bytes(data)
    server = ThreadingHTTPServer(("127.0.0.1", 0), partial(_Quiet, directory=str(root)))
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}/model.onnx", hashlib.sha256(data).hexdigest()
    server.shutdown()
    server.server_close()


def test_a_matching_download_is_written(served: tuple[str, str], tmp_path: Path) -> None:
    url, sha = served
    out = fetch(url, sha, tmp_path / "models" / "yolox.onnx")
    assert hashlib.sha256(out.read_bytes()).hexdigest() == sha


def test_a_mismatch_leaves_nothing_and_says_both_checksums(served: tuple[str, str], tmp_path: Path) -> None:
    url, sha = served
    out = tmp_path / "yolox.onnx"
    wrong = "0" * 64
    with pytest.raises(FetchError, match=f"got sha256 {sha}, expected {wrong}"):
        fetch(url, wrong, out)
    assert list(tmp_path.iterdir()) == [tmp_path / "www"]


def test_missing_file_and_bad_checksum_are_refused(served: tuple[str, str], tmp_path: Path) -> None:
    url, sha = served
    with pytest.raises(FetchError, match="HTTP 404"):
        fetch(url.replace("model.onnx", "nothing.onnx"), sha, tmp_path / "x.onnx")
    with pytest.raises(FetchError, match="64 hexadecimal"):
        fetch(url, "abc", tmp_path / "x.onnx")


def test_cli_exits_non_zero_on_a_mismatch(served: tuple[str, str], tmp_path: Path) -> None:
    url, _ = served
    result = CliRunner().invoke(
        app, ["model", "fetch", "--url", url, "--sha256", "1" * 64, "--out", str(tmp_path / "m.onnx")]
    )
    assert result.exit_code == 1
    assert "checksum mismatch" in result.output
