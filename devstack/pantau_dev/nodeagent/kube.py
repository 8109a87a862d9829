"""The agent's own API access: the `kubernetes` client's transport (TLS and credentials from the
kubeconfig) with plain JSON in and out, so pod specs and statuses stay the dicts the API serves."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from kubernetes import client, config
from kubernetes.watch.watch import iter_resp_lines

JSON = dict[str, Any]

MERGE_PATCH = "application/merge-patch+json"
STRATEGIC_PATCH = "application/strategic-merge-patch+json"


class ApiError(RuntimeError):
    """A non-2xx answer of the API server."""

    def __init__(self, status: int, body: str) -> None:
        self.status = status
        self.body = body
        try:
            message = str(json.loads(body).get("message", body))
        except (ValueError, AttributeError):
            message = body
        super().__init__(f"HTTP {status}: {message[:500]}")


class Kube:
    def __init__(self, kubeconfig: Path, timeout: float = 15.0) -> None:
        cfg = client.Configuration()
        config.load_kube_config(  # type: ignore[no-untyped-call]
            config_file=str(kubeconfig), client_configuration=cfg, persist_config=False
        )
        # One connection per busy thread (watch, heartbeats, pod workers) without pool-full churn.
        cfg.connection_pool_maxsize = 64
        self._api = client.ApiClient(cfg)
        self.timeout = timeout

    def _send(
        self,
        method: str,
        path: str,
        query: Mapping[str, str] | None,
        body: object | None,
        content_type: str,
        timeout: float | tuple[float, float],
    ) -> Any:
        headers = {"Accept": "application/json"}
        if body is not None:
            headers["Content-Type"] = content_type
        method, url, headers, data, _ = self._api.param_serialize(
            method,
            path,
            query_params=list((query or {}).items()),
            header_params=headers,
            body=body,
            auth_settings=["BearerToken"],
        )
        return self._api.call_api(method, url, header_params=headers, body=data, _request_timeout=timeout)

    def request(
        self,
        method: str,
        path: str,
        *,
        query: Mapping[str, str] | None = None,
        body: object | None = None,
        content_type: str = "application/json",
    ) -> JSON:
        resp = self._send(method, path, query, body, content_type, self.timeout)
        raw: bytes = resp.read()
        if not 200 <= resp.status < 300:
            raise ApiError(resp.status, raw.decode(errors="replace"))
        result: JSON = json.loads(raw) if raw else {}
        return result

    def get(self, path: str, query: Mapping[str, str] | None = None) -> JSON:
        return self.request("GET", path, query=query)

    def post(self, path: str, body: object) -> JSON:
        return self.request("POST", path, body=body)

    def patch(self, path: str, body: object, content_type: str = MERGE_PATCH) -> JSON:
        return self.request("PATCH", path, body=body, content_type=content_type)

    def delete(self, path: str, body: object | None = None) -> JSON:
        return self.request("DELETE", path, body=body)

    def watch(self, path: str, query: Mapping[str, str], timeout_seconds: int) -> Iterator[JSON]:
        """Events of one watch request; the server ends it after `timeout_seconds`."""
        params = {**query, "watch": "true", "timeoutSeconds": str(timeout_seconds)}
        resp = self._send("GET", path, params, None, "application/json", (10.0, timeout_seconds + 30.0))
        try:
            if not 200 <= resp.status < 300:
                raise ApiError(resp.status, resp.read().decode(errors="replace"))
            for line in iter_resp_lines(resp.response):  # type: ignore[no-untyped-call]
                if line:
                    event: JSON = json.loads(line)
                    yield event
        finally:
            # Closed first: a half-read stream must not go back into the pool for reuse.
            resp.response.close()
            resp.response.release_conn()

    def close(self) -> None:
        self._api.close()  # type: ignore[no-untyped-call]


def rfc3339(t: float | None = None) -> str:
    """API timestamp (seconds precision, as metav1.Time serialises)."""
    return datetime.fromtimestamp(time.time() if t is None else t, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def micro_time(t: float | None = None) -> str:
    """metav1.MicroTime, as Lease renewTime wants it."""
    return datetime.fromtimestamp(time.time() if t is None else t, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parse_time(value: str) -> float:
    return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
