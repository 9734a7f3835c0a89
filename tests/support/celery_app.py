"""A Celery app for the bridge tests, run as a real worker: `celery -A tests.support.celery_app worker`.

The broker URL comes from `LIGHTSCHED_TEST_CELERY_BROKER` (the test's
throwaway Redis). Its one task records what it received in that same Redis,
and deduplicates by task id the way docs/CELERY_MIGRATION.md tells workers to.
"""

from __future__ import annotations

import json
import os
from typing import Any

import redis
from celery import Celery

from jobs.celery_bridge import slot_headers

BROKER_ENV = "LIGHTSCHED_TEST_CELERY_BROKER"
RECORD_TASK = "lightsched_test.record"

app = Celery("lightsched_test", broker=os.environ.get(BROKER_ENV, "memory://"), set_as_current=False)
app.conf.update(
    broker_connection_retry_on_startup=True,
    task_ignore_result=True,
    worker_hijack_root_logger=False,
)


@app.task(name=RECORD_TASK, bind=True)
def record(self: Any, key: str, payload: Any = None) -> None:
    """INCR `{key}:received`; on the first delivery of a task id only, RPUSH a record to `{key}:executed`."""
    client = redis.Redis.from_url(os.environ[BROKER_ENV])
    try:
        first = client.set(f"{key}:seen:{self.request.id}", 1, nx=True, ex=3600)
        if first:
            slot = slot_headers(self.request)
            client.rpush(
                f"{key}:executed",
                json.dumps(
                    {
                        "task_id": self.request.id,
                        "payload": payload,
                        "expires": self.request.expires,
                        "routing_key": (self.request.delivery_info or {}).get("routing_key"),
                        "job_id": slot.job_id if slot else None,
                        "fencing_token": slot.fencing_token if slot else None,
                        "scheduled_time": slot.scheduled_time.isoformat() if slot else None,
                    }
                ),
            )
        # Last, so a test that sees the count also sees the record.
        client.incr(f"{key}:received")
    finally:
        client.close()
