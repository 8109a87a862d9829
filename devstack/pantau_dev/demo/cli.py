"""`pantau demo`: start everything, show a live table, stop everything on exit."""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console, Group
from rich.live import Live
from rich.table import Table

from pantau_dev.procs import StackError
from pantau_dev.settings import DevSettings
from pantau_dev.stack import DevStack

if TYPE_CHECKING:
    from pantau_dev.demo.run import Demo

console = Console()


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt  # SIGTERM ends the demo like Ctrl-C: everything is stopped


def _tables(demo: Demo) -> Group:
    sites = Table(title="Sites", title_justify="left")
    for col in ("site", "region", "cameras", "streaming", "pods ready", "Ready"):
        sites.add_column(col)
    for s in demo.objects("sites"):
        st = s.get("status", {})
        ready: dict[str, Any] = next((c for c in st.get("conditions", []) if c["type"] == "Ready"), {})
        cams, pods = st.get("cameras", {}), st.get("pods", {})
        sites.add_row(
            s["metadata"]["name"],
            s["spec"]["region"],
            str(cams.get("total", "-")),
            str(cams.get("streaming", "-")),
            f"{pods.get('ready', '-')}/{pods.get('desired', '-')}",
            f"{ready.get('status', '-')} {ready.get('reason', '')}",
        )
    cameras = Table(title="Cameras", title_justify="left")
    for col in ("camera", "site", "Ready", "streaming", "reason", "fps", "frames", "detections", "pod"):
        cameras.add_column(col)
    reports = demo.pod_reports()
    for c in demo.objects("cameras"):
        st, name = c.get("status", {}), c["metadata"]["name"]
        cam_ready: dict[str, Any] = next((x for x in st.get("conditions", []) if x["type"] == "Ready"), {})
        r: dict[str, Any] = reports.get(name, {})
        top = sorted((r.get("detections") or {}).items(), key=lambda kv: -kv[1])[:3]
        cameras.add_row(
            name,
            c["spec"]["siteRef"]["name"],
            cam_ready.get("status", "-"),
            "yes" if st.get("streaming") else "no",
            st.get("reason") or cam_ready.get("reason") or "",
            f"{r.get('fps', 0):.1f}",
            str(r.get("frames_processed", 0)),
            ", ".join(f"{k} {v}" for k, v in top),
            st.get("pod", ""),
        )
    return Group(sites, cameras)


def demo(
    duration: Annotated[float | None, typer.Option(help="Stop cleanly after this many seconds.")] = None,
    summary: Annotated[Path | None, typer.Option(help="Write a JSON summary here at the end.")] = None,
) -> None:
    """Run the whole system on the local stack: cameras, operator, ingest pods, Triton, traces."""
    from pantau_dev.demo.run import Demo

    signal.signal(signal.SIGTERM, _interrupt)
    stack = DevStack(DevSettings())
    demo_run: Demo | None = None
    try:
        with console.status("starting the local stack (control plane, node, Triton, Jaeger) ..."):
            info = stack.up()
        demo_run = Demo(stack)
        with console.status("loading the detector, starting cameras and the operator, applying demo/ ..."):
            demo_run.start()
        console.print(f"KUBECONFIG={info.kubeconfig}  (try: kubectl get pantau -n {demo_run.namespace})")
        console.print(f"traces: {info.jaeger_query}/api/traces?service=pantau-ingest  (Jaeger query API)")
        console.print(
            f"logs: {info.log_dir}; pods: kubectl logs -n {demo_run.namespace} POD - Ctrl-C stops all"
        )
        deadline = time.monotonic() + duration if duration else None
        with Live(_tables(demo_run), console=console, refresh_per_second=1) as live:
            while deadline is None or time.monotonic() < deadline:
                time.sleep(2)
                live.update(_tables(demo_run))
    except KeyboardInterrupt:
        console.print("stopping ...")
    except StackError as exc:
        console.print(f"[red]{exc}[/red]")
        raise typer.Exit(1) from exc
    finally:
        if demo_run is not None:
            if summary is not None:
                summary.write_text(json.dumps(demo_run.summary(), indent=2))
                console.print(f"summary written to {summary}")
            demo_run.stop()
        stopped = stack.down()
        console.print(f"stopped {len(stopped)} processes")
