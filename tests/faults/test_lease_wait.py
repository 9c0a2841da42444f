"""A copy of a task that meets a live lease waits for it as long as it takes, then reports."""

from __future__ import annotations

import pytest

from tests.faults.conftest import Faulty
from tests.integration.conftest import new_id
from worker.constants import KEY_LEASE, TASK_STORE_OUTPUTS

pytestmark = pytest.mark.integration


def test_a_copy_waits_out_a_held_lease_however_many_turns_it_takes(
    world: dict[str, Faulty],
) -> None:
    """store_outputs whose execution lease another holder keeps for five ``lease_retry_s``
    turns (1 s here) still runs once the lease lapses and publishes ``haul.outputs.stored``.
    Celery's default limit of three retries used to drop it, acknowledged, with no outcome
    event at all (found by bench/chaos: an execution lost after a worker kill)."""
    faulty = world["http"]
    lake = faulty.lake
    eid = new_id("lease")
    (lake.outputs(eid) / "a.txt").write_bytes(b"waited for\n")
    key = f"{KEY_LEASE}:{TASK_STORE_OUTPUTS}:{eid}"
    lake.haul.r.set(key, "another-worker", px=5500)
    lake.mark_log()

    state, summary = lake.run(
        TASK_STORE_OUTPUTS, {"execution_id": eid, "project_id": faulty.project}, timeout=90
    )
    assert state == "SUCCESS", (summary, lake.haul.log_tail())
    assert lake.events(eid, "haul.outputs.stored")
    assert lake.log_since_mark().count(f"{key} is held by a live worker") > 3
