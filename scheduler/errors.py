"""One-line causes for Redis failures, for the CLI, logs and the health endpoint.

Guarantees: `describe_redis_error` returns one line (no newline, no
traceback) that names the cause and where we tried to connect, and never
contains a password from the settings (inline, URL or password file) nor the
Sentinel password: they are scrubbed even if a server or library echoes one.

Does not guarantee: a precise cause for errors it does not recognise; those
are reported as their exception type and first message line.
"""

from __future__ import annotations

import re
import ssl
from typing import TYPE_CHECKING, Any

from redis import exceptions as rexc

if TYPE_CHECKING:
    from .connection import RedisConnectionSettings

__all__ = ["describe_redis_error", "failed_command", "note_command"]

#: Longest message we pass through from a server or library.
MAX_DETAIL_CHARS = 200

_DNS = re.compile(
    r"Name or service not known|nodename nor servname|getaddrinfo failed|Temporary failure in name resolution"
    r"|No address associated with hostname|Errno -[235]\b|Error -[235] "
)
_REFUSED = re.compile(r"Connection refused|Errno 111|Error 111 |Connect call failed|Errno 61\b|Error 61 ")
_TLS_VERIFY = re.compile(r"CERTIFICATE_VERIFY_FAILED|certificate verify failed|Hostname mismatch|IP address mismatch")
_TLS_OTHER = re.compile(r"SSL|TLS|WRONG_VERSION_NUMBER|record layer", re.IGNORECASE)


def failed_command(exc: BaseException) -> tuple[str, tuple[str, ...]] | None:
    """(command, keys) that `exc` came from, when the client recorded it (see `make_client`)."""
    return getattr(exc, "lightsched_command", None)


def _scrub(text: str, conn: RedisConnectionSettings | None) -> str:
    line = " ".join(text.split())
    if conn is not None:
        for secret in sorted(conn.secrets(), key=len, reverse=True):
            line = line.replace(secret, "***")
    if len(line) > MAX_DETAIL_CHARS:
        line = line[: MAX_DETAIL_CHARS - 3] + "..."
    return line


def _chain(exc: BaseException) -> list[BaseException]:
    out: list[BaseException] = []
    seen: set[int] = set()
    cur: BaseException | None = exc
    while cur is not None and id(cur) not in seen and len(out) < 8:
        out.append(cur)
        seen.add(id(cur))
        cur = cur.__cause__ or cur.__context__
    return out


def _where(conn: RedisConnectionSettings | None) -> str:
    return conn.endpoint() if conn is not None else "Redis"


def _who(conn: RedisConnectionSettings | None) -> str:
    user = conn.redis_username if conn is not None and conn.redis_username else ""
    if not user and conn is not None:
        from urllib.parse import urlsplit

        try:
            user = urlsplit(conn.redis_url.get_secret_value()).username or ""
        except ValueError:
            user = ""
    return f"user {user!r}" if user else "the default user"


def _noperm(exc: BaseException, conn: RedisConnectionSettings | None) -> str:
    msg = str(exc)
    cmd = failed_command(exc)
    what = ""
    if cmd is not None:
        name, keys = cmd
        what = f" ({name.upper()}" + (f" on key {', '.join(repr(k) for k in keys)}" if keys else "") + ")"
    m = re.search(r"run the '([^']+)' command", msg)
    if m:
        detail = f"may not run {m.group(1).upper()}{what}"
    elif "key" in msg:
        detail = f"may not access a key{what}"
    elif "channel" in msg:
        detail = f"may not use a pub/sub channel{what}"
    elif "script" in msg.lower():
        detail = f"a Lua script{what} ran a command this user may not run"
    else:
        detail = f"{_scrub(msg, conn)}{what}"
    return (
        f"missing Redis ACL permission at {_where(conn)}: {_who(conn)} {detail}; "
        "grant it (docs/REDIS.md, least_privilege_acl)"
    )


def _is_acl_denial(exc: BaseException) -> bool:
    if isinstance(exc, rexc.NoPermissionError):
        return True
    # Inside a Lua script Redis 7.0 reports a denied command as a plain ERR.
    return isinstance(exc, rexc.ResponseError) and "user executing the script can't run" in str(exc)


def describe_redis_error(exc: BaseException, conn: RedisConnectionSettings | None = None) -> str:
    """One line naming the cause of `exc` (a Redis/OS/timeout error) and where; never a password."""
    where = _where(conn)
    chain = _chain(exc)
    text = " | ".join(str(e) for e in chain)
    for e in chain:
        if _is_acl_denial(e):
            return _noperm(e, conn)
    if any(isinstance(e, rexc.AuthenticationWrongNumberOfArgsError) for e in chain) or re.search(
        r"NOAUTH|Authentication required|no password is set|without any password configured|HELLO must be called with the client already authenticated",
        text,
    ):
        return (
            f"Redis at {where} wants a password (NOAUTH) or has none set: "
            "check LIGHTSCHED_REDIS_PASSWORD / LIGHTSCHED_REDIS_PASSWORD_FILE"
        )
    if any(isinstance(e, rexc.AuthenticationError) for e in chain) or "WRONGPASS" in text or re.search(
        r"invalid username-password pair|invalid password", text
    ):
        return f"Redis rejected the credentials at {where}: wrong user name or password for {_who(conn)}, or the user is disabled"
    if any(isinstance(e, ssl.SSLCertVerificationError) for e in chain) or _TLS_VERIFY.search(text):
        reason = next((e.verify_message for e in chain if isinstance(e, ssl.SSLCertVerificationError)), None)
        why = f" ({reason})" if reason else ""
        return (
            f"TLS verification of the Redis server at {where} failed{why}: "
            "check LIGHTSCHED_REDIS_TLS_CA_FILE and the server certificate's host name"
        )
    master_not_found = next(
        (e for e in chain if type(e).__name__ == "MasterNotFoundError"), None
    )  # redis.asyncio.sentinel and redis.sentinel each define one
    if master_not_found is not None:
        name = conn.redis_sentinel_master if conn is not None else "?"
        sentinels = ",".join(conn.redis_sentinels) if conn is not None else "?"
        detail = str(master_not_found)
        if "WRONGPASS" in detail or "invalid username-password" in detail or "AuthenticationError" in detail:
            cause = "the sentinels rejected LIGHTSCHED_REDIS_SENTINEL_PASSWORD"
        elif "NOAUTH" in detail or "Authentication required" in detail:
            cause = "the sentinels want a password: set LIGHTSCHED_REDIS_SENTINEL_PASSWORD"
        elif "Error" in detail:
            cause = "no sentinel answered"
        else:
            cause = "no sentinel knows a healthy master by that name"
        return f"Sentinel master {name!r} not found via {sentinels}: {cause}"
    if any(isinstance(e, rexc.ClusterDownError) for e in chain) or "CLUSTERDOWN" in text:
        return f"Redis Cluster is down at {where}: {_scrub(str(exc), conn)}"
    if any(isinstance(e, rexc.SlotNotCoveredError) for e in chain):
        return f"Redis Cluster at {where} does not cover the key's hash slot (cluster down or resharding)"
    if any(isinstance(e, rexc.RedisClusterException) for e in chain) and "cannot be connected" in text:
        return f"no Redis Cluster node answered at {where}: check LIGHTSCHED_REDIS_CLUSTER_NODES"
    if any(isinstance(e, rexc.ReadOnlyError) for e in chain):
        return f"Redis at {where} is a read-only replica (a failover in progress, or the URL points at a replica)"
    if any(isinstance(e, rexc.BusyLoadingError) for e in chain):
        return f"Redis at {where} is loading its data set; retry shortly"
    if _DNS.search(text):
        return f"cannot resolve the Redis host of {where}: unknown host name"
    if _REFUSED.search(text) or any(isinstance(e, ConnectionRefusedError) for e in chain):
        return f"Redis refused the connection at {where}: nothing listens there (wrong port, or Redis is down)"
    if any(isinstance(e, (rexc.TimeoutError, TimeoutError)) for e in chain) or "Timeout" in text:
        timeout = f" within {conn.redis_socket_timeout:g}s" if conn is not None else ""
        return f"Redis at {where} did not answer{timeout} (timeout: host unreachable, firewalled, or overloaded)"
    if any(isinstance(e, ssl.SSLError) for e in chain) or _TLS_OTHER.search(text):
        return f"TLS handshake with Redis at {where} failed: {_scrub(text, conn)} (TLS on one side only?)"
    if any(isinstance(e, rexc.ConnectionError | OSError) for e in chain):
        return f"lost or could not open the connection to Redis at {where}: {_scrub(str(exc), conn)}"
    return f"Redis error at {where}: {type(exc).__name__}: {_scrub(str(exc), conn)}"


def _command_keys(args: tuple[Any, ...]) -> tuple[str, tuple[str, ...]]:
    """The command name and the keys worth naming in an error; never values."""

    def s(v: Any) -> str:
        return v.decode(errors="replace") if isinstance(v, bytes) else str(v)

    if not args:
        return "", ()
    name = s(args[0]).upper()
    if name in ("EVAL", "EVALSHA", "FCALL", "FCALL_RO") and len(args) >= 3:
        try:
            n = int(args[2])
        except ValueError:
            n = 0
        return name, tuple(s(k) for k in args[3 : 3 + n])
    if name in ("PUBLISH", "SPUBLISH", "SUBSCRIBE", "SSUBSCRIBE") and len(args) >= 2:
        return name, (s(args[1]),)
    if " " in name:  # "CLIENT SETNAME" style, no keys to name
        return name, ()
    if len(args) >= 2 and name not in ("AUTH", "HELLO", "PING", "SELECT", "WAIT", "INFO", "TIME", "SCAN"):
        return name, (s(args[1]),)
    return name, ()


def note_command(exc: BaseException, args: tuple[Any, ...]) -> None:
    """Attach (command, keys) to `exc` for `describe_redis_error`; values are never kept."""
    if getattr(exc, "lightsched_command", None) is None:
        try:
            exc.lightsched_command = _command_keys(args)  # type: ignore[attr-defined]
        except Exception:  # never let error annotation hide the real error
            pass
