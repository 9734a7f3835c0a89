"""A running replica exports job-run and leadership spans over OTLP/HTTP to a real receiver."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest

from tests.support.otlp_receiver import OtlpReceiver
from tests.support.redis_servers import ServerLike
from tests.support.replicas import Fleet

pytestmark = pytest.mark.slow


def test_job_and_leadership_spans_reach_an_otlp_receiver(redis_server: ServerLike, tmp_path: Path) -> None:
    with OtlpReceiver() as receiver:
        env = {
            "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint,
            "OTEL_BSP_SCHEDULE_DELAY": "200",
            "OTEL_SERVICE_NAME": "lightsched-e2e",
            "LIGHTSCHED_JOBS": "tests.support.tracing_jobs:registry",
        }
        with Fleet(redis_server.url, tmp_path, 2, extra_env=env, http=False) as fleet:
            first = fleet.wait_for_leader()

            def wait(pred, timeout_s: float = 30):
                receiver.wait_for(lambda spans: [s for s in spans if pred(s)], timeout_s=timeout_s)
                return [s for s in receiver.spans() if pred(s)]

            def job_spans(name: str):
                return lambda s: s["name"] == name

            ok = wait(job_spans("job ok"))[0]
            attrs = ok["attributes"]
            assert attrs["lightsched.job_id"] == "ok"
            assert attrs["lightsched.replica_id"] == first.name
            assert attrs["lightsched.outcome"] == "success"
            assert isinstance(attrs["lightsched.fencing_token"], int) and attrs["lightsched.fencing_token"] > 0
            assert "lightsched.scheduled_time" in attrs and attrs["lightsched.lateness_ms"] >= 0
            assert ok["resource"]["service.name"] == "lightsched-e2e"
            assert ok["resource"]["service.instance.id"] == first.name
            child = wait(job_spans("ok.child"))[0]
            assert child["parent_span_id"] == ok["span_id"] and child["trace_id"] == ok["trace_id"]

            boom = wait(job_spans("job boom"))[0]
            assert boom["status_code"] == "ERROR"
            assert boom["attributes"]["lightsched.outcome"] == "failed"

            acquired = wait(lambda s: s["name"] == "leadership acquired" and s["resource"]["service.instance.id"] == first.name)
            token = acquired[0]["attributes"]["lightsched.fencing_token"]

            first.signal(signal.SIGTERM)
            second = fleet.wait_for_leader(exclude={first.name})
            lost = wait(lambda s: s["name"] in ("leadership lost", "leadership released")
                        and s["resource"]["service.instance.id"] == first.name)
            assert lost[0]["attributes"].get("lightsched.reason") == "released"
            taken = wait(lambda s: s["name"] == "leadership acquired" and s["resource"]["service.instance.id"] == second.name)
            assert taken[0]["attributes"]["lightsched.fencing_token"] > token
