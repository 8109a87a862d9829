"""`pantau operator`: run the operator against the current kubeconfig (or in-cluster)."""

from __future__ import annotations

import logging

import typer


def operator(
    verbose: bool = typer.Option(False, "--verbose", help="Log every handler call (debug)."),
) -> None:
    """Run the operator: watch Sites, Cameras and their children until stopped (SIGTERM/Ctrl-C).

    Settings come from PANTAU_* variables (see pantau.settings.OperatorSettings); the API server
    from the in-cluster ServiceAccount or the kubeconfig (KUBECONFIG)."""
    # Imported here, not at the top: `pantau --help` should not pay for Kopf and pydantic.
    import kopf

    from pantau.settings import OperatorSettings

    settings = OperatorSettings()
    import pantau.handlers.registration  # noqa: F401 - registers the handlers with Kopf
    from pantau.handlers import triton_scaler  # noqa: F401 - and the Triton scaler

    kopf.configure(verbose=verbose, log_prefix=True)
    if not verbose:
        # One line per handled event (thousands per burst) buries the lines that matter; httpx
        # logs every request.
        logging.getLogger("kopf.objects").setLevel(logging.WARNING)
        logging.getLogger("httpx").setLevel(logging.WARNING)
    kopf.run(
        clusterwide=not settings.namespaces,
        namespaces=settings.namespaces,
        standalone=not settings.peering,
        liveness_endpoint=f"http://{settings.liveness_host}:{settings.liveness_port}/healthz",
        memo=kopf.Memo(settings=settings),
    )
