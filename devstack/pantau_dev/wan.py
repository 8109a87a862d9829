"""A simulated WAN between a district (this host, where the stack's ingest pods run) and a data centre.

The data centre is a network namespace joined to the host by a veth pair; every name comes from a short
prefix the caller gives (`Wan("pwan")`), so what a crashed run left behind is found and removed again
(`Wan.cleanup("pwan")`, which `up()` also does first):

    district: the host and the pods on pantau0        data centre: netns <prefix>-dc
    <prefix>h  host_address (10.250.77.1/30)  ----  <prefix>d  dc_address (10.250.77.2/30)
                                                     lo up; default route via host_address

- **Uplink** (district -> data centre) is the egress of `<prefix>h`: `shape()` puts a token bucket
  (tbf) there. The downlink is not shaped.
- **Loss** is applied where packets arrive in the data centre (prerouting of the netns), that is after
  the shaper, as on a real line: a lost packet has used its share of the bandwidth. (Dropping on the
  host's output hook would not be a loss for the host's own sockets: the kernel reports it to the
  sender as a failed transmission, and TCP retries without a loss signal.)
- **Delay**: this kernel has no netem; a relay in the data centre adds it per TCP service
  (`pantau_dev.faultproxy` in `delay` mode, started with `netns=wan.netns`, listening on `dc_address`).
- **Outage**: `down()` sets the host side down; `restore()` brings it back. While it is down the
  kernel drops the connected route, so traffic for the data centre would follow the default route off
  this machine: a rule of this module's table drops it instead (counted as `blocked`).

Counters (`counters()`) come from an nftables table `inet <prefix>` on the host: `offered`, every
packet that leaves through `<prefix>h`, counted at the forward and output hooks (before the qdisc:
the offered load, retransmissions and what the shaper will drop included); from the same-named table in
the netns: `arrived` and `lost`; and from the qdisc (sent, drops, overlimits, backlog) and the link.
Packet counts are the kernel's buffers: a GSO buffer of several segments counts once; tbf splits those
larger than its burst, so its own counts are frames.

Pods of the local stack have no default route (only the Service range via the node): they reach the
data centre through a Service without a selector whose EndpointSlice names `dc_address`, as the stack
does for CoreDNS. kube-proxy translates it (masqueradeAll: the source becomes `host_address`) and the
host forwards it into the veth; that needs `net.ipv4.ip_forward` = 1 (the stack's bridge plugin sets
it) and no forward-hook chain that drops it: `forwarding_problems()` says what stands in the way.
An accept rule in this module's table would not help: in nftables a drop in any base chain wins.

Needs root, iproute2 (`ip`, `tc`) and nftables (`nft`).
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import re
import shlex
import shutil
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, Final, Self

import psutil
from pydantic import BaseModel, ConfigDict

from pantau_dev.procs import StackError, stop_processes

DEFAULT_NETWORK: Final = "10.250.77.0/30"
# <prefix>h must fit an interface name (15 characters); lower case keeps nft and ip happy alike.
PREFIX_PATTERN: Final = re.compile(r"^[a-z][a-z0-9]{0,11}$")

MTU: Final = 1500
FRAME_BYTES: Final = MTU + 14  # tbf counts Ethernet frames: the IP packet and a 14-byte header
# Token bucket: the burst is 10 ms at the rate, at least two full frames. Large enough that a
# full-size frame always fits the bucket (a packet bigger than it would never pass) and that the
# qdisc's timer, not the bucket, paces the line; small enough that a second of traffic stays within
# 1 % of the rate, as on a real line that cannot send faster than its rate.
BURST_SECONDS: Final = 0.010
MIN_BURST_FRAMES: Final = 2
# Queue: 250 ms at the rate, as a DSL or LTE modem holds, at least 10 full frames. A shorter queue
# drops TCP's bursts in slow start and keeps it from filling the line (at a few hundred kbit/s a
# quarter second is only a handful of frames, hence the floor); a longer one only adds delay
# (bufferbloat) to everything sharing the uplink: the frames' gRPC calls and the events' POSTs.
QUEUE_SECONDS: Final = 0.25
MIN_QUEUE_FRAMES: Final = 10
LOSS_SCALE: Final = 10_000  # loss in units of 0.01 %: `numgen random mod 10000 < loss * 100`
HOOK_PRIORITY: Final = -150  # before the filter tables (0): counted and dropped before they look
RAW_PRIORITY: Final = -300  # before conntrack, where a lost packet never arrived
ETC_NETNS: Final = "/etc/netns"  # per-namespace files `ip netns exec` mounts over /etc
RESOLV_CONF: Final = "# pantau_dev.wan: no DNS in the data centre\nnameserver 127.0.0.1\noptions attempts:1\n"


class WanError(StackError):
    """A command that sets up, shapes or reads the simulated WAN failed."""


class Shaping(BaseModel):
    """What `shape()` set: the uplink's rate (None: not shaped), its tbf parameters, and the loss."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    rate_bit: int | None
    burst_bytes: int | None
    limit_bytes: int | None
    loss_percent: float


class WanCounters(BaseModel):
    """Cumulative counters of the uplink, read at `at` (time.monotonic()). `since(earlier)` gives the
    differences, its `at` then the seconds between the two readings."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    at: float
    offered_bytes: int  # IP bytes that left for the data centre, before the qdisc (host nft counter)
    offered_packets: int
    qdisc_bytes: int  # frames the tbf sent (Ethernet bytes); 0 while not shaped
    qdisc_packets: int
    qdisc_drops: int  # the tbf's queue was full
    qdisc_overlimits: int  # times a packet had to wait for tokens
    qdisc_backlog_bytes: int  # queued now (a gauge: not differenced by `since`)
    sent_bytes: int  # what the host side transmitted (link counters), shaped or not
    sent_packets: int
    arrived_bytes: int  # at the data centre's side, before the loss rule
    arrived_packets: int
    lost_bytes: int  # dropped by the loss rule
    lost_packets: int
    blocked_packets: int  # for the data centre but not through the veth (while down): dropped

    def since(self, earlier: WanCounters) -> WanCounters:
        values = self.model_dump()
        before = earlier.model_dump()
        diff = {k: v if k == "qdisc_backlog_bytes" else v - before[k] for k, v in values.items()}
        return WanCounters(**diff)

    def rate_bit(self, field: str = "qdisc_bytes") -> float:
        """Bits per second of a byte counter over a difference (`later.since(earlier).rate_bit()`)."""
        return float(getattr(self, field)) * 8 / self.at if self.at > 0 else 0.0


def tbf_parameters(rate_bit: int) -> tuple[int, int]:
    """(burst, limit) in bytes for a tbf at `rate_bit` (see BURST_SECONDS and QUEUE_SECONDS)."""
    rate_bytes = rate_bit / 8
    burst = max(round(rate_bytes * BURST_SECONDS), MIN_BURST_FRAMES * FRAME_BYTES)
    limit = max(round(rate_bytes * QUEUE_SECONDS), MIN_QUEUE_FRAMES * FRAME_BYTES, burst)
    return burst, limit


def _chain(name: str, hook: str, priority: int, rules: Sequence[str]) -> str:
    head = f"  chain {name} {{\n    type filter hook {hook} priority {priority}; policy accept;\n"
    return head + "".join(f"    {rule}\n" for rule in rules) + "  }\n"


def _table(name: str, counters: Sequence[str], chains: Sequence[str]) -> str:
    """An nft script that creates `table inet <name>` with named counters and chains."""
    body = "".join(f"  counter {counter} {{ }}\n" for counter in counters) + "".join(chains)
    return f"table inet {name} {{\n{body}}}\n"


def _run(argv: Sequence[str], *, stdin: str | None = None, timeout: float = 30) -> str:
    """Run a command; its stdout, or a WanError naming the command and its stderr."""
    try:
        proc = subprocess.run(
            list(argv), input=stdin, capture_output=True, text=True, timeout=timeout, check=True
        )
    except FileNotFoundError as exc:
        hint = " (Debian package nftables)" if argv[0] == "nft" else ""
        raise WanError(f"{shlex.join(argv)}: {argv[0]} not found{hint}") from exc
    except subprocess.CalledProcessError as exc:
        detail = (exc.stderr or exc.stdout or "").strip()
        script = f"\nscript:\n{stdin}" if stdin else ""
        raise WanError(f"{shlex.join(argv)} failed (exit {exc.returncode}): {detail}{script}") from exc
    except subprocess.TimeoutExpired as exc:
        raise WanError(f"{shlex.join(argv)}: no answer within {timeout:.0f} s") from exc
    return proc.stdout


def _json(argv: Sequence[str]) -> Any:
    out = _run(argv).strip()
    return json.loads(out) if out else []


def _netns_names() -> set[str]:
    return {entry["name"] for entry in _json(["ip", "-j", "netns", "list"])}


def _link_exists(name: str) -> bool:
    return Path("/sys/class/net", name).exists()


def _nft_tables(prefix: Sequence[str] = ()) -> set[tuple[str, str]]:
    found = _json([*prefix, "nft", "-j", "list", "tables"]).get("nftables", [])
    return {(item["table"]["family"], item["table"]["name"]) for item in found if "table" in item}


def _nft_counters(prefix: Sequence[str], table: str) -> dict[str, tuple[int, int]]:
    """Named counters of `inet <table>`: name -> (packets, bytes)."""
    found = _json([*prefix, "nft", "-j", "list", "counters", "table", "inet", table]).get("nftables", [])
    return {
        item["counter"]["name"]: (int(item["counter"]["packets"]), int(item["counter"]["bytes"]))
        for item in found
        if "counter" in item
    }


def _kill_namespace_processes(netns: str, grace: float = 5.0) -> None:
    """Stop what still runs in the data centre's namespace (ours: it holds the namespace alive)."""
    procs = []
    for pid in (int(p) for p in _run(["ip", "netns", "pids", netns]).split()):
        with contextlib.suppress(psutil.Error):
            procs.append(psutil.Process(pid))
    stop_processes(procs, grace)


def forwarding_problems() -> list[str]:
    """What would keep the host from routing pods' traffic into the data centre ([] when nothing)."""
    problems = []
    if Path("/proc/sys/net/ipv4/ip_forward").read_text().strip() != "1":
        problems.append(
            "net.ipv4.ip_forward is 0: the host does not route the pods' traffic "
            "(the stack's CNI bridge plugin sets it when the node runs)"
        )
    for item in _json(["nft", "-j", "list", "chains"]).get("nftables", []):
        chain = item.get("chain")
        if chain and chain.get("hook") == "forward" and chain.get("policy") == "drop":
            problems.append(
                f"chain {chain['family']} {chain['table']} {chain['name']} (forward hook) drops by policy"
            )
    return problems


class Wan:
    """The simulated WAN named by `prefix` (see the module's docstring). A context manager: `up()` on
    the way in, `close()` (everything removed) on the way out."""

    def __init__(self, prefix: str, network: str = DEFAULT_NETWORK) -> None:
        if not PREFIX_PATTERN.match(prefix):
            raise ValueError(f"WAN prefix {prefix!r}: 1-12 lower-case letters and digits, a letter first")
        self.prefix = prefix
        self.network = ipaddress.IPv4Network(network)
        if self.network.prefixlen > 30:
            raise ValueError(f"WAN network {network}: need two host addresses (a /30 or larger)")
        hosts = self.network.hosts()
        self._host = next(hosts)
        self._dc = next(hosts)
        self._shaping: Shaping | None = None

    # ----- names -----

    @property
    def netns(self) -> str:
        return f"{self.prefix}-dc"

    @property
    def host_ifname(self) -> str:
        return f"{self.prefix}h"

    @property
    def dc_ifname(self) -> str:
        return f"{self.prefix}d"

    @property
    def host_address(self) -> str:
        return str(self._host)

    @property
    def dc_address(self) -> str:
        return str(self._dc)

    @property
    def shaping(self) -> Shaping | None:
        return self._shaping

    def exec_argv(self, argv: Sequence[str]) -> list[str]:
        """`argv` run inside the data centre's namespace."""
        return ["ip", "netns", "exec", self.netns, *argv]

    # ----- life cycle -----

    def __enter__(self) -> Self:
        self.up()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def up(self) -> None:
        """Create the namespace, the veth pair, addresses, routes and the nft tables (unshaped).
        Whatever an earlier run with this prefix left is removed first."""
        self.cleanup(self.prefix)
        self._check_clash()
        host_cidr = f"{self.host_address}/{self.network.prefixlen}"
        dc_cidr = f"{self.dc_address}/{self.network.prefixlen}"
        h, d, ns = self.host_ifname, self.dc_ifname, self.netns
        try:
            _run(["ip", "netns", "add", ns])
            # `ip netns exec` mounts this over /etc/resolv.conf: the namespace has no DNS server, and a
            # lookup (Python's HTTP servers do one at start) would wait for timeouts; now it fails at once.
            resolv = Path(ETC_NETNS, ns, "resolv.conf")
            resolv.parent.mkdir(parents=True, exist_ok=True)
            resolv.write_text(RESOLV_CONF)
            _run(["ip", "link", "add", h, "type", "veth", "peer", "name", d, "netns", ns])
            # No IPv6 on the link: its neighbour discovery would show up in the counters.
            _run(["sysctl", "-qw", f"net.ipv6.conf.{h}.disable_ipv6=1"])
            _run(self.exec_argv(["sysctl", "-qw", f"net.ipv6.conf.{d}.disable_ipv6=1"]))
            _run(["ip", "addr", "add", host_cidr, "dev", h])
            _run(["ip", "-n", ns, "addr", "add", dc_cidr, "dev", d])
            _run(["ip", "-n", ns, "link", "set", "lo", "up"])
            _run(["ip", "-n", ns, "link", "set", d, "up"])
            _run(["ip", "link", "set", h, "up"])
            _run(["ip", "-n", ns, "route", "add", "default", "via", self.host_address])
            _run(["nft", "-f", "-"], stdin=self._host_table())
            _run(self.exec_argv(["nft", "-f", "-"]), stdin=self._dc_table(loss_percent=0.0))
        except BaseException:
            self.cleanup(self.prefix)
            raise
        self._shaping = None

    def close(self) -> None:
        self.cleanup(self.prefix)
        self._shaping = None

    @classmethod
    def cleanup(cls, prefix: str) -> None:
        """Remove what a WAN with this prefix left: processes in its namespace, the veth pair, the
        namespace and its /etc/netns files, the host's nft table (the namespace's goes with it).
        Idempotent."""
        if not PREFIX_PATTERN.match(prefix):
            raise ValueError(f"WAN prefix {prefix!r}: 1-12 lower-case letters and digits, a letter first")
        netns, host_ifname = f"{prefix}-dc", f"{prefix}h"
        if _link_exists(host_ifname):  # takes its peer along, synchronously
            try:
                _run(["ip", "link", "del", host_ifname])
            except WanError:
                if _link_exists(host_ifname):  # not just gone with a namespace meanwhile
                    raise
        if netns in _netns_names():
            _kill_namespace_processes(netns)
            _run(["ip", "netns", "del", netns])
        shutil.rmtree(Path(ETC_NETNS, netns), ignore_errors=True)
        with contextlib.suppress(OSError):  # made by up() when there was none; kept when not empty
            Path(ETC_NETNS).rmdir()
        if ("inet", prefix) in _nft_tables():
            _run(["nft", "delete", "table", "inet", prefix])

    def _check_clash(self) -> None:
        """Refuse a network that overlaps an address or route of this machine (ours are gone by now)."""
        for route in _json(["ip", "-j", "-4", "route", "show", "table", "all"]):
            dst = route.get("dst", "default")
            if dst != "default" and ipaddress.IPv4Network(dst, strict=False).overlaps(self.network):
                raise WanError(f"WAN network {self.network} overlaps the route {dst} on {route.get('dev')}")
        for link in _json(["ip", "-j", "-4", "addr", "show"]):
            for addr in link.get("addr_info", []):
                net = ipaddress.IPv4Network(f"{addr['local']}/{addr['prefixlen']}", strict=False)
                if net.overlaps(self.network):
                    raise WanError(f"WAN network {self.network} overlaps {net} on {link['ifname']}")

    # ----- nft -----

    def _host_table(self) -> str:
        h = self.host_ifname
        rules = [
            f'oifname "{h}" counter name "offered"',
            f'oifname != "{h}" ip daddr {self.network} counter name "blocked" drop',
        ]
        return _table(
            self.prefix,
            ["offered", "blocked"],
            [
                _chain("forward", "forward", HOOK_PRIORITY, rules),
                _chain("output", "output", HOOK_PRIORITY, rules),
            ],
        )

    def _dc_table(self, loss_percent: float) -> str:
        chain = _chain("prerouting", "prerouting", RAW_PRIORITY, [])
        return _table(self.prefix, ["arrived", "lost"], [chain]) + self._dc_rules(loss_percent)

    def _dc_rules(self, loss_percent: float) -> str:
        """Commands that fill the namespace's prerouting chain: count arrivals, then lose some."""
        match = f'add rule inet {self.prefix} prerouting iifname "{self.dc_ifname}"'
        rules = f'{match} counter name "arrived"\n'
        threshold = round(loss_percent * LOSS_SCALE / 100)
        if threshold > 0:
            rules += f'{match} numgen random mod {LOSS_SCALE} < {threshold} counter name "lost" drop\n'
        return rules

    # ----- shaping -----

    def shape(self, rate_bit: int | None, *, loss_percent: float = 0.0) -> Shaping:
        """Limit the uplink to `rate_bit` (None: no limit) and lose `loss_percent` of its packets
        (0.01 % steps). Replaces what an earlier call set; `shape(None)` removes it all."""
        if rate_bit is not None and rate_bit < 8_000:
            raise ValueError(f"WAN rate {rate_bit} bit/s: at least 8000")
        if not 0.0 <= loss_percent < 100.0:
            raise ValueError(f"WAN loss {loss_percent} %: from 0 to below 100")
        burst = limit = None
        if rate_bit is None:
            self._remove_qdisc()
        else:
            burst, limit = tbf_parameters(rate_bit)
            _run(["tc", "qdisc", "replace", "dev", self.host_ifname, "root", "tbf",
                  "rate", f"{rate_bit}bit", "burst", str(burst), "limit", str(limit)])  # fmt: skip
        # One transaction: the arrival counter is never missing while the loss rule changes.
        script = f"flush chain inet {self.prefix} prerouting\n" + self._dc_rules(loss_percent)
        _run(self.exec_argv(["nft", "-f", "-"]), stdin=script)
        self._shaping = Shaping(
            rate_bit=rate_bit, burst_bytes=burst, limit_bytes=limit, loss_percent=loss_percent
        )
        return self._shaping

    def _root_qdisc(self) -> dict[str, Any] | None:
        for qdisc in _json(["tc", "-s", "-j", "qdisc", "show", "dev", self.host_ifname]):
            if qdisc.get("root"):
                return dict(qdisc)
        return None

    def _remove_qdisc(self) -> None:
        qdisc = self._root_qdisc()
        if qdisc is not None and qdisc.get("kind") == "tbf":
            _run(["tc", "qdisc", "del", "dev", self.host_ifname, "root"])

    # ----- outage -----

    def down(self) -> None:
        """Cut the link: the host side goes down (the data centre's side loses its carrier)."""
        _run(["ip", "link", "set", self.host_ifname, "down"])

    def restore(self, timeout: float = 2.0) -> None:
        """Bring the link back, with whatever the kernel dropped with it: the host's route to the data
        centre (the kernel puts it back with the address), the namespace's default route (kept, marked
        linkdown, while down) and the qdisc (kept across down and up); each is checked and re-added."""
        h = self.host_ifname
        _run(["ip", "link", "set", h, "up"])
        if not _json(["ip", "-j", "-4", "route", "show", str(self.network), "dev", h]):
            _run(["ip", "route", "replace", str(self.network), "dev", h, "src", self.host_address])
        if not _json(["ip", "-n", self.netns, "-j", "-4", "route", "show", "default"]):
            _run(["ip", "-n", self.netns, "route", "replace", "default", "via", self.host_address])
        shaping = self._shaping
        if shaping is not None and shaping.rate_bit is not None:
            qdisc = self._root_qdisc()
            if qdisc is None or qdisc.get("kind") != "tbf":
                self.shape(shaping.rate_bit, loss_percent=shaping.loss_percent)
        deadline = time.monotonic() + timeout
        while _json(["ip", "-j", "link", "show", "dev", h])[0].get("operstate") != "UP":
            if time.monotonic() > deadline:
                raise WanError(f"WAN link {h}: not up {timeout:.0f} s after restore")
            time.sleep(0.05)

    # ----- counters -----

    def counters(self) -> WanCounters:
        start = time.monotonic()
        host = _nft_counters([], self.prefix)
        dc = _nft_counters(self.exec_argv([]), self.prefix)
        qdisc = self._root_qdisc() or {}
        if qdisc.get("kind") != "tbf":
            qdisc = {}
        link = _json(["ip", "-s", "-j", "link", "show", "dev", self.host_ifname])[0]
        tx = link.get("stats64", {}).get("tx", {})
        now = (start + time.monotonic()) / 2  # the readings take a few ms: the middle of them
        return WanCounters(
            at=now,
            offered_packets=host.get("offered", (0, 0))[0],
            offered_bytes=host.get("offered", (0, 0))[1],
            qdisc_bytes=int(qdisc.get("bytes", 0)),
            qdisc_packets=int(qdisc.get("packets", 0)),
            qdisc_drops=int(qdisc.get("drops", 0)),
            qdisc_overlimits=int(qdisc.get("overlimits", 0)),
            qdisc_backlog_bytes=int(qdisc.get("backlog", 0)),
            sent_bytes=int(tx.get("bytes", 0)),
            sent_packets=int(tx.get("packets", 0)),
            arrived_packets=dc.get("arrived", (0, 0))[0],
            arrived_bytes=dc.get("arrived", (0, 0))[1],
            lost_packets=dc.get("lost", (0, 0))[0],
            lost_bytes=dc.get("lost", (0, 0))[1],
            blocked_packets=host.get("blocked", (0, 0))[0],
        )
