"""The product and the development tooling are two distributions: the product wheel holds no
development code, the import rules hold (and a broken one fails the lint), and the product CLI
starts without importing the development package or the heavy libraries."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from pantau_dev.settings import REPO_ROOT

DEV_MARKERS = ("pantau_dev", "/dev/", "/bench/", "/demo/", "faultproxy", "httpcamera")


def _wheel(source: Path, out: Path) -> Path:
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "-q",
            "--no-deps",
            "--no-build-isolation",
            "-w",
            str(out),
            ".",
        ],
        cwd=source,
        check=True,
    )
    (wheel,) = out.glob("*.whl")
    return wheel


@pytest.fixture(scope="module")
def product_files(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    # Built from a copy: setuptools writes build/ and *.egg-info next to the sources.
    src = tmp_path_factory.mktemp("src")
    shutil.copytree(REPO_ROOT / "operator", src / "operator", ignore=shutil.ignore_patterns("*.egg-info"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO_ROOT / name, src / name)
    wheel = _wheel(src, tmp_path_factory.mktemp("wheel"))
    return zipfile.ZipFile(wheel).namelist()


def test_product_wheel_holds_the_product_and_no_development_code(product_files: list[str]) -> None:
    code = [f for f in product_files if f.endswith(".py")]
    assert "pantau/contract.py" in code
    assert "pantau/ingest/app.py" in code
    assert "pantau/handlers/registration.py" in code
    # The Python-backend models ship as package data: the image writes a model repository.
    assert "pantau/triton/backends/yolox/model.py" in code
    leaked = [f for f in product_files if any(m in f for m in DEV_MARKERS) or f.startswith("tests/")]
    assert leaked == [], f"development files in the product wheel: {leaked}"
    assert any(f.startswith("pantau-0") and f.endswith(".dist-info/METADATA") for f in product_files)


def test_dev_wheel_adds_commands_through_the_entry_point_group(tmp_path: Path) -> None:
    src = tmp_path / "devstack"
    shutil.copytree(REPO_ROOT / "devstack", src, ignore=shutil.ignore_patterns("*.egg-info", "__pycache__"))
    files = zipfile.ZipFile(_wheel(src, tmp_path / "wheel"))
    names = files.namelist()
    assert "pantau_dev/stack.py" in names
    assert "pantau_dev/assets/rtsp_server.py" in names
    assert not any(n.startswith("pantau/") for n in names), "the dev wheel must not carry the product"
    entry = files.read(next(n for n in names if n.endswith("entry_points.txt"))).decode()
    assert "[pantau.commands]" in entry
    for command in ("dev", "bench", "demo"):
        assert f"{command} = pantau_dev" in entry


def _lint(root: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(Path(sys.executable).parent / "lint-imports"), "--no-cache"],
        cwd=root,
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": f"{root / 'operator'}:{root / 'devstack'}"},
        capture_output=True,
        text=True,
        check=False,
    )


@pytest.fixture
def lint_tree(tmp_path: Path) -> Path:
    """A copy of the sources with the project's import rules, which the test may break."""
    shutil.copy2(REPO_ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    for folder in ("operator", "devstack"):
        shutil.copytree(
            REPO_ROOT / folder, tmp_path / folder, ignore=shutil.ignore_patterns("*.egg-info", "__pycache__")
        )
    return tmp_path


def test_import_rules_hold(lint_tree: Path) -> None:
    result = _lint(lint_tree)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


@pytest.mark.parametrize(
    ("module", "line", "rule"),
    [
        ("pantau/reconcile/probe.py", "import kopf\n", "Decisions and builders are pure"),
        ("pantau/ingest/probe.py", "from pantau.reconcile import site\n", "imports nothing of the operator"),
        ("pantau/handlers/probe.py", "from pantau.ingest import app\n", "imports nothing of the ingest"),
        ("pantau/triton/probe.py", "import pantau_dev.stack\n", "imports nothing of the development"),
        ("pantau/triton/probe.py", "from kubernetes import client\n", "Only pantau.k8s uses"),
        ("pantau/models/probe.py", "from pantau.builders import names\n", "handlers -> reconcile"),
    ],
)
def test_a_forbidden_import_fails_the_lint(lint_tree: Path, module: str, line: str, rule: str) -> None:
    (lint_tree / "operator" / module).write_text(line)
    result = _lint(lint_tree)
    assert result.returncode != 0
    broken = result.stdout.split("Broken contracts", 1)[-1]
    assert rule in broken, result.stdout


def _imported(*argv: str) -> set[str]:
    """The modules a `pantau ...` invocation imports (python -X importtime)."""
    code = f"import sys; sys.argv = {['pantau', *argv]!r}; from pantau.cli import app; app()"
    result = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", code], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "Usage: pantau" in result.stdout
    return {
        line.split("|")[-1].strip()
        for line in result.stderr.splitlines()
        if line.startswith("import time:") and "|" in line
    }


@pytest.mark.parametrize("argv", [("--help",), ("operator", "--help"), ("ingest", "--help")])
def test_product_cli_starts_without_dev_modules_or_heavy_libraries(argv: tuple[str, ...]) -> None:
    modules = _imported(*argv)
    assert "pantau.cli" in modules
    heavy = {"pantau_dev", "kopf", "kubernetes", "av", "tritonclient", "onnx", "onnxruntime", "numpy", "cv2"}
    loaded = sorted(m for m in modules if m.split(".")[0] in heavy)
    assert loaded == [], f"`pantau {' '.join(argv)}` imported {loaded[:10]}"


def test_plugin_commands_are_listed_and_load_only_when_run() -> None:
    help_modules = _imported("--help")
    assert not any(m.startswith("pantau_dev") for m in help_modules)
    dev_modules = _imported("dev", "--help")
    assert any(m.startswith("pantau_dev.") for m in dev_modules)
