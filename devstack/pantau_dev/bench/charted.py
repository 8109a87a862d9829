"""What the benchmarks that install Pantau with its chart share: one namespace's objects through kubectl,
and the teardown order (Sites first, while the operator still runs to remove its finalizers)."""

from __future__ import annotations

import contextlib
import json
from typing import Any

from pantau_dev.chart import Release, Tools


class Charted:
    """A release of the chart watching `namespace`, and kubectl on that namespace."""

    def __init__(self, tools: Tools, release: Release, namespace: str) -> None:
        self.tools, self.release, self.namespace = tools, release, namespace

    def apply(self, *docs: dict[str, Any]) -> None:
        body = json.dumps({"apiVersion": "v1", "kind": "List", "items": list(docs)})
        self.tools.kubectl("apply", "-n", self.namespace, "-f", "-", stdin=body)

    def get(self, kind: str, name: str = "", selector: str = "") -> Any:
        """The object (or list) as JSON; None when kubectl cannot get it."""
        args = ["get", kind, *([name] if name else []), "-n", self.namespace, "-o", "json"]
        if selector:
            args += ["-l", selector]
        result = self.tools.kubectl(*args, check=False)
        return json.loads(result.stdout) if result.returncode == 0 else None

    def uninstall(self) -> None:
        """Sites first (the operator removes their finalizers), then the release, then the namespace."""
        self.tools.kubectl("delete", "sites", "--all", "-n", self.namespace, "--timeout=90s", check=False)
        with contextlib.suppress(Exception):
            self.release.uninstall()
        self.tools.kubectl("delete", "namespace", self.namespace, "--wait=false", check=False)
