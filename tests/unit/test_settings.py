import pytest

from scheduler.settings import Settings, SettingsError, load_settings, mask_url


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    import os

    for key in list(os.environ):
        if key.startswith("LIGHTSCHED_"):
            monkeypatch.delenv(key)
    monkeypatch.chdir(tmp_path)  # no stray .env


def test_defaults_follow_client_go() -> None:
    s = load_settings()
    assert (s.lease_ttl, s.renew_deadline, s.retry_period) == (15.0, 10.0, 2.0)
    assert s.key_prefix == "lightsched" and s.enabled
    assert s.timings.ttl_ms == 15000


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"LIGHTSCHED_LEASE_TTL": "5", "LIGHTSCHED_RENEW_DEADLINE": "5"}, "LIGHTSCHED_LEASE_TTL (5.0s) must be greater than LIGHTSCHED_RENEW_DEADLINE (5.0s)"),
        ({"LIGHTSCHED_RETRY_PERIOD": "10"}, "LIGHTSCHED_RENEW_DEADLINE (10.0s) must be greater than LIGHTSCHED_RETRY_PERIOD (10.0s)"),
        ({"LIGHTSCHED_RETRY_PERIOD": "0"}, "LIGHTSCHED_RETRY_PERIOD must be a positive"),
        ({"LIGHTSCHED_LEASE_TTL": "-3"}, "LIGHTSCHED_LEASE_TTL must be a positive"),
        ({"LIGHTSCHED_REDIS_URL": "http://x"}, "LIGHTSCHED_REDIS_URL: scheme must be one of"),
        ({"LIGHTSCHED_REDIS_URL": "redis://:pw@host:notaport"}, "LIGHTSCHED_REDIS_URL: "),
        ({"LIGHTSCHED_KEY_PREFIX": "a{b}"}, "LIGHTSCHED_KEY_PREFIX: must be non-empty"),
        ({"LIGHTSCHED_MISFIRE_GRACE_TIME": "3"}, "LIGHTSCHED_MISFIRE_GRACE_TIME (3.0s) must be at least"),
        ({"LIGHTSCHED_JOB_SCHEDULES": "{nope"}, "LIGHTSCHED_JOB_SCHEDULES: "),
        ({"LIGHTSCHED_HTTP_PORT": "70000"}, "LIGHTSCHED_HTTP_PORT: "),
        ({"LIGHTSCHED_WAIT_REPLICAS": "1", "LIGHTSCHED_WAIT_TIMEOUT_MS": "6000"}, "LIGHTSCHED_WAIT_TIMEOUT_MS (6000) must be below LIGHTSCHED_REDIS_SOCKET_TIMEOUT"),
    ],
)
def test_bad_settings_give_one_line_naming_the_setting(monkeypatch: pytest.MonkeyPatch, env: dict, message: str) -> None:
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    with pytest.raises(SettingsError) as info:
        load_settings()
    text = str(info.value)
    assert message in text
    assert "\n" not in text
    assert "pw" not in text


def test_password_never_in_repr_or_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LIGHTSCHED_REDIS_URL", "redis://user:s3cr3t-pass@redis.internal:6380/2")
    s = load_settings()
    assert "s3cr3t-pass" not in repr(s) and "s3cr3t-pass" not in str(s)
    assert s.masked_redis_url() == "redis://user:***@redis.internal:6380/2"
    monkeypatch.setenv("LIGHTSCHED_RETRY_PERIOD", "99")
    with pytest.raises(SettingsError) as info:
        load_settings()
    assert "s3cr3t-pass" not in str(info.value)


def test_lists_and_maps_from_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LIGHTSCHED_DISABLED_JOBS", "cleanup, provider_health")
    monkeypatch.setenv("LIGHTSCHED_JOB_SCHEDULES", '{"cleanup": "0 3 * * *"}')
    s = load_settings()
    assert s.disabled_jobs == frozenset({"cleanup", "provider_health"})
    assert s.job_schedules == {"cleanup": "0 3 * * *"}


def test_settings_are_frozen() -> None:
    s = Settings()
    with pytest.raises(Exception):
        s.lease_ttl = 1  # type: ignore[misc]


@pytest.mark.parametrize(
    ("url", "masked"),
    [("redis://h:1/0", "redis://h:1/0"), ("rediss://:p@h:1", "rediss://:***@h:1"), ("unix:///tmp/r.sock", "unix:///tmp/r.sock")],
)
def test_mask_url(url: str, masked: str) -> None:
    assert mask_url(url) == masked
