"""The only code that talks to the API server (besides Kopf's own watching).

Writes are server-side apply with one field manager (for objects and for status), so the
operator states what it wants and never reads-modifies-writes. Requests go through one httpx
async client with the credentials the kubernetes package finds (in-cluster ServiceAccount or
kubeconfig), limited to a fixed number in flight.
"""

from __future__ import annotations

import asyncio
import json
import ssl
from collections.abc import AsyncIterator, Mapping
from typing import Any

import httpx
from kubernetes import client as k8s_client
from kubernetes import config as k8s_config
from kubernetes.config.config_exception import ConfigException

JSON = dict[str, Any]

# apiVersion -> URL prefix; kind -> plural. Only the kinds the operator writes or reads.
_PLURALS = {
    "ServiceAccount": "serviceaccounts",
    "Service": "services",
    "Secret": "secrets",
    "Pod": "pods",
    "Event": "events",
    "StatefulSet": "statefulsets",
    "Role": "roles",
    "RoleBinding": "rolebindings",
    "PodDisruptionBudget": "poddisruptionbudgets",
    "NetworkPolicy": "networkpolicies",
    "Site": "sites",
    "Camera": "cameras",
}


class ApiError(RuntimeError):
    """An API request failed; `status` is the HTTP status (0 when the server was unreachable)."""

    def __init__(self, status: int, reason: str, message: str) -> None:
        super().__init__(f"{status} {reason}: {message}")
        self.status, self.reason, self.message = status, reason, message

    @property
    def not_found(self) -> bool:
        return self.status == 404

    @property
    def transient(self) -> bool:
        return self.status == 0 or self.status == 429 or self.status >= 500


def object_path(api_version: str, kind: str, namespace: str | None, name: str | None = None) -> str:
    prefix = f"/api/{api_version}" if "/" not in api_version else f"/apis/{api_version}"
    ns = f"/namespaces/{namespace}" if namespace else ""
    return f"{prefix}{ns}/{_PLURALS[kind]}" + (f"/{name}" if name else "")


# Content negotiation for an object's metadata only (PartialObjectMetadata): no spec, no data.
METADATA_ONLY = "application/json;as=PartialObjectMetadata;g=meta.k8s.io;v=v1"


class KubeApi:
    def __init__(self, http: httpx.AsyncClient, field_manager: str, concurrency: int, token: _Token) -> None:
        self._http = http
        self._field_manager = field_manager
        self._slots = asyncio.Semaphore(concurrency)
        self._token = token
        self.writes = 0  # requests that may change state; read by the scale benchmark

    @classmethod
    def from_environment(cls, field_manager: str, concurrency: int = 32) -> KubeApi:
        """Credentials as in-cluster clients find them, else from the kubeconfig."""
        cfg = k8s_client.Configuration()
        try:
            k8s_config.load_incluster_config(client_configuration=cfg)  # type: ignore[no-untyped-call]
        except ConfigException:
            k8s_config.load_kube_config(client_configuration=cfg)  # type: ignore[no-untyped-call]
        ctx = (
            ssl.create_default_context(cafile=cfg.ssl_ca_cert)
            if cfg.verify_ssl
            else ssl.create_default_context()
        )
        if not cfg.verify_ssl:
            ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
        if cfg.cert_file:
            ctx.load_cert_chain(cfg.cert_file, cfg.key_file)
        limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
        http = httpx.AsyncClient(base_url=cfg.host, verify=ctx, timeout=30.0, limits=limits)
        return cls(http, field_manager, concurrency, _Token(cfg))

    async def aclose(self) -> None:
        await self._http.aclose()

    async def _request(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, str] | None = None,
        body: JSON | None = None,
        content_type: str = "application/json",
        accept: str = "application/json",
    ) -> JSON:
        headers = {"Content-Type": content_type, "Accept": accept, **self._token.header()}
        content = json.dumps(body).encode() if body is not None else None
        async with self._slots:
            try:
                resp = await self._http.request(method, path, params=params, content=content, headers=headers)
            except httpx.HTTPError as exc:
                raise ApiError(0, "Unreachable", str(exc)) from exc
        if method != "GET":
            self.writes += 1
        if resp.status_code >= 400:
            try:
                status = resp.json()
                raise ApiError(resp.status_code, status.get("reason", ""), status.get("message", resp.text))
            except ValueError:
                raise ApiError(resp.status_code, "", resp.text) from None
        result: JSON = resp.json() if resp.content else {}
        return result

    async def apply(self, obj: JSON, *, subresource: str | None = None) -> JSON:
        """Server-side apply `obj` (or its status), taking ownership of the fields it sets."""
        meta = obj["metadata"]
        path = object_path(obj["apiVersion"], obj["kind"], meta.get("namespace"), meta["name"])
        if subresource:
            path += f"/{subresource}"
        params = {"fieldManager": self._field_manager, "force": "true"}
        return await self._request(
            "PATCH", path, params=params, body=obj, content_type="application/apply-patch+yaml"
        )

    async def get(self, api_version: str, kind: str, namespace: str | None, name: str) -> JSON | None:
        try:
            return await self._request("GET", object_path(api_version, kind, namespace, name))
        except ApiError as exc:
            if exc.not_found:
                return None
            raise

    async def metadata(self, api_version: str, kind: str, namespace: str | None, name: str) -> JSON | None:
        """The object's metadata (None when it does not exist), asking for nothing else: for a
        Secret, the caller never receives (and so never holds) its data."""
        try:
            found = await self._request(
                "GET", object_path(api_version, kind, namespace, name), accept=METADATA_ONLY
            )
        except ApiError as exc:
            if exc.not_found:
                return None
            raise
        metadata: JSON = found.get("metadata") or {}
        return metadata

    async def list_objects(
        self, api_version: str, kind: str, namespace: str | None, label_selector: str = ""
    ) -> list[JSON]:
        params = {"labelSelector": label_selector} if label_selector else None
        result = await self._request("GET", object_path(api_version, kind, namespace), params=params)
        items: list[JSON] = result.get("items", [])
        return items

    async def watch(
        self,
        api_version: str,
        kind: str,
        namespace: str | None,
        label_selector: str = "",
        server_timeout: int = 300,
        field_selector: str = "",
    ) -> AsyncIterator[tuple[str, JSON]]:
        """(type, object) events: first a synthetic ADDED per existing object, then changes.

        Lists, then watches from the list's resourceVersion; restarts from a fresh list when the
        server says the version is gone (410) or the stream ends. A DELETED is synthesised for
        objects that vanished between two lists, so consumers never miss a removal."""
        path = object_path(api_version, kind, namespace)
        known: dict[str, JSON] = {}
        chosen = (("labelSelector", label_selector), ("fieldSelector", field_selector))
        selectors = {k: v for k, v in chosen if v}
        while True:
            listing = await self._request("GET", path, params=selectors)
            current = {o["metadata"]["uid"]: o for o in listing.get("items", [])}
            for uid, obj in known.items():
                if uid not in current:
                    yield "DELETED", obj
            for obj in current.values():
                yield "ADDED", obj
            known = current
            version = listing["metadata"]["resourceVersion"]
            params = {**selectors, "watch": "1", "resourceVersion": version, "allowWatchBookmarks": "true"}
            params["timeoutSeconds"] = str(server_timeout)
            try:
                async with self._http.stream(
                    "GET",
                    path,
                    params=params,
                    headers=self._token.header(),
                    timeout=httpx.Timeout(server_timeout + 30.0),
                ) as resp:
                    if resp.status_code >= 400:
                        raise ApiError(resp.status_code, "WatchFailed", (await resp.aread()).decode()[:300])
                    async for line in resp.aiter_lines():
                        if not line:
                            continue
                        event = json.loads(line)
                        kind_, obj = event["type"], event["object"]
                        if kind_ == "ERROR":
                            break  # e.g. 410 Gone: re-list
                        if kind_ == "BOOKMARK":
                            continue
                        uid = obj["metadata"]["uid"]
                        if kind_ == "DELETED":
                            known.pop(uid, None)
                        else:
                            known[uid] = obj
                        yield kind_, obj
            except httpx.HTTPError as exc:
                raise ApiError(0, "Unreachable", str(exc)) from exc


class _Token:
    """Bearer token, re-read when the kubernetes package can refresh it (rotating in-cluster tokens)."""

    def __init__(self, cfg: k8s_client.Configuration) -> None:
        self._cfg = cfg

    def header(self) -> dict[str, str]:
        if self._cfg.refresh_api_key_hook is not None:
            self._cfg.refresh_api_key_hook(self._cfg)
        # The kubernetes package files the token as "BearerToken" (older releases: "authorization").
        value = self._cfg.get_api_key_with_prefix("BearerToken") or self._cfg.get_api_key_with_prefix(
            "authorization"
        )
        return {"Authorization": value.strip()} if value else {}
