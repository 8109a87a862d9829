"""`pantau ingest`: the entry point of the ingest pods."""

from __future__ import annotations

import asyncio
import logging

import typer


def ingest() -> None:
    """Stream this pod's assigned cameras to Triton (the program of the ingest pods).

    Configured by the pod's environment: POD_NAME, POD_NAMESPACE, POD_IP, PANTAU_SITE,
    PANTAU_TRITON_ADDRESS, OTEL_* and more (see pantau.ingest.settings)."""
    from pydantic import ValidationError  # imported here: `pantau --help` should not pay for it

    from pantau.contract import IngestSettings

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # httpx logs request URLs at INFO; a webhook URL's path may hold a token.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    try:
        settings = IngestSettings()  # values come from the environment
    except ValidationError as exc:
        missing = ", ".join(str(e["loc"][0]) for e in exc.errors(include_input=False))
        typer.echo(f"ingest: missing or invalid settings: {missing} (set by the pool)", err=True)
        raise typer.Exit(2) from exc
    from pantau.ingest.app import main

    asyncio.run(main(settings))
