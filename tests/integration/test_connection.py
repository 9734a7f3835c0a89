"""Connection settings and the client factory: combinations refused at load
with one line naming the settings; plain, Sentinel and Cluster clients built
from the same settings; bad connection input reported in one line without
the password (unknown host, refused port, wrong password, password file).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from redis.asyncio.cluster import RedisCluster

from scheduler.connection import NamingRedis, SentinelMasterClient, least_privilege_acl, make_client
from scheduler.devredis import free_port
from scheduler.errors import describe_redis_error
from scheduler.settings import SettingsError, load_settings
from tests.support.redis_servers import ServerLike

pytestmark = pytest.mark.anyio

SECRET = "pa55-w0rd-xyz"


@pytest.mark.parametrize(
    ("overrides", "names"),
    [
        ({"redis_sentinels": "a:26379"}, ["LIGHTSCHED_REDIS_SENTINELS", "LIGHTSCHED_REDIS_SENTINEL_MASTER"]),
        ({"redis_sentinels": "a:1", "redis_sentinel_master": "m", "redis_cluster_nodes": "b:2"},
         ["LIGHTSCHED_REDIS_SENTINELS", "LIGHTSCHED_REDIS_CLUSTER_NODES"]),
        ({"redis_sentinel_master": "m"}, ["LIGHTSCHED_REDIS_SENTINEL_MASTER", "LIGHTSCHED_REDIS_SENTINELS"]),
        ({"redis_sentinels": "a:notaport", "redis_sentinel_master": "m"}, ["LIGHTSCHED_REDIS_SENTINELS", "a:notaport"]),
        ({"redis_cluster_nodes": "hostonly"}, ["LIGHTSCHED_REDIS_CLUSTER_NODES", "hostonly"]),
        ({"redis_password_file": "/nonexistent/redis-pass"}, ["LIGHTSCHED_REDIS_PASSWORD_FILE", "/nonexistent/redis-pass"]),
        ({"redis_password": SECRET, "redis_password_file": "/x"}, ["LIGHTSCHED_REDIS_PASSWORD", "LIGHTSCHED_REDIS_PASSWORD_FILE"]),
        ({"redis_url": f"redis://u:{SECRET}@h:1/0", "redis_password": "p"}, ["LIGHTSCHED_REDIS_URL", "LIGHTSCHED_REDIS_PASSWORD"]),
        ({"redis_tls_ca_file": "/nonexistent/ca.pem"}, ["LIGHTSCHED_REDIS_TLS_CA_FILE", "rediss://"]),
        ({"redis_url": "rediss://h:1/0", "redis_tls_ca_file": "/nonexistent/ca.pem"}, ["LIGHTSCHED_REDIS_TLS_CA_FILE", "no such file"]),
        ({"redis_url": "rediss://h:1/0", "redis_tls_cert_file": __file__}, ["LIGHTSCHED_REDIS_TLS_CERT_FILE", "LIGHTSCHED_REDIS_TLS_KEY_FILE"]),
        ({"redis_username": "bob"}, ["LIGHTSCHED_REDIS_USERNAME", "LIGHTSCHED_REDIS_PASSWORD"]),
        ({"redis_cluster_nodes": "a:1", "redis_url": "unix:///tmp/r.sock"}, ["LIGHTSCHED_REDIS_CLUSTER_NODES", "unix://"]),
    ],
)  # fmt: skip
def test_impossible_combinations_are_one_line(overrides: dict[str, str], names: list[str]) -> None:
    with pytest.raises(SettingsError) as info:
        load_settings(**overrides)
    msg = str(info.value)
    assert "\n" not in msg and SECRET not in msg
    for name in names:
        assert name in msg, msg


def test_password_file_is_read_at_load_and_never_shown(tmp_path: Path) -> None:
    secret_file = tmp_path / "password"
    secret_file.write_text(SECRET + "\n")
    s = load_settings(redis_username="lightsched", redis_password_file=str(secret_file))
    assert s.password() is not None and s.password().get_secret_value() == SECRET  # type: ignore[union-attr]
    assert SECRET not in repr(s) and SECRET not in str(s) and SECRET not in s.model_dump_json()
    empty = tmp_path / "empty"
    empty.write_text("\n")
    with pytest.raises(SettingsError, match="LIGHTSCHED_REDIS_PASSWORD_FILE: .* is empty"):
        load_settings(redis_password_file=str(empty))


def test_env_lists_are_split(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LIGHTSCHED_REDIS_SENTINELS", "s1:26379, s2:26380 ,[::1]:26381")
    monkeypatch.setenv("LIGHTSCHED_REDIS_SENTINEL_MASTER", "mymaster")
    monkeypatch.setenv("LIGHTSCHED_REDIS_SENTINEL_PASSWORD", SECRET)
    s = load_settings()
    assert s.redis_sentinels == ("s1:26379", "s2:26380", "[::1]:26381")
    assert s.topology == "sentinel" and SECRET not in repr(s)


async def test_factory_builds_each_topology() -> None:
    plain = make_client(load_settings(redis_url="redis://127.0.0.1:1/0"), "jobs")
    sentinel = make_client(load_settings(redis_sentinels="127.0.0.1:1", redis_sentinel_master="m"), "lease")
    cluster = make_client(load_settings(redis_cluster_nodes="127.0.0.1:1,127.0.0.1:2"), "jobs")
    try:
        assert isinstance(plain, NamingRedis)
        assert isinstance(sentinel, SentinelMasterClient)
        assert isinstance(cluster, RedisCluster)
        again = make_client(load_settings(redis_url="redis://127.0.0.1:1/0"), "jobs")
        assert again.connection_pool is not plain.connection_pool  # a separate pool per call
        await again.aclose()
    finally:
        for c in (plain, sentinel, cluster):
            await c.aclose()


async def _fail(settings_kwargs: dict[str, object]) -> tuple[str, BaseException]:
    settings = load_settings(redis_socket_timeout=1.0, **settings_kwargs)
    client = make_client(settings, "cli")
    try:
        with pytest.raises(Exception) as info:
            await client.ping()
    finally:
        await client.aclose()
    line = describe_redis_error(info.value, settings)
    assert "\n" not in line and "Traceback" not in line
    return line, info.value


async def test_unknown_host_is_one_line() -> None:
    line, _ = await _fail({"redis_url": f"redis://:{SECRET}@no-such-host.invalid:6390/0"})
    assert line.startswith("cannot resolve the Redis host of no-such-host.invalid:6390"), line
    assert SECRET not in line


async def test_refused_port_is_one_line() -> None:
    port = free_port()
    line, _ = await _fail({"redis_url": f"redis://127.0.0.1:{port}/0", "redis_password": SECRET})
    assert line.startswith(f"Redis refused the connection at 127.0.0.1:{port}"), line
    assert SECRET not in line


async def test_wrong_password_is_one_line(redis_server: ServerLike) -> None:
    import redis

    with redis.Redis.from_url(redis_server.url) as admin:
        admin.config_set("requirepass", "the-real-one")
    try:
        line, _ = await _fail({"redis_url": redis_server.url, "redis_password": SECRET})
        assert "rejected the credentials" in line and SECRET not in line and "the-real-one" not in line, line
        line, _ = await _fail({"redis_url": redis_server.url})
        assert "NOAUTH" in line or "wants a password" in line, line
    finally:
        with redis.Redis.from_url(redis_server.url, password="the-real-one") as admin:
            admin.config_set("requirepass", "")


async def test_timeout_is_one_line(redis_server: ServerLike) -> None:
    redis_server.pause()
    try:
        line, _ = await _fail({"redis_url": redis_server.url})
    finally:
        redis_server.resume()
    assert "did not answer within 1s" in line, line


async def test_works_with_password_from_file(redis_server: ServerLike, tmp_path: Path) -> None:
    import redis

    prefix = "pwfile"
    with redis.Redis.from_url(redis_server.url) as admin:
        admin.execute_command("ACL", "SETUSER", *least_privilege_acl(prefix, "filed"), f">{SECRET}")
    (tmp_path / "pw").write_text(SECRET)
    settings = load_settings(redis_url=redis_server.url, redis_username="filed", redis_password_file=str(tmp_path / "pw"))
    client = make_client(settings, "jobs")
    try:
        assert await client.set("{pwfile}:k", "v")
    finally:
        await client.aclose()
