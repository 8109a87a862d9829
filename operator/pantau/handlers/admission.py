"""The validating webhook (served by the operator through Kopf, installed by the chart): refuses at the
door what the CRDs' CEL rules cannot decide (pantau.reconcile.admission). Registered only when the
operator is given a port and a certificate (PANTAU_ADMISSION_PORT); without them nothing is served.

Why a webhook and not a ValidatingAdmissionPolicy with parameters: a Camera's verdict depends on its
own Site (the networks it allows), an object CEL cannot look up by a name read from the Camera, and
on the operator's configuration (the model's classes, the allowed file directories), which the
webhook has at hand. The same pydantic models the reconcile loop uses parse the object.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Literal, TypeVar

import kopf
from pydantic import BaseModel, ValidationError

from pantau.handlers.state import OperatorState
from pantau.k8s.api import ApiError
from pantau.models import GROUP, VERSION, CameraSpec, SiteSpec
from pantau.reconcile.admission import AdmissionPolicy, camera_problems, site_problems
from pantau.settings import OperatorSettings

log = logging.getLogger("pantau.admission")
CAMERA_WEBHOOK = "validate-camera"  # the handler ids are the URL paths: /validate-camera
SITE_WEBHOOK = "validate-site"


M = TypeVar("M", bound=BaseModel)


def _parsed(model: type[M], spec: Any) -> M:
    """The spec as the operator reads it; a refusal naming the field when it does not parse."""
    try:
        return model.model_validate(dict(spec or {}))
    except ValidationError as exc:
        first = exc.errors(include_input=False, include_url=False)[0]
        where = "spec" + "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in first["loc"])
        raise kopf.AdmissionError(f"{where}: {first['msg']}", code=422) from None


def _refuse(problems: list[str]) -> None:
    if problems:
        raise kopf.AdmissionError("; ".join(problems), code=422)


async def validate_camera(spec: kopf.Spec, namespace: str | None, memo: Any, **kwargs: Any) -> None:
    camera = _parsed(CameraSpec, spec)
    index: kopf.Index[Any, Any] = kwargs["site_index"]  # Kopf hands its indexes to webhooks too
    site_spec = await _site_spec(memo["state"], index, namespace or "", camera.site_ref.name)
    _refuse(camera_problems(camera, site_spec, memo["policy"]))


async def _site_spec(
    state: OperatorState, index: kopf.Index[Any, Any], namespace: str, name: str
) -> SiteSpec | None:
    """The Camera's Site as the operator's index holds it (no API call: a review must not queue behind
    the operator's own requests), else as the API server has it (a Site created a moment ago). None when
    it is absent, unreadable or invalid: it then allows nothing extra."""
    held = next(iter(index.get((namespace, name), [])), None)
    if held is not None:
        return held.spec if isinstance(held.spec, SiteSpec) else None
    try:
        site = await state.api.get(f"{GROUP}/{VERSION}", "Site", namespace, name)
    except ApiError as exc:
        log.warning("admission: site %s/%s not read: %s", namespace, name, exc)
        return None
    # Parsed as the reconcile loop parses a watched Site.
    parsed = OperatorState.site_facts(site).spec if site is not None else None
    return parsed if isinstance(parsed, SiteSpec) else None


async def validate_site(spec: kopf.Spec, memo: Any, **_: Any) -> None:
    _refuse(site_problems(_parsed(SiteSpec, spec), memo["policy"]))


def enable(settings: kopf.OperatorSettings, ours: OperatorSettings, memo: Any) -> None:
    """Serve the webhook on `admission_port` with the certificate in `admission_cert_dir`. Kopf does
    not manage the ValidatingWebhookConfiguration: the chart installs it with its CA bundle."""
    if not ours.admission_port:
        return
    cert_dir = Path(ours.admission_cert_dir)
    settings.admission.server = kopf.WebhookServer(
        addr=ours.admission_host,
        port=ours.admission_port,
        certfile=cert_dir / "tls.crt",
        pkeyfile=cert_dir / "tls.key",
    )
    settings.admission.managed = None
    memo["policy"] = AdmissionPolicy(frozenset(ours.model_classes), tuple(ours.file_source_dirs))
    operations: list[Literal["CREATE", "UPDATE"]] = ["CREATE", "UPDATE"]
    kopf.on.validate(GROUP, VERSION, "cameras", id=CAMERA_WEBHOOK, operations=operations)(validate_camera)
    kopf.on.validate(GROUP, VERSION, "sites", id=SITE_WEBHOOK, operations=operations)(validate_site)
