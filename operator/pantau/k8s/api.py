"""The only code that talks to the API server (besides Kopf's own watching).

Writes are server-side apply with one field manager (for objects and for status), so the
operator states what it wants and never reads-modifies-writes. Requests go through one aiohttp
session (watches through an httpx client) with the credentials the kubernetes package finds
(in-cluster ServiceAccount or kubeconfig), limited to a fixed number in flight.

Why two clients: at scale the operator sends thousands of applies in a burst, and httpx's
pool bookkeeping (anyio streams, a failed `import sniffio` per request) cost ~1.7 ms of CPU per
request against ~0.2 ms for aiohttp, which Kopf already uses (measured with the same TLS server).
The watch keeps httpx's line streaming, which its users rely on.
"""

from __future__ import annotations

import asyncio
import json
import ssl
import urllib.parse
import urllib.request
from collections.abc import AsyncIterator, Mapping
from typing import Any, Final

import aiohttp
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
    "Deployment": "deployments",
    "HorizontalPodAutoscaler": "horizontalpodautoscalers",
    "ClusterKopfPeering": "clusterkopfpeerings",
}


# The watch's marker that its first listing has been delivered in full.
SYNCED: Final = "SYNCED"


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


def env_proxy(url: str) -> str | None:
    """The proxy that HTTPS_PROXY / HTTP_PROXY name for `url`, unless NO_PROXY exempts its host, as
    httpx honoured them. Read once: aiohttp's `trust_env` reads them (and ~/.netrc) in a thread on
    every request."""
    parts = urllib.parse.urlsplit(url)
    if not parts.hostname or urllib.request.proxy_bypass(parts.hostname):
        return None
    return urllib.request.getproxies().get(parts.scheme)


class KubeApi:
    def __init__(
        self,
        http: httpx.AsyncClient,
        field_manager: str,
        concurrency: int,
        token: _Token,
        tls: ssl.SSLContext | None = None,
    ) -> None:
        self._http = http  # watches
        self._base = str(http.base_url).rstrip("/")
        self._tls = tls  # None: the system's CAs
        self._session: aiohttp.ClientSession | None = None  # requests; opened on the first one
        self._proxy = env_proxy(self._base)
        self._concurrency = concurrency
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
        return cls(http, field_manager, concurrency, _Token(cfg), ctx)

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
        await self._http.aclose()

    def _client(self) -> aiohttp.ClientSession:
        """The session, opened inside the running loop (aiohttp's requirement) on first use."""
        if self._session is None:
            connector = aiohttp.TCPConnector(limit=self._concurrency, ssl=self._tls or True)
            self._session = aiohttp.ClientSession(
                connector=connector, timeout=aiohttp.ClientTimeout(total=30.0)
            )
        return self._session

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
        url = self._base + path
        async with self._slots:
            try:
                async with self._client().request(
                    method, url, params=params, data=content, headers=headers, proxy=self._proxy
                ) as resp:
                    code, raw = resp.status, await resp.read()
            except (aiohttp.ClientError, TimeoutError) as exc:
                raise ApiError(0, "Unreachable", str(exc) or type(exc).__name__) from exc
        if method != "GET":
            self.writes += 1
        if code >= 400:
            text = raw.decode(errors="replace")
            try:
                status = json.loads(raw)
                raise ApiError(code, status.get("reason", ""), status.get("message", text))
            except (ValueError, AttributeError):
                raise ApiError(code, "", text) from None
        result: JSON = json.loads(raw) if raw else {}
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

    async def get_scale(self, api_version: str, kind: str, namespace: str, name: str) -> JSON | None:
        """The object's `scale` subresource (autoscaling/v1 Scale: spec.replicas, status.selector), or
        None when the object does not exist."""
        return await self._scale_request("GET", api_version, kind, namespace, name)

    async def set_replicas(
        self, api_version: str, kind: str, namespace: str, name: str, replicas: int
    ) -> JSON:
        """Set spec.replicas through the `scale` subresource (what `kubectl scale` does): it needs
        no other permission on the object, and changes nothing else of it."""
        found = await self._scale_request("PATCH", api_version, kind, namespace, name, replicas)
        if found is None:
            raise ApiError(404, "NotFound", f"{kind} {namespace}/{name} does not exist")
        return found

    async def _scale_request(
        self, method: str, api_version: str, kind: str, namespace: str, name: str, replicas: int | None = None
    ) -> JSON | None:
        path = object_path(api_version, kind, namespace, name) + "/scale"
        body = {"spec": {"replicas": replicas}} if replicas is not None else None
        try:
            patch = "application/merge-patch+json"
            return await self._request(
                method, path, body=body, content_type=patch if body else "application/json"
            )
        except ApiError as exc:
            if exc.not_found:
                return None
            raise

    async def create(self, obj: JSON) -> JSON:
        """POST a new object (for Events, whose names the server generates); not for children,
        which are applied."""
        path = object_path(obj["apiVersion"], obj["kind"], obj["metadata"].get("namespace"))
        return await self._request("POST", path, body=obj)

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
        """(type, object) events: first a synthetic ADDED per existing object, then SYNCED (with an
        empty object: the listing is complete, even when it was empty), then changes.

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
            yield SYNCED, {}
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
