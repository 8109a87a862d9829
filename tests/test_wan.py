"""The simulated WAN (pantau_dev.wan) with real namespaces, veths, tbf and nft, and the processes that run in
its data centre (the delay relay, the webhook receiver). Needs root and nftables; not the local stack."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from pantau.ingest.events import DetectionEvent, TrackEvent, WebhookSink
from pantau_dev.faultproxy import FaultProxy, ModeRequest
from pantau_dev.procs import ProcessTable
from pantau_dev.receiver import EventReceiver, ReceiverProcess
from pantau_dev.wan import Wan, WanCounters, WanError, forwarding_problems, tbf_parameters

needs_root = pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("nft") is None or shutil.which("tc") is None,
    reason="needs root, nft (Debian package nftables) and tc",
)

SINK_PORT = 5001  # in a namespace of its own: always free
# A server in the data centre that reads one connection to its end and says how much came and when.
SINK = """
import json, socket, sys, time
server = socket.socket()
server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
server.bind((sys.argv[1], int(sys.argv[2])))
server.listen(1)
print("ready", flush=True)
conn, _ = server.accept()
total, first, last = 0, None, None
while data := conn.recv(1 << 16):
    last = time.monotonic()
    first = first or last
    total += len(data)
print(json.dumps({"bytes": total, "first": first, "last": last}), flush=True)
"""


def leftovers(prefix: str) -> list[str]:
    """What of a WAN named `prefix` this machine still has."""
    found = []
    netns = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True).stdout
    if any(line.split()[0] == f"{prefix}-dc" for line in netns.splitlines() if line.strip()):
        found.append(f"netns {prefix}-dc")
    found += [
        f"link {name}" for name in (f"{prefix}h", f"{prefix}d") if Path("/sys/class/net", name).exists()
    ]
    if Path("/etc/netns", f"{prefix}-dc").exists():
        found.append(f"/etc/netns/{prefix}-dc")
    tables = subprocess.run(["nft", "list", "tables"], capture_output=True, text=True, check=True).stdout
    if f"table inet {prefix}" in tables.splitlines():
        found.append(f"nft table inet {prefix}")
    return found


@pytest.fixture
def prefix(request: pytest.FixtureRequest) -> Iterator[str]:
    """A prefix of this test's own (the same on each run, so a crashed run's leftovers are found)."""
    name = "tw" + hashlib.sha256(request.node.nodeid.encode()).hexdigest()[:6]
    yield name
    Wan.cleanup(name)


@pytest.fixture
def network(prefix: str) -> str:
    """A /30 of this test's own in 10.250.78.0/24: not the default one, which a benchmark may be using."""
    return f"10.250.78.{int(prefix[2:], 16) % 64 * 4}/30"


@pytest.fixture
def wan(prefix: str, network: str) -> Iterator[Wan]:
    with Wan(prefix, network=network) as link:
        yield link
    assert leftovers(prefix) == []


class Transfer:
    """A bulk TCP transfer from this host to a sink in the data centre, in a thread."""

    def __init__(self, wan: Wan) -> None:
        self.sink = subprocess.Popen(
            wan.exec_argv([sys.executable, "-c", SINK, wan.dc_address, str(SINK_PORT)]),
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.sink.stdout is not None
        assert self.sink.stdout.readline().strip() == "ready"
        self.sock = socket.create_connection((wan.dc_address, SINK_PORT), timeout=10)
        self.sent = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._send, daemon=True)
        self._thread.start()

    def _send(self) -> None:
        chunk = b"x" * 65536
        while not self._stop.is_set():
            self.sent += self.sock.send(chunk)

    def finish(self) -> dict[str, Any]:
        """Stop sending, let the queue drain, and return the sink's figures."""
        self._stop.set()
        self._thread.join(timeout=15)
        self.sock.shutdown(socket.SHUT_WR)
        assert self.sink.stdout is not None
        result: dict[str, Any] = json.loads(self.sink.stdout.readline())
        self.close()
        return result

    def close(self) -> None:
        self._stop.set()
        self.sock.close()
        if self.sink.poll() is None:
            self.sink.terminate()
        self.sink.wait(timeout=10)
        if self.sink.stdout is not None:
            self.sink.stdout.close()


# ----- pure parts: no root needed -----


def test_tbf_parameters_burst_10ms_queue_250ms_with_floors() -> None:
    assert tbf_parameters(2_000_000) == (3028, 62_500)  # burst: two frames; queue: 250 ms
    assert tbf_parameters(256_000) == (3028, 15_140)  # queue: ten frames
    assert tbf_parameters(100_000_000) == (125_000, 3_125_000)  # 10 ms, 250 ms


def test_counters_since_differences_all_but_the_backlog() -> None:
    zero = dict.fromkeys(WanCounters.model_fields, 0)
    earlier = WanCounters(**{**zero, "at": 10.0, "qdisc_bytes": 1000, "qdisc_backlog_bytes": 500})
    later = WanCounters(**{**zero, "at": 12.0, "qdisc_bytes": 501_000, "qdisc_backlog_bytes": 300})
    delta = later.since(earlier)
    assert (delta.at, delta.qdisc_bytes, delta.qdisc_backlog_bytes) == (2.0, 500_000, 300)
    assert delta.rate_bit() == 2_000_000


@pytest.mark.parametrize("bad", ["", "Pwan", "1wan", "pwan-x", "averylongprefix"])
def test_prefix_must_make_valid_names(bad: str) -> None:
    with pytest.raises(ValueError, match="prefix"):
        Wan(bad)


# ----- the real thing -----


@needs_root
def test_up_and_close_leave_nothing_behind(prefix: str) -> None:
    wan = Wan(prefix, network="10.250.79.8/30")
    with wan:
        assert (wan.host_address, wan.dc_address) == ("10.250.79.9", "10.250.79.10")
        assert sorted(leftovers(prefix)) == [
            f"/etc/netns/{prefix}-dc",
            f"link {prefix}h",
            f"netns {prefix}-dc",
            f"nft table inet {prefix}",
        ]
        routes = subprocess.run(
            wan.exec_argv(["ip", "route", "show", "default"]), capture_output=True, text=True, check=True
        ).stdout
        assert f"via {wan.host_address}" in routes
        with pytest.raises(WanError, match="overlaps"):
            Wan(prefix[:-1] + "x", network="10.250.79.8/29").up()  # refused: ours is in it
    assert leftovers(prefix) == []
    assert leftovers(prefix[:-1] + "x") == []


@needs_root
def test_cleanup_after_a_crash_removes_everything_and_stops_processes(prefix: str, network: str) -> None:
    Wan(prefix, network).up()  # and never closed: the test process "crashed"
    sleeper = subprocess.Popen(Wan(prefix, network).exec_argv(["sleep", "600"]))
    try:
        with Wan(prefix, network) as again:  # up() clears the leftovers first
            assert sleeper.wait(timeout=10) is not None
            assert again.counters().offered_bytes == 0
        Wan(prefix, network).up()
        Wan.cleanup(prefix)
        Wan.cleanup(prefix)  # idempotent
        assert leftovers(prefix) == []
    finally:
        if sleeper.poll() is None:
            sleeper.kill()
        sleeper.wait()


@needs_root
def test_forwarding_problems_name_ip_forward_when_off() -> None:
    forwarding = Path("/proc/sys/net/ipv4/ip_forward").read_text().strip() == "1"
    assert any("ip_forward" in p for p in forwarding_problems()) != forwarding


@needs_root
def test_shaped_transfer_moves_the_rate_and_counts_the_offered_load(wan: Wan) -> None:
    rate = 2_000_000
    shaping = wan.shape(rate)
    assert (shaping.burst_bytes, shaping.limit_bytes) == (3028, 62_500)
    start = wan.counters()
    transfer = Transfer(wan)
    try:
        time.sleep(2.0)  # slow start done, queue full: steady state
        window_start = wan.counters()
        time.sleep(5.0)
        window = wan.counters().since(window_start)
        result = transfer.finish()
    finally:
        transfer.close()
    total = wan.counters().since(start)
    wire = window.rate_bit("qdisc_bytes")
    goodput = result["bytes"] * 8 / (result["last"] - result["first"])
    print(
        f"\n2 Mbit/s: wire {wire / 1e6:.3f} Mbit/s over {window.at:.1f} s, "
        f"goodput {goodput / 1e6:.3f} Mbit/s; "
        f"offered {total.offered_bytes} B in {total.offered_packets} buffers, tbf sent {total.qdisc_bytes} B "
        f"in {total.qdisc_packets} frames, dropped {total.qdisc_drops}, overlimits {total.qdisc_overlimits}, "
        f"received {result['bytes']} B"
    )
    assert rate * 0.9 <= wire <= rate * 1.1
    assert rate * 0.9 <= goodput <= rate * 1.1  # TCP payload: ~95.6 % of the frames' bytes
    assert result["bytes"] == transfer.sent
    # The offered load is counted before the shaper: headers, retransmissions and what the queue dropped.
    assert total.offered_bytes >= result["bytes"]
    assert total.arrived_bytes >= result["bytes"]
    assert total.qdisc_overlimits > 0
    assert total.lost_packets == 0


@needs_root
def test_loss_drops_about_the_asked_share_after_the_shaper(wan: Wan) -> None:
    wan.shape(4_000_000, loss_percent=2.0)
    start = wan.counters()
    transfer = Transfer(wan)
    try:
        time.sleep(5.0)
        result = transfer.finish()
    finally:
        transfer.close()
    total = wan.counters().since(start)
    share = total.lost_packets / total.arrived_packets
    goodput = result["bytes"] * 8 / (result["last"] - result["first"])
    print(
        f"\nloss 2 % at 4 Mbit/s: lost {total.lost_packets} of {total.arrived_packets} arrived buffers "
        f"({share:.2%}), {total.lost_bytes} of {total.arrived_bytes} B; offered {total.offered_bytes} B, "
        f"received {result['bytes']} B ({goodput / 1e6:.2f} Mbit/s)"
    )
    assert 0.005 <= share <= 0.05
    assert result["bytes"] == transfer.sent  # TCP made up for it
    assert total.offered_bytes > result["bytes"]  # headers and retransmissions included
    wan.shape(None)
    assert wan.shaping is not None
    assert (wan.shaping.rate_bit, wan.shaping.loss_percent) == (None, 0.0)
    qdiscs = subprocess.run(["tc", "qdisc", "show", "dev", wan.host_ifname], capture_output=True, text=True)
    assert "tbf" not in qdiscs.stdout


@needs_root
def test_relay_in_the_data_centre_adds_twice_its_delay(wan: Wan, table: ProcessTable) -> None:
    delay_ms = 150
    receiver = ReceiverProcess(table, f"{wan.prefix}-receiver", host=wan.dc_address, netns=wan.netns)
    relay = FaultProxy(
        table,
        f"{wan.prefix}-relay",
        wan.dc_address,
        receiver.port,
        listen_host=wan.dc_address,
        netns=wan.netns,
        initial=ModeRequest(mode="delay", delay_ms=delay_ms),
    )
    with receiver, relay:
        assert relay.mode().delay_ms == delay_ms

        def round_trip(base: str) -> float:
            with httpx.Client(base_url=base, timeout=10) as client:
                client.get("/healthz").raise_for_status()  # connected: only the request is timed
                start = time.monotonic()
                client.get("/healthz").raise_for_status()
                return time.monotonic() - start

        direct = min(round_trip(receiver.base_url) for _ in range(3))
        relayed = min(round_trip(f"http://{relay.address}") for _ in range(3))
    print(
        f"\nrelay delay {delay_ms} ms: round trip {direct * 1000:.1f} ms direct, "
        f"{relayed * 1000:.1f} ms relayed"
    )
    assert relayed - direct >= 2 * delay_ms / 1000


@needs_root
def test_outage_cuts_the_link_and_restore_brings_it_back(wan: Wan, table: ProcessTable) -> None:
    wan.shape(2_000_000)
    with ReceiverProcess(table, f"{wan.prefix}-receiver", host=wan.dc_address, netns=wan.netns) as receiver:
        address = (wan.dc_address, receiver.port)
        socket.create_connection(address, timeout=2).close()
        blocked = wan.counters().blocked_packets
        wan.down()
        start = time.monotonic()
        with pytest.raises(TimeoutError):  # the SYNs vanish, as on a cut line
            socket.create_connection(address, timeout=1.0).close()
        assert time.monotonic() - start <= 1.5
        assert wan.counters().blocked_packets > blocked  # dropped here, not sent off the machine
        wan.restore()
        restored = time.monotonic()
        while True:
            try:
                socket.create_connection(address, timeout=0.5).close()
                break
            except OSError:
                assert time.monotonic() - restored < 2.0, "the data centre is not reachable 2 s after restore"
                time.sleep(0.05)
        print(f"\noutage: reachable {time.monotonic() - restored:.3f} s after restore")
        assert receiver.summary().requests == 0
    qdiscs = subprocess.run(["tc", "qdisc", "show", "dev", wan.host_ifname], capture_output=True, text=True)
    assert "tbf" in qdiscs.stdout
    assert "rate 2Mbit" in qdiscs.stdout


def _event(seq: int) -> DetectionEvent:
    return DetectionEvent(
        camera="kota/simpang-lima",
        site="bengkulu-kota",
        pod="pool-bengkulu-kota-0",
        timestamp=datetime(2024, 5, 1, 3, 4, 5, tzinfo=UTC),
        frame_id=f"0b7c-uid:s1:{seq}",
        traceparent=None,
    )


@needs_root
async def test_receiver_process_in_the_data_centre_counts_duplicates_by_key(
    wan: Wan, table: ProcessTable
) -> None:
    track = TrackEvent(
        type="zone_entered",
        camera="kota/simpang-lima",
        site="bengkulu-kota",
        pod="pool-bengkulu-kota-0",
        timestamp=datetime(2024, 5, 1, 3, 4, 5, tzinfo=UTC),
        frame_id="0b7c-uid:s1:3",
        track_id=7,
        class_name="person",
        zone="crossing",
        traceparent=None,
    )
    wan.shape(2_000_000)
    with ReceiverProcess(table, f"{wan.prefix}-receiver", host=wan.dc_address, netns=wan.netns) as receiver:
        sink = WebhookSink(receiver.url, batch_size=10, linger=0.01)
        for seq in range(20):
            await sink.publish(_event(seq))
        await sink.publish(track)
        await sink.aclose(grace=10)
        assert (sink.stats.delivered, sink.stats.dropped) == (21, 0)
        # Deliveries again (at least once): the same keys, answered 200 all the same.
        again = "[" + ",".join([*(_event(seq).to_json() for seq in range(5)), track.to_json()]) + "]"
        async with httpx.AsyncClient(timeout=10) as client:
            response = await client.post(receiver.url, content=again)
            assert response.status_code == 200
            assert (await client.post(receiver.url, content=b'[{"no": "key"}]')).status_code == 400
            assert (await client.post(receiver.url, content=b'{"not": "a list"}')).status_code == 400
        summary = receiver.summary()
        assert (summary.received, summary.unique, summary.duplicates) == (27, 21, 6)
        assert summary.requests == 4  # 3 batches from the sink (10, 10, 1) and ours
        deliveries = receiver.deliveries()
        assert [d.key for d in deliveries[:3]] == ["0b7c-uid:s1:0", "0b7c-uid:s1:1", "0b7c-uid:s1:2"]
        assert deliveries[20].key == track.idempotency_key == "0b7c-uid:s1:3/zone_entered/7/crossing"
        assert deliveries[0].body == json.loads(_event(0).to_json())
        assert all(time.time() - 60 < d.arrived_at <= time.time() for d in deliveries)
        assert [d.key for d in receiver.deliveries(offset=25)] == ["0b7c-uid:s1:4", track.idempotency_key]


def test_event_receiver_in_process_keeps_its_lists_and_answers_the_same_api() -> None:
    with EventReceiver("127.0.0.1") as receiver:
        body = "[" + ",".join(_event(seq).to_json() for seq in (1, 2, 1)) + "]"
        response = httpx.post(receiver.url, content=body, headers={"Authorization": "Bearer t"}, timeout=5)
        assert response.status_code == 200
        assert [e["frame_id"] for e in receiver.received] == [
            "0b7c-uid:s1:1",
            "0b7c-uid:s1:2",
            "0b7c-uid:s1:1",
        ]
        assert len(receiver.arrivals) == 3
        assert receiver.authorizations == ["Bearer t"]
        base = receiver.url.removesuffix("/events")
        summary = httpx.get(f"{base}/summary", timeout=5).json()
        assert summary == {"requests": 1, "received": 3, "unique": 2, "duplicates": 1}
        assert [d["key"] for d in httpx.get(f"{base}/received?offset=1", timeout=5).json()] == [
            "0b7c-uid:s1:2",
            "0b7c-uid:s1:1",
        ]
