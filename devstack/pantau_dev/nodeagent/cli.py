"""Command line of the node agent (the stack starts it with exactly these options)."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from pantau_dev.nodeagent.context import AgentConfig


def parse_args(argv: Sequence[str] | None = None) -> AgentConfig:
    p = argparse.ArgumentParser(prog="python -m pantau_dev.nodeagent", description=__doc__)
    p.add_argument("--kubeconfig", type=Path, required=True, help="credentials of the agent itself")
    p.add_argument("--node-name", default="pantau-local")
    p.add_argument("--api-host", default="127.0.0.1", help="API server address given to pods")
    p.add_argument("--api-port", type=int, required=True, help="API server port given to pods")
    p.add_argument("--ca-file", type=Path, required=True, help="cluster CA, copied into each pod's ca.crt")
    p.add_argument("--pid-dir", type=Path, required=True, help="PID files (shared with `pantau dev`)")
    p.add_argument("--log-dir", type=Path, required=True, help="one log file per container")
    p.add_argument("--work-dir", type=Path, required=True, help="per-pod directories (tokens)")
    p.add_argument("--python-bin-dir", type=Path, required=True, help="put first on pods' PATH")
    p.add_argument("--pod-ip-prefix", default="127.0.0.", help="pods get PREFIX10..PREFIX250")
    p.add_argument("--backoff-base", type=float, default=10.0, help="first CrashLoopBackOff delay (s)")
    p.add_argument("--backoff-cap", type=float, default=300.0, help="longest CrashLoopBackOff delay (s)")
    a = p.parse_args(argv)
    return AgentConfig(
        kubeconfig=a.kubeconfig,
        node_name=a.node_name,
        api_host=a.api_host,
        api_port=a.api_port,
        ca_file=a.ca_file,
        pid_dir=a.pid_dir,
        log_dir=a.log_dir,
        work_dir=a.work_dir,
        python_bin_dir=a.python_bin_dir,
        pod_ip_prefix=a.pod_ip_prefix,
        backoff_base=a.backoff_base,
        backoff_cap=a.backoff_cap,
    )


def main(argv: Sequence[str] | None = None) -> None:
    config = parse_args(argv)
    logging.basicConfig(
        stream=sys.stdout,
        level=logging.INFO,
        format="%(asctime)s %(levelname)s %(threadName)s %(name)s: %(message)s",
    )
    logging.getLogger("httpx").setLevel(logging.WARNING)  # a line per probe is noise
    from pantau_dev.nodeagent.agent import Agent  # after logging is set up

    code = Agent(config).run()
    logging.shutdown()
    # Worker and watch threads may sit in blocking calls; they hold nothing that needs closing,
    # and a plain exit could stall on them or trip over their logging at shutdown.
    os._exit(code)
