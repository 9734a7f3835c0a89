"""The one factory for Redis clients. Every part of the project (elector,
scheduler, jobs, CLI, health) builds its clients here.

Guarantees:
- one place decides the topology (plain URL, Sentinel or Cluster), timeouts,
  TLS and ACL credentials; impossible combinations are refused at load with
  one line naming the settings;
- each `make_client` call returns a client with its own connection pool, so
  the lease's renewals never queue behind job traffic;
- a Sentinel client asks the sentinels for the master on every new
  connection and drops connections to a demoted master (redis-py's
  `SentinelConnectionPool`), so it follows a failover; a Cluster client
  follows MOVED/ASK redirections and refreshes its slot map;
- the password (inline or from a mounted file) never appears in a repr, a log
  line or an error (`scheduler.errors.describe_redis_error`).

Does not guarantee: that a lease write survives a failover. That needs
`wait_replicas` > 0 (see docs/REDIS.md for the trade-off).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import Field, PrivateAttr, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode
from redis.asyncio import Redis
from redis.asyncio.cluster import ClusterNode, ClusterPubSub, RedisCluster
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel
from redis.backoff import EqualJitterBackoff, NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError

from .errors import note_command

__all__ = [
    "ClientPurpose",
    "RedisConnectionSettings",
    "NamingRedis",
    "NamingRedisCluster",
    "SentinelMasterClient",
    "least_privilege_acl",
    "make_client",
    "parse_host_ports",
]

ClientPurpose = Literal["lease", "jobs", "cli"]

#: Upper bound on connecting, whatever `redis_socket_timeout` says: a replica
#: that cannot reach Redis should say so quickly.
MAX_CONNECT_TIMEOUT_S = 5.0

_ENV = "LIGHTSCHED_"


def parse_host_ports(value: str) -> tuple[str, ...]:
    """`"a:26379, [::1]:26380"` -> `("a:26379", "[::1]:26380")`; ValueError names the bad entry."""
    out: list[str] = []
    for raw in value.split(","):
        item = raw.strip()
        if not item:
            continue
        _split_host_port(item)
        out.append(item)
    return tuple(out)


def _split_host_port(item: str) -> tuple[str, int]:
    host, sep, port_s = item.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port_s.isdigit() or not 0 < int(port_s) < 65536:
        raise ValueError(f"{item!r} is not host:port")
    return host, int(port_s)


class RedisConnectionSettings(BaseSettings):
    """How to reach Redis. Mixed into `scheduler.settings.Settings` (env prefix LIGHTSCHED_).

    Topology: `redis_sentinels` set -> Sentinel; `redis_cluster_nodes` set ->
    Cluster; neither -> the plain `redis_url`. Under Sentinel or Cluster the
    URL's host and port are not used, but its scheme (`rediss://` turns TLS
    on), user name, password and database still are.
    """

    redis_url: SecretStr = Field(
        SecretStr("redis://localhost:6379/0"),
        description="Redis URL: redis://, rediss:// (TLS) or unix://; a password in it is masked everywhere. "
        "Default redis://localhost:6379/0",
    )
    redis_sentinels: Annotated[tuple[str, ...], NoDecode] = Field(
        (),
        description="comma-separated host:port of the Sentinels; set to use Sentinel. Default: none",
    )
    redis_sentinel_master: str = Field(
        "", description="the master's name as the Sentinels know it (e.g. mymaster); required with sentinels"
    )
    redis_sentinel_password: SecretStr | None = Field(
        None, description="password of the Sentinels themselves (their requirepass); default none"
    )
    redis_cluster_nodes: Annotated[tuple[str, ...], NoDecode] = Field(
        (),
        description="comma-separated host:port of some Redis Cluster nodes to discover the rest from; "
        "set to use Cluster. Default: none",
    )
    redis_tls_ca_file: Path | None = Field(
        None, description="PEM file of the CA(s) that signed the server certificate; default: the system CAs"
    )
    redis_tls_cert_file: Path | None = Field(
        None, description="PEM client certificate, for servers that require one (tls-auth-clients); default none"
    )
    redis_tls_key_file: Path | None = Field(None, description="PEM private key of the client certificate")
    redis_tls_verify: bool = Field(
        True, description="verify the server certificate and host name; default true (false only for tests)"
    )
    redis_username: str = Field("", description="ACL user name; default: none (the `default` user)")
    redis_password: SecretStr | None = Field(None, description="ACL password; default none")
    redis_password_file: Path | None = Field(
        None,
        description="file holding the ACL password (a mounted secret), read once at load; "
        "trailing newline ignored. Default none",
    )
    wait_replicas: int = Field(0, ge=0, description="Redis replicas that must acknowledge each lease write (WAIT); 0: none")
    wait_timeout_ms: int = Field(500, gt=0, description="milliseconds to wait for those acknowledgements")
    redis_socket_timeout: float = Field(
        5.0,
        gt=0,
        description="seconds a Redis command may take before it counts as failed; must be below "
        "RENEW_DEADLINE - RETRY_PERIOD. Default 5, or (RENEW_DEADLINE - RETRY_PERIOD) / 2 when that is shorter",
    )

    _password_from_file: SecretStr | None = PrivateAttr(None)

    @field_validator("redis_sentinels", "redis_cluster_nodes", mode="before")
    @classmethod
    def _split_nodes(cls, value: Any) -> Any:
        if isinstance(value, str):
            return parse_host_ports(value)
        return value

    @field_validator("redis_sentinels", "redis_cluster_nodes")
    @classmethod
    def _check_nodes(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for item in value:
            _split_host_port(item)
        return value

    @model_validator(mode="after")
    def _check_connection(self) -> RedisConnectionSettings:
        url = self.redis_url.get_secret_value()
        try:
            parts = urlsplit(url)
            url_user, url_password = parts.username, parts.password
        except ValueError:
            return self  # the URL's own validator reports it
        scheme = parts.scheme
        if self.redis_sentinels and self.redis_cluster_nodes:
            raise ValueError(
                f"{_ENV}REDIS_SENTINELS and {_ENV}REDIS_CLUSTER_NODES are both set; choose one topology"
            )
        if self.redis_sentinels and not self.redis_sentinel_master.strip():
            raise ValueError(f"{_ENV}REDIS_SENTINELS is set but {_ENV}REDIS_SENTINEL_MASTER (the master's name) is not")
        if self.redis_sentinel_master and not self.redis_sentinels:
            raise ValueError(f"{_ENV}REDIS_SENTINEL_MASTER is set but {_ENV}REDIS_SENTINELS is empty")
        if self.redis_sentinel_password is not None and not self.redis_sentinels:
            raise ValueError(f"{_ENV}REDIS_SENTINEL_PASSWORD is set but {_ENV}REDIS_SENTINELS is empty")
        if (self.redis_sentinels or self.redis_cluster_nodes) and scheme == "unix":
            which = "REDIS_SENTINELS" if self.redis_sentinels else "REDIS_CLUSTER_NODES"
            raise ValueError(f"{_ENV}{which} needs TCP: {_ENV}REDIS_URL must not be unix://")
        tls_files = [
            n for n in ("redis_tls_ca_file", "redis_tls_cert_file", "redis_tls_key_file") if getattr(self, n) is not None
        ]
        if tls_files and not (self.redis_sentinels or self.redis_cluster_nodes) and scheme != "rediss":
            raise ValueError(
                f"{_ENV}{tls_files[0].upper()} is set but {_ENV}REDIS_URL is {scheme}://; use rediss:// for TLS"
            )
        if (self.redis_tls_cert_file is None) != (self.redis_tls_key_file is None):
            raise ValueError(f"{_ENV}REDIS_TLS_CERT_FILE and {_ENV}REDIS_TLS_KEY_FILE must be set together")
        for name in tls_files:
            path: Path = getattr(self, name)
            if not path.is_file():
                raise ValueError(f"{_ENV}{name.upper()}: no such file {str(path)!r}")
        if self.redis_password is not None and self.redis_password_file is not None:
            raise ValueError(f"{_ENV}REDIS_PASSWORD and {_ENV}REDIS_PASSWORD_FILE are both set; choose one")
        if url_password and (self.redis_password is not None or self.redis_password_file is not None):
            raise ValueError(f"{_ENV}REDIS_URL holds a password and {_ENV}REDIS_PASSWORD(_FILE) is set too; choose one")
        if url_user and self.redis_username:
            raise ValueError(f"{_ENV}REDIS_URL holds a user name and {_ENV}REDIS_USERNAME is set too; choose one")
        if self.redis_password_file is not None:
            self._password_from_file = _read_password_file(self.redis_password_file)
        if self.redis_username and self.password() is None and not url_password:
            raise ValueError(f"{_ENV}REDIS_USERNAME is set without {_ENV}REDIS_PASSWORD or {_ENV}REDIS_PASSWORD_FILE")
        return self

    # -- derived -------------------------------------------------------------

    @property
    def topology(self) -> Literal["url", "sentinel", "cluster"]:
        if self.redis_sentinels:
            return "sentinel"
        if self.redis_cluster_nodes:
            return "cluster"
        return "url"

    def password(self) -> SecretStr | None:
        """The ACL password from `redis_password` or the password file (not the URL's)."""
        return self.redis_password if self.redis_password is not None else self._password_from_file

    def uses_tls(self) -> bool:
        if urlsplit(self.redis_url.get_secret_value()).scheme == "rediss":
            return True
        return self.topology != "url" and any(
            p is not None for p in (self.redis_tls_ca_file, self.redis_tls_cert_file, self.redis_tls_key_file)
        )

    def secrets(self) -> list[str]:
        """Every secret value in these settings, for scrubbing messages."""
        found = [s.get_secret_value() for s in (self.password(), self.redis_sentinel_password) if s is not None]
        try:
            url_password = urlsplit(self.redis_url.get_secret_value()).password
        except ValueError:
            url_password = None
        if url_password:
            found.append(url_password)
        return [s for s in found if s]

    def endpoint(self) -> str:
        """Where we connect, for messages: no password, ever."""
        if self.topology == "sentinel":
            return f"master {self.redis_sentinel_master!r} via sentinels {','.join(self.redis_sentinels)}"
        if self.topology == "cluster":
            return f"cluster nodes {','.join(self.redis_cluster_nodes)}"
        parts = urlsplit(self.redis_url.get_secret_value())
        if parts.scheme == "unix":
            return f"unix:{parts.path}"
        return f"{parts.hostname}:{parts.port or 6379}"


def _read_password_file(path: Path) -> SecretStr:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ValueError(f"{_ENV}REDIS_PASSWORD_FILE: no such file {str(path)!r}") from None
    except (IsADirectoryError, PermissionError, UnicodeDecodeError) as exc:
        raise ValueError(f"{_ENV}REDIS_PASSWORD_FILE: cannot read {str(path)!r} ({type(exc).__name__})") from None
    secret = text.rstrip("\r\n")
    if not secret:
        raise ValueError(f"{_ENV}REDIS_PASSWORD_FILE: {str(path)!r} is empty")
    return SecretStr(secret)


class NamingRedis(Redis):
    """`Redis` whose errors remember the command and keys (not values) for `describe_redis_error`."""

    async def execute_command(self, *args: Any, **options: Any) -> Any:
        try:
            return await super().execute_command(*args, **options)
        except RedisError as exc:
            note_command(exc, args)
            raise


class _ClusterPubSub(ClusterPubSub):
    """redis-py's ClusterPubSub looks the channel's slot up before the client has
    loaded the slot map (a KeyError on a fresh client); load it first, and report
    a missing slot as a connection error the caller retries."""

    async def execute_command(self, *args: Any, **kwargs: Any) -> Any:
        await self.cluster.initialize()
        try:
            return await super().execute_command(*args, **kwargs)
        except KeyError as exc:
            raise RedisConnectionError(f"cluster slot map has no node for slot {exc}; retry") from None


class NamingRedisCluster(RedisCluster):
    """`RedisCluster` whose errors remember the command and keys, like `NamingRedis`.

    It also closes, on `aclose()`, the connections to nodes the client dropped
    from its map after a failover or a slot move: redis-py forgets them open.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._seen_nodes: dict[int, ClusterNode] = {}

    def _remember_nodes(self) -> None:
        for node in self.nodes_manager.nodes_cache.values():
            self._seen_nodes[id(node)] = node

    async def initialize(self, *args: Any, **kwargs: Any) -> RedisCluster:
        try:
            return await super().initialize(*args, **kwargs)
        finally:
            self._remember_nodes()

    async def aclose(self) -> None:
        self._remember_nodes()
        await super().aclose()
        for node in self._seen_nodes.values():
            try:
                await node.disconnect()
            except (RedisError, OSError):
                pass  # a dead node's socket; nothing left to close
        self._seen_nodes.clear()

    def pubsub(self, node: ClusterNode | None = None, host: str | None = None, port: int | None = None, **kwargs: Any) -> ClusterPubSub:
        return _ClusterPubSub(self, node=node, host=host, port=port, **kwargs)

    async def execute_command(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return await super().execute_command(*args, **kwargs)
        except RedisError as exc:
            note_command(exc, args)
            raise
        finally:
            self._remember_nodes()  # a MOVED may have added a node


class SentinelMasterClient(NamingRedis):
    """The Sentinel-managed master client; closing it closes its sentinel connections too."""

    async def aclose(self, close_connection_pool: bool | None = None) -> None:
        await super().aclose(close_connection_pool)
        manager = getattr(self.connection_pool, "sentinel_manager", None)
        if manager is not None:
            await manager.aclose()


def _retry(purpose: ClientPurpose) -> Retry:
    # The CLI reports the first failure at once. The lease re-sends once, at once
    # (a restart or failover leaves dead pooled connections); the elector owns
    # every other retry, on its own timer inside its deadlines. Jobs retry a
    # little longer. A re-send may follow a command that ran but whose reply was
    # lost: every script lightsched sends is idempotent for its caller
    # (tests/integration/test_safety.py), so that is harmless.
    if purpose == "cli":
        return Retry(NoBackoff(), 0)
    if purpose == "lease":
        return Retry(EqualJitterBackoff(cap=0.1, base=0.01), 1)
    return Retry(EqualJitterBackoff(cap=1.0, base=0.1), 3)


def _tls_kwargs(conn: RedisConnectionSettings) -> dict[str, Any]:
    kwargs: dict[str, Any] = {"ssl_cert_reqs": "required" if conn.redis_tls_verify else "none"}
    kwargs["ssl_check_hostname"] = conn.redis_tls_verify
    if conn.redis_tls_ca_file is not None:
        kwargs["ssl_ca_certs"] = str(conn.redis_tls_ca_file)
    if conn.redis_tls_cert_file is not None:
        kwargs["ssl_certfile"] = str(conn.redis_tls_cert_file)
        kwargs["ssl_keyfile"] = str(conn.redis_tls_key_file)
    return kwargs


try:  # redis-py >= 7: driver_info replaces the deprecated lib_name/lib_version
    from redis.driver_info import DriverInfo

    _NO_LIB_INFO: dict[str, Any] = {"driver_info": DriverInfo(name=None, lib_version=None)}
except ImportError:  # pragma: no cover - older redis-py
    _NO_LIB_INFO = {"lib_name": None, "lib_version": None}


def _common_kwargs(conn: RedisConnectionSettings, purpose: ClientPurpose) -> dict[str, Any]:
    kwargs: dict[str, Any] = {
        "socket_timeout": conn.redis_socket_timeout,
        "socket_connect_timeout": min(conn.redis_socket_timeout, MAX_CONNECT_TIMEOUT_S),
        "client_name": f"lightsched-{purpose}",
        "health_check_interval": 0,
        "retry": _retry(purpose),
        # No CLIENT SETINFO on connect: Redis < 7.2 does not know it, and a least-privilege
        # ACL user would log a denial for it on every connection (the client name suffices).
        **_NO_LIB_INFO,
    }
    if conn.redis_username:
        kwargs["username"] = conn.redis_username
    password = conn.password()
    if password is not None:
        kwargs["password"] = password.get_secret_value()
    return kwargs


def _url_credentials(conn: RedisConnectionSettings) -> dict[str, Any]:
    """User, password and db from the URL, for Sentinel and Cluster (its host is not used)."""
    from redis.asyncio.connection import parse_url

    opts = parse_url(conn.redis_url.get_secret_value())
    return {k: opts[k] for k in ("username", "password", "db") if k in opts}  # type: ignore[literal-required]


def make_client(conn: RedisConnectionSettings, purpose: ClientPurpose = "jobs") -> Redis | RedisCluster:
    """A new asyncio client with its own connection pool.

    `lease` clients are kept apart from `jobs` clients so renewals never queue
    behind job traffic; every call builds a fresh pool. The caller closes it
    (`await client.aclose()`).
    """
    kwargs = _common_kwargs(conn, purpose)
    tls = conn.uses_tls()
    if tls:
        kwargs.update(_tls_kwargs(conn))
    if conn.topology == "url":
        return NamingRedis.from_url(conn.redis_url.get_secret_value(), **kwargs)
    kwargs = {**_url_credentials(conn), **kwargs}
    if conn.topology == "cluster":
        kwargs.pop("db", None)  # Cluster has only database 0
        nodes = [ClusterNode(*_split_host_port(item)) for item in conn.redis_cluster_nodes]
        return NamingRedisCluster(startup_nodes=nodes, ssl=tls, **kwargs)
    sentinel_kwargs: dict[str, Any] = {
        "socket_timeout": kwargs["socket_timeout"],
        "socket_connect_timeout": kwargs["socket_connect_timeout"],
        "client_name": f"lightsched-{purpose}-sentinel",
        "retry": _retry("cli"),  # Sentinel() itself moves on to the next sentinel
    }
    if conn.redis_sentinel_password is not None:
        sentinel_kwargs["password"] = conn.redis_sentinel_password.get_secret_value()
    if tls:
        sentinel_kwargs.update({"ssl": True, **_tls_kwargs(conn)})
    sentinel = Sentinel(
        [_split_host_port(item) for item in conn.redis_sentinels],
        sentinel_kwargs=sentinel_kwargs,
        **kwargs,
        **({"ssl": True} if tls else {}),
    )
    return sentinel.master_for(conn.redis_sentinel_master, redis_class=SentinelMasterClient)


#: Commands the scheduler runs, directly or inside its Lua scripts (ACL checks
#: both). Keep in step with leader/, scheduler/ and jobs/: tests/integration/
#: test_acl.py runs the elector and fenced writes as a user with only these.
SCHEDULER_COMMANDS: tuple[str, ...] = (
    # connection upkeep; COMMAND and CLUSTER SLOTS/SHARDS/NODES for the Cluster client's map
    "ping", "hello", "auth", "client|setname", "select", "readonly", "command",
    "cluster|slots", "cluster|shards", "cluster|nodes", "cluster|myid",
    # the lease and the fenced writes are Lua scripts
    "eval", "evalsha", "script|load", "script|exists",
    # replication acknowledgement of lease writes (wait_replicas)
    "wait",
    # keys, used directly or inside the scripts
    "get", "set", "mset", "del", "unlink", "exists", "pexpire", "pttl", "ttl", "time", "type", "object|idletime",
    "hget", "hset", "hgetall", "hdel", "hmget", "hincrby",
    "sadd", "srem", "smembers",
    "lpush", "ltrim", "lrange", "llen",
    "xadd", "xrange", "xrevrange", "xlen", "xtrim", "xread",
    # clean-up job: SCAN lists key names (ACL key patterns do not filter its output)
    "scan",
    # system_health job reads INFO memory/clients/replication
    "info",
    # pub/sub: release and handoff notifications
    "publish", "subscribe", "unsubscribe",
)  # fmt: skip


def least_privilege_acl(
    prefix: str,
    username: str = "lightsched",
    *,
    extra_key_patterns: tuple[str, ...] = (),
) -> list[str]:
    """The `ACL SETUSER` arguments for the scheduler's user, without its password.

    `[username, "reset", "on", "~{prefix}:*", "&{prefix}:*", "-@all", "+get", ...]`:
    keys `~{prefix}:*` (the braces are literal: they are the Cluster hash tag),
    channels `&{prefix}:*`, and only `SCHEDULER_COMMANDS`. Add
    `extra_key_patterns` (e.g. `svc:sessions:*`) for keys outside the prefix
    that a clean-up job deletes. Append the password as `>secret` (or
    `#<sha256 hex>`): `ACL SETUSER *tokens, ">secret"`; in an ACL file write
    `user ` + the same tokens.
    """
    if not prefix or any(c in prefix for c in "{}: \t\n*?[]"):
        raise ValueError(f"prefix {prefix!r} must be non-empty, without braces, colons, spaces or glob characters")
    if not username or any(c.isspace() for c in username):
        raise ValueError(f"ACL user name {username!r} must be non-empty, without spaces")
    base = "{" + prefix + "}"
    # resetchannels: Redis 6.2's `reset` leaves the acl-pubsub-default (allchannels) in place.
    tokens = [username, "reset", "resetchannels", "on", f"~{base}:*"]
    tokens += [f"~{p}" for p in extra_key_patterns]
    tokens += [f"&{base}:*", "-@all"]
    tokens += [f"+{c}" for c in SCHEDULER_COMMANDS]
    return tokens
