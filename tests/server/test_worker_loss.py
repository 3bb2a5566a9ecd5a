"""simulate_job, and what happens to a worker's jobs when its connection ends (migrate, grace, policy)."""

from __future__ import annotations

from typing import Any

import pytest
from livekit import api
from livekit.protocol import agent, models

JRP_NEVER = api.JobRestartPolicy.JRP_NEVER


async def _job_on(harness: Any, worker: Any, room: str, **fields: Any) -> str:
    await harness.api.agent_dispatch.create_dispatch(
        api.CreateAgentDispatchRequest(agent_name=worker.opts.agent_name, room=room, **fields)
    )
    await harness.wait_for(
        lambda: any(a.job.room.name == room for a in worker.received.assignments), what=f"job in {room}"
    )
    await worker.sync()
    return next(a.job.id for a in worker.received.assignments if a.job.room.name == room)


async def _gone(harness: Any, worker: Any) -> None:
    worker_id = worker.id
    await worker.aclose()
    await harness.wait_for(lambda: harness.server.registry.get(worker_id) is None, what=f"{worker_id} gone")


async def _migrate(worker: Any, *job_ids: str) -> None:
    await worker.send(agent.WorkerMessage(migrate_job=agent.MigrateJobRequest(job_ids=list(job_ids))))
    await worker.sync()


# -- simulate_job ---------------------------------------------------------------------------------------
async def test_simulate_job_offers_to_the_same_worker(harness: Any) -> None:
    asker = await harness.worker(agent_name="sim")
    bystander = await harness.worker(agent_name="sim")
    await bystander.report(0.0)
    await asker.report(0.9)
    req = agent.SimulateJobRequest(room=models.Room(name="sim-room"))
    await asker.send(agent.WorkerMessage(simulate_job=req))
    [offer] = await asker.wait_offers(1)
    assert offer.job.type == agent.JobType.JT_ROOM
    assert offer.job.room.name == "sim-room"
    assert offer.job.agent_name == "sim"
    [assignment] = await asker.wait_assignments(1)
    assert assignment.job.id == offer.job.id
    await bystander.sync()
    assert bystander.received.offers == []


async def test_simulate_job_with_participant_is_a_publisher_job(harness: Any) -> None:
    w = await harness.worker(agent_name="sim-pub", job_type=agent.JobType.JT_PUBLISHER)
    req = agent.SimulateJobRequest(
        room=models.Room(name="sim-pub-room"), participant=models.ParticipantInfo(identity="caller")
    )
    await w.send(agent.WorkerMessage(simulate_job=req))
    [offer] = await w.wait_offers(1)
    assert offer.job.type == agent.JobType.JT_PUBLISHER
    assert offer.job.participant.identity == "caller"


async def test_rejected_simulated_job_goes_nowhere_else(harness: Any) -> None:
    asker = await harness.worker(agent_name="sim-rej", policy="reject")
    other = await harness.worker(agent_name="sim-rej")
    await asker.send(agent.WorkerMessage(simulate_job=agent.SimulateJobRequest()))
    [offer] = await asker.wait_offers(1)
    await harness.wait_job_status(offer.job.id, agent.JobStatus.JS_FAILED)
    await other.sync()
    assert other.received.offers == []


# -- worker loss ------------------------------------------------------------------------------------------
# 3 s: the reconnect and migrate_job below must land within the grace even on a loaded machine
@pytest.mark.parametrize("server_config", [{"reconnect_grace": 3.0}])
async def test_migrate_within_grace_keeps_the_job_without_redispatch(harness: Any) -> None:
    kept = await harness.worker(agent_name="mig")
    kept_job = await _job_on(harness, kept, "mig-kept")
    control = await harness.worker(agent_name="mig")
    await control.report(0.0)
    await kept.report(0.9)
    control_job = await _job_on(harness, control, "mig-control")
    standby = await harness.worker(agent_name="mig")
    await standby.report(0.5)
    await standby.sync()

    await _gone(harness, kept)  # its grace timer starts first
    await _gone(harness, control)
    back = await harness.worker(agent_name="mig")  # the same worker, reconnected
    await back.report(0.9)
    await _migrate(back, kept_job)
    [job] = await harness.list_jobs("mig-kept")
    assert (job.state.status, job.state.worker_id) == (agent.JobStatus.JS_RUNNING, back.id)

    # the control job's grace (which started later) expires: it is re-offered ...
    [offer] = await standby.wait_offers(1, timeout=20)
    assert (offer.job.id, offer.resuming) == (control_job, True)
    # ... while the migrated job never was, and stays with the new connection
    await standby.sync()
    assert standby.offered_ids() == [control_job]
    assert back.received.offers == [] and back.received.terminations == []
    [job] = await harness.list_jobs("mig-kept")
    assert (job.state.status, job.state.worker_id) == (agent.JobStatus.JS_RUNNING, back.id)
    # the new connection owns it: its final status counts
    await back.finish(kept_job, agent.JobStatus.JS_SUCCESS)
    await back.sync()
    [job] = await harness.list_jobs("mig-kept")
    assert job.state.status == agent.JobStatus.JS_SUCCESS


@pytest.mark.parametrize("server_config", [{"reconnect_grace": 1.5}])  # the RUNNING check falls within it
async def test_lost_job_is_reoffered_resuming_after_grace(harness: Any) -> None:
    lost = await harness.worker(agent_name="lose")
    job_id = await _job_on(harness, lost, "lose-room")
    heir = await harness.worker(agent_name="lose")
    await _gone(harness, lost)
    [job] = await harness.list_jobs("lose-room")
    assert job.state.status == agent.JobStatus.JS_RUNNING  # still waiting out the grace
    [offer] = await heir.wait_offers(1, timeout=20)
    assert offer.job.id == job_id
    assert offer.resuming is True
    await heir.wait_assignments(1)
    [job] = await harness.list_jobs("lose-room")
    assert (job.state.status, job.state.worker_id) == (agent.JobStatus.JS_RUNNING, heir.id)


@pytest.mark.parametrize("server_config", [{"reconnect_grace": 0.3}])
async def test_lost_job_with_jrp_never_fails_after_grace(harness: Any) -> None:
    lost = await harness.worker(agent_name="lose-never")
    job_id = await _job_on(harness, lost, "never-room", restart_policy=JRP_NEVER)
    bystander = await harness.worker(agent_name="lose-never")
    await _gone(harness, lost)
    await harness.wait_job_status(job_id, agent.JobStatus.JS_FAILED)
    [job] = await harness.list_jobs("never-room")
    assert job.state.status == agent.JobStatus.JS_FAILED
    assert "worker lost" in job.state.error
    assert job.state.ended_at > 0
    await bystander.sync()
    assert bystander.received.offers == []


async def test_migrate_of_a_job_owned_by_a_live_worker_is_terminated(harness: Any) -> None:
    owner = await harness.worker(agent_name="own")
    job_id = await _job_on(harness, owner, "own-room")
    claimant = await harness.worker(agent_name="own")
    await _migrate(claimant, job_id)
    assert claimant.received.terminations == [job_id]
    [job] = await harness.list_jobs("own-room")
    assert job.state.worker_id == owner.id
    await owner.sync()
    assert owner.received.terminations == []


@pytest.mark.parametrize("server_config", [{"adopt_window": 0}])
async def test_migrate_of_unknown_or_ended_jobs_is_terminated(harness: Any) -> None:
    w = await harness.worker(agent_name="stale")
    job_id = await _job_on(harness, w, "stale-room")
    await w.finish(job_id, agent.JobStatus.JS_SUCCESS)
    await _migrate(w, job_id, "AJ_neverexisted")
    assert w.received.terminations == [job_id, "AJ_neverexisted"]


@pytest.mark.parametrize("server_config", [{"reconnect_grace": 0.3}])
async def test_migrate_after_the_job_moved_on_is_terminated(harness: Any) -> None:
    lost = await harness.worker(agent_name="moved")
    job_id = await _job_on(harness, lost, "moved-room")
    heir = await harness.worker(agent_name="moved")
    await _gone(harness, lost)
    await heir.wait_assignments(1)
    back = await harness.worker(agent_name="moved")
    await _migrate(back, job_id)
    assert back.received.terminations == [job_id]
    [job] = await harness.list_jobs("moved-room")
    assert job.state.worker_id == heir.id


@pytest.mark.parametrize("server_config", [{"offer_timeout": 30.0}])  # far beyond the wait: no timeout help
async def test_offer_to_a_worker_that_disconnects_moves_on_at_once(harness: Any) -> None:
    silent = await harness.worker(agent_name="drop", policy="ignore")
    taker = await harness.worker(agent_name="drop")
    await taker.report(0.5)
    await taker.sync()
    await harness.api.agent_dispatch.create_dispatch(
        api.CreateAgentDispatchRequest(agent_name="drop", room="drop")
    )
    await silent.wait_offers(1)
    await silent.aclose()
    [assignment] = await taker.wait_assignments(1)
    assert assignment.job.room.name == "drop"


async def test_right_after_a_restart_reported_jobs_are_adopted_not_terminated(harness: Any) -> None:
    """A node that restarted (memory store) has no records: a reconnecting worker keeps its calls."""
    w = await harness.worker(agent_name="kept")
    described = agent.Job(id="AJ_fromlastlife", dispatch_id="AD_lastlife", agent_name="kept")
    described.room.name = "survivor"
    req = agent.MigrateJobRequest(job_ids=["AJ_fromlastlife", "AJ_idonly"], jobs=[described])
    await w.send(agent.WorkerMessage(migrate_job=req))
    await harness.wait_job_status("AJ_fromlastlife", agent.JobStatus.JS_RUNNING)
    await harness.wait_job_status("AJ_idonly", agent.JobStatus.JS_RUNNING)
    [dispatch] = await harness.api.agent_dispatch.list_dispatch("survivor")  # room and dispatch recreated
    assert [j.id for j in dispatch.state.jobs] == ["AJ_fromlastlife"]
    assert dispatch.state.jobs[0].state.worker_id == w.id
    await w.finish("AJ_idonly", agent.JobStatus.JS_SUCCESS)  # the id-only job's end is recorded too
    await harness.wait_job_status("AJ_idonly", agent.JobStatus.JS_SUCCESS)
    await w.sync()
    assert w.received.terminations == []
    other = await harness.worker(agent_name="other-name")
    await _migrate(other, "AJ_notyours")
    job = agent.Job(id="AJ_wrongkey", agent_name="kept")
    await other.send(agent.WorkerMessage(migrate_job=agent.MigrateJobRequest(jobs=[job])))
    await harness.wait_for(lambda: "AJ_wrongkey" in other.received.terminations, what="termination")
