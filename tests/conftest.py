"""Shared fixtures: one real local stack per test session, driven by the same code as `pantau dev`."""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Generator, Iterator
from pathlib import Path

import pytest
from kubernetes import client, config

from pantau_dev.procs import ProcessTable, wait_for
from pantau_dev.settings import REPO_ROOT, DevSettings
from pantau_dev.stack import DevStack, StackInfo


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """In CI a skipped test is a failure: every real component must be there and used."""
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    assert reporter is not None
    skipped = len(reporter.stats.get("skipped", []))
    if os.environ.get("CI") and skipped and exitstatus == 0:
        reporter.write_line(f"CI: {skipped} test(s) skipped; failing the run", red=True)
        session.exitstatus = 1


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    path = Path(os.environ.get("PANTAU_SHARED_DIR", REPO_ROOT.parent / "shared"))
    assert (path / "footage" / "vtest.avi").is_file(), (
        f"shared data not found at {path} (set PANTAU_SHARED_DIR)"
    )
    return path


@pytest.fixture(scope="module")
def vtest(shared_dir: Path) -> Path:
    return shared_dir / "footage" / "vtest.avi"


@pytest.fixture(scope="module")
def work_dir(tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest) -> Path:
    """A scratch folder per test module (camera configs, PID files, logs)."""
    return tmp_path_factory.mktemp(request.module.__name__.rsplit(".", 1)[-1])


@pytest.fixture(scope="module")
def table(work_dir: Path) -> Iterator[ProcessTable]:
    """Processes a module starts (cameras, proxies); all stopped when the module ends."""
    procs = ProcessTable(work_dir / "pids", work_dir / "logs")
    yield procs
    procs.stop_all(grace=5)


@pytest.fixture(scope="session")
def dev_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DevStack]:
    """The whole local stack, started once for the session and stopped (every PID) at the end."""
    stack = DevStack(DevSettings(state_dir=tmp_path_factory.mktemp("stack")))
    try:
        stack.up()
        yield stack
    finally:
        stack.down()


@pytest.fixture(scope="session")
def stack_info(dev_stack: DevStack) -> StackInfo:
    return dev_stack.status()


@pytest.fixture(scope="session")
def kubectl(dev_stack: DevStack) -> list[str]:
    """The kubectl command line (the one built with the control plane) for this stack."""
    binary = dev_stack.settings.bin_dir("k8s") / "kubectl"
    return [str(binary), f"--kubeconfig={dev_stack.kubeconfig}"]


@pytest.fixture(scope="session")
def api(dev_stack: DevStack) -> Iterator[client.ApiClient]:
    api_client = config.new_client_from_config(config_file=str(dev_stack.kubeconfig))
    yield api_client
    api_client.close()


@pytest.fixture
def namespace(api: client.ApiClient, request: pytest.FixtureRequest) -> Iterator[str]:
    """A fresh namespace per test, deleted afterwards."""
    # Readable and unique: parametrized ids can share a 40-character prefix.
    digest = hashlib.sha256(request.node.nodeid.encode()).hexdigest()[:6]
    name = "t-" + re.sub(r"[^a-z0-9-]+", "-", request.node.name.lower())[:40].strip("-") + "-" + digest
    core = client.CoreV1Api(api)
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=name)))
    # Pods need the namespace's "default" ServiceAccount, which kube-controller-manager creates.
    wait_for(lambda: core.list_namespaced_service_account(name).items, timeout=30, what=f"SA in {name}")
    yield name
    core.delete_namespace(name)


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """Each phase's report on the test item (`rep_setup`, `rep_call`): fixtures that diagnose a failure
    read it before the stack that failed is torn down."""
    report = yield
    setattr(item, f"rep_{report.when}", report)
    return report
