"""The container images of `make images` (tools/images.sh), checked on their OCI archives.

The module builds them through `make images` (seconds when its cache is current), unpacks each
archive with umoci into a temporary folder and runs the image's programs there with chroot as uid
65532. The product image: runs as non-root, `pantau` is on its PATH and starts, it holds neither the
development package nor test tools, OpenCV, pip or a compiler, and every shared object in it resolves
inside it. The Triton image: `tritonserver` is on its PATH and starts, and it serves the model
repository that the product image writes (what the init container does in a cluster).
Needs root (buildah's storage, chroot, mount namespaces), as `make images` does.
"""

from __future__ import annotations

import fnmatch
import json
import os
import shutil
import socket
import subprocess
import tarfile
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tritonclient.http as triton_http

from pantau_dev.settings import REPO_ROOT, DevSettings

pytestmark = [pytest.mark.integration, pytest.mark.timeout(1800)]

UID = 65532
COMPILERS = (
    *("gcc", "gcc-[0-9]*", "cc", "c++", "g++", "g++-[0-9]*", "cpp-[0-9]*", "clang*", "cc1", "cc1plus"),
    *("x86_64-linux-gnu-gcc*", "x86_64-linux-gnu-g++*", "x86_64-linux-gnu-cpp*"),
)
NOT_IN_PRODUCT = ("pantau_dev", "pytest", "_pytest", "cv2", "opencv", "mypy", "ruff", "hypothesis", "pip")


@dataclass(frozen=True)
class Image:
    entry: dict[str, Any]  # its row of images.json
    rootfs: Path
    config: dict[str, Any]  # the OCI image config's "config" (User, Env, Entrypoint, Cmd)

    @property
    def env(self) -> dict[str, str]:
        return {k: v for k, _, v in (e.partition("=") for e in self.config.get("Env", []))}

    def which(self, program: str) -> str | None:
        """The program's path as the image's PATH resolves it (inside the image)."""
        for folder in self.env["PATH"].split(":"):
            candidate = self.rootfs / folder.lstrip("/") / program
            if candidate.is_file() and os.access(candidate, os.X_OK):
                return f"{folder}/{program}"
        return None

    def run(self, *argv: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        """argv inside the image, as uid/gid 65532, with the image's environment only."""
        env = [f"{k}={v}" for k, v in self.env.items()]
        return subprocess.run(
            ["chroot", f"--userspec={UID}:{UID}", str(self.rootfs), "/usr/bin/env", "-i", *env, *argv],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    def unresolved(self, files: list[str]) -> list[str]:
        """The libraries that ldd, run inside the image, does not find for these files."""
        result = self.run("/usr/bin/ldd", *files)
        missing, current = [], ""
        for line in result.stdout.splitlines():
            if not line.startswith(("\t", " ")) and line.endswith(":"):
                current = line[:-1]
            elif "not found" in line:
                missing.append(f"{current}: {line.strip()}")
        assert result.stdout, result.stderr[-2000:]
        return missing


def _unpack(entry: dict[str, Any], work: Path) -> Image:
    layout, rootfs = work / "layout", work / "rootfs"
    with tarfile.open(entry["archive"]) as archive:
        archive.extractall(layout, filter="data")

    def blob(digest: str) -> Any:
        return json.loads((layout / "blobs" / digest.replace(":", "/")).read_text())

    index = json.loads((layout / "index.json").read_text())
    (manifest,) = index["manifests"]
    assert manifest["digest"] == entry["digest"]
    assert manifest["annotations"]["org.opencontainers.image.ref.name"] == entry["ref"]
    config = blob(blob(manifest["digest"])["config"]["digest"])
    # As root (chroot needs it anyway): owners as in the image, e.g. uid 65532's home.
    subprocess.run(
        ["umoci", "raw", "unpack", "--image", f"{layout}:{entry['ref']}", str(rootfs)],
        check=True,
        capture_output=True,
    )
    shutil.rmtree(layout)
    return Image(entry, rootfs, config.get("config", {}))


@pytest.fixture(scope="module")
def images() -> dict[str, dict[str, Any]]:
    assert os.geteuid() == 0, "the image tests need root, as `make images` does (buildah, chroot)"
    started = time.monotonic()
    result = subprocess.run(["make", "images"], cwd=REPO_ROOT, capture_output=True, text=True, check=False)
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
    table = json.loads((DevSettings().cache_dir / "images" / "images.json").read_text())["images"]
    print(f"make images: {time.monotonic() - started:.0f} s\n{result.stdout[-1500:]}")
    return dict(table)


@pytest.fixture(scope="module")
def product(images: dict[str, dict[str, Any]], tmp_path_factory: pytest.TempPathFactory) -> Image:
    return _unpack(images["product"], tmp_path_factory.mktemp("product"))


@pytest.fixture(scope="module")
def triton(images: dict[str, dict[str, Any]], tmp_path_factory: pytest.TempPathFactory) -> Image:
    return _unpack(images["triton"], tmp_path_factory.mktemp("triton"))


def test_images_table_names_each_build_by_content(images: dict[str, dict[str, Any]]) -> None:
    version = images["product"]["tag"].split("-")[0]
    assert images["product"]["image"] == "localhost/pantau"
    assert version == "0.1.0"
    assert images["triton"]["image"] == "localhost/pantau-triton"
    assert images["base"]["image"] == "localhost/pantau-base"
    for entry in images.values():
        assert entry["ref"] == f"{entry['image']}:{entry['tag']}"
        assert entry["digest"].startswith("sha256:")
        assert len(entry["digest"]) == 71
        assert entry["tag"].endswith(entry["key"][:12]), "the tag must change with the content"
        assert Path(entry["archive"]).is_file()
        assert entry["size_mb"] > 0


def test_product_runs_as_non_root_with_pantau_as_entry_point(product: Image) -> None:
    assert product.config["User"] in (f"{UID}:{UID}", str(UID))
    assert product.config["Entrypoint"] == ["pantau"]
    assert product.config["Cmd"] == ["operator"]
    assert (product.rootfs / "home/nonroot").stat().st_uid == UID
    assert f"nonroot:x:{UID}:{UID}:" in (product.rootfs / "etc/passwd").read_text()


def test_pantau_is_on_the_image_path_and_starts_as_uid_65532(product: Image) -> None:
    # The operator makes ingest pods with command ["pantau", "ingest"]: resolved through PATH.
    assert product.which("pantau") == "/opt/pantau/bin/pantau"
    result = product.run("/opt/pantau/bin/pantau", "--help")
    assert result.returncode == 0, result.stderr[-2000:]
    for command in ("operator", "ingest", "model", "detect"):
        assert command in result.stdout
    ingest = product.run("pantau", "ingest", "--help")
    assert ingest.returncode == 0, ingest.stderr[-2000:]
    assert "Usage: pantau ingest" in ingest.stdout


def test_product_holds_no_development_or_test_packages(product: Image) -> None:
    (site,) = product.rootfs.glob("opt/pantau/lib/python3*/site-packages")
    names = sorted(p.name.lower() for p in site.iterdir())
    found = [n for n in names if any(n == m or n.startswith((f"{m}-", f"{m}.")) for m in NOT_IN_PRODUCT)]
    assert found == []
    assert "pantau" in names
    assert "kopf" in names
    assert "onnxruntime" in names


@pytest.mark.parametrize("role", ["product", "triton"])
def test_no_compiler_anywhere_in_the_image(role: str, request: pytest.FixtureRequest) -> None:
    image: Image = request.getfixturevalue(role)
    found = [
        str(path.relative_to(image.rootfs))
        for folder, dirs, files in os.walk(image.rootfs)
        for name in files + [d for d in dirs if Path(folder, d).is_symlink()]
        if any(fnmatch.fnmatchcase(name, pattern) for pattern in COMPILERS)
        # an executable or a link (dangling or not), not data such as dpkg's gcc-12-base lists
        and ((path := Path(folder, name)).is_symlink() or path.stat().st_mode & 0o111)
    ]
    assert found == []


def _shared_objects(rootfs: Path, folder: str) -> list[str]:
    """Shared objects under a folder of the image, as paths inside it; without the wheels' bundled
    *.libs, which resolve one another only through the RPATH of the module that loads them."""
    return sorted(
        "/" + str(p.relative_to(rootfs))
        for p in (rootfs / folder).rglob("*.so*")
        if p.is_file() and not p.is_symlink() and not p.parent.name.endswith(".libs")
    )


def test_every_shared_object_of_the_product_resolves_inside_it(product: Image) -> None:
    files = _shared_objects(product.rootfs, "opt/pantau")
    assert len(files) > 50
    assert product.unresolved(files) == []


def test_triton_image_starts_its_server_as_uid_65532(triton: Image) -> None:
    assert triton.config["User"] in (f"{UID}:{UID}", str(UID))
    assert triton.config["Entrypoint"] == ["tritonserver"]
    assert triton.which("tritonserver") == "/opt/tritonserver/bin/tritonserver"
    result = triton.run("tritonserver", "--help")
    output = result.stdout + result.stderr
    assert "error while loading shared libraries" not in output
    assert result.returncode in (0, 1)
    assert "Usage: tritonserver" in output
    assert "--model-repository" in output
    backend = "/opt/tritonserver/backends/python"
    python = _shared_objects(triton.rootfs, "opt/tritonserver/python")
    files = ["/opt/tritonserver/bin/tritonserver", f"{backend}/libtriton_python.so"]
    files += [f"{backend}/triton_python_backend_stub", *python]
    assert triton.unresolved(files) == []


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def serving_triton(product: Image, triton: Image, shared_dir: Path) -> Iterator[str]:
    """Triton from its image, serving the repository `pantau model build` wrote in the product image."""
    onnx = shared_dir / "models" / "yolox_nano.onnx"
    work = product.rootfs / "tmp" / "build"
    work.mkdir(mode=0o777, exist_ok=True)
    work.chmod(0o777)
    shutil.copy2(onnx, work / "model.onnx")  # a temporary copy inside the unpacked image
    built = product.run(
        "pantau", "model", "build", "--model", "/tmp/build/model.onnx", "--out", "/tmp/build/models"
    )
    assert built.returncode == 0, built.stdout[-2000:] + built.stderr[-2000:]
    models = triton.rootfs / "models"
    shutil.rmtree(models, ignore_errors=True)
    shutil.copytree(work / "models", models)

    http, grpc, metrics = _free_port(), _free_port(), _free_port()
    root = triton.rootfs
    env = " ".join(f"{k}={v}" for k, v in triton.env.items())
    argv = (
        f"tritonserver --model-repository=/models --http-address=127.0.0.1 --http-port={http}"
        f" --grpc-address=127.0.0.1 --grpc-port={grpc} --metrics-address=127.0.0.1"
        f" --metrics-port={metrics} --allow-gpu-metrics=false"
    )
    # A mount namespace of its own: /proc, /dev and a private /dev/shm (the Python backend's shared
    # memory) exist only while the server runs. `exec` all the way down: the PID is tritonserver's.
    script = (
        f"mount -t proc proc {root}/proc && mount --rbind /dev {root}/dev"
        f" && mount -t tmpfs shm {root}/dev/shm"
        f" && exec chroot --userspec={UID}:{UID} {root} /usr/bin/env -i {env} {argv}"
    )
    log = (product.rootfs.parent / "triton.log").open("w")
    server = subprocess.Popen(
        ["unshare", "--mount", "sh", "-c", script], stdout=log, stderr=subprocess.STDOUT
    )
    url = f"127.0.0.1:{http}"
    try:
        deadline = time.monotonic() + 90
        while True:
            assert server.poll() is None, (product.rootfs.parent / "triton.log").read_text()[-3000:]
            try:
                with urllib.request.urlopen(f"http://{url}/v2/models/yolox/ready", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            assert time.monotonic() < deadline, (product.rootfs.parent / "triton.log").read_text()[-3000:]
            time.sleep(0.5)
        yield url
    finally:
        server.terminate()
        try:
            server.wait(timeout=40)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
        log.close()


def test_triton_image_serves_the_model_repository_the_product_image_writes(serving_triton: str) -> None:
    client = triton_http.InferenceServerClient(serving_triton)
    assert client.is_model_ready("yolox")
    assert client.is_model_ready("yolox_jpeg")
    size = client.get_model_metadata("yolox")["inputs"][0]["shape"][1]
    images = triton_http.InferInput("IMAGES", [1, size, size, 3], "UINT8")
    images.set_data_from_numpy(np.zeros((1, size, size, 3), np.uint8))
    orig = triton_http.InferInput("ORIG_HW", [1, 2], "INT32")
    orig.set_data_from_numpy(np.array([[480, 640]], np.int32))
    result = client.infer("yolox", [images, orig])
    assert result.as_numpy("NUM_DETECTIONS").tolist() == [[0]]  # a black frame: nothing detected
    assert result.as_numpy("BOXES").shape == (1, 100, 4)
