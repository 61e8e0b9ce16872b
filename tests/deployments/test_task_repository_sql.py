"""The task repository's SQL (deployments/tasks.py) on both databases Prefect runs on: each
dialect has its own JSON operators, and a wrong one fails only there (PostgreSQL's master
refused to start once). In-process against Prefect's own schema, no live system."""

from __future__ import annotations

import pytest

from helpers import PREFECT_DB_SCRIPT, run_on_prefect_db

SCRIPT = PREFECT_DB_SCRIPT + r'''

def spec(title, nexts=()):
    return http_spec(title, Nexts=list(nexts))


async def main():
    db = await new_db()
    async with db.session_context(begin_transaction=True) as s:
        # a tagged deployment that is not a task (as the dispatcher's): never counted
        flow = await models.flows.create_flow(session=s, flow=schemas.core.Flow(name="other"))
        await models.deployments.create_deployment(session=s, deployment=schemas.core.Deployment(
            name="dispatcher", flow_id=flow.id, tags=["schedulemaster", "delayed"]))
    repo = TaskRepository()
    schema = TASK_SCHEMA
    a, b, c = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    await repo.create(a, spec("alpha 100%"), "schedulemaster", schema, Status.Running)
    await repo.create(b, spec("beta", [str(a)]), "schedulemaster", schema)
    await repo.create(c, spec("Alpha"), "schedulemaster", schema)
    total, page = await repo.page("alpha", 0, 10)
    assert total == 1 and [r.id for r in page] == [a], (total, page)
    assert (await repo.page("100%", 0, 10))[0] == 1 and (await repo.page("_", 0, 10))[0] == 0
    # the deployment's name (the cleaned title) is looked at first: what it changed is still exact
    d = uuid.uuid4()
    await repo.create(d, spec(" nightly/β report "), "schedulemaster", schema)
    for text, found in (("β report", [d]), ("nightly/β", [d]), ("nightly_β", []), (" nightly", [d]),
                        ("report ", [d]), ("Report", [])):
        assert [r.id for r in (await repo.page(text, 0, 10))[1]] == found, text
    await repo.delete(d, [])
    assert [r.id for r in (await repo.page(None, 1, 1))[1]] == [b]  # newest first: c, b, a
    assert set(await repo.chains([a])) == {str(a), str(b)}
    assert [p.id for p in await repo.parents_of(a)] == [b]
    count, versions, token = await repo.versions(None)
    assert count == 3 and {i for i, _ in versions} == {a, b, c}
    before = await repo.change_token()
    assert token == (before if repo.tokens_follow_commits else "")  # PostgreSQL: none, nodes look every second
    c2 = uuid.uuid4()
    await repo.create(c2, spec("gamma"), "schedulemaster", schema)
    created = await repo.change_token()
    assert (await repo.versions(None))[0] == 4
    await repo.delete(c, [])  # moves the count of deployments, not the newest `updated`
    assert (await repo.versions(None))[0] == 3
    assert len({before, created, await repo.change_token()}) == 3
    assert (await repo.rows([a, uuid.uuid4()]))[1][0].id == a
    assert await repo.mark_ready() == 0  # created READY and never polled
    # the console's status filter (the stopped tag, then the paused flag), as status_of reads them
    assert [r.id for r in (await repo.page(None, 0, 10, Status.Running))[1]] == [a]
    assert {r.id for r in (await repo.page(None, 0, 10, Status.Stop))[1]} == {b, c2}
    assert (await repo.page(None, 0, 10, Status.Paused))[0] == 0
    # the Running tasks, and those of them pinned to nodes (the unschedulable check)
    pinned = uuid.uuid4()
    await repo.create(pinned, spec("pinned").model_copy(update={"Executors": ["w9"]}), "schedulemaster", schema,
                      Status.Running)
    assert {r.id for r in await repo.running()} == {a, pinned}
    assert [r.id for r in await repo.running(pinned_only=True)] == [pinned]
    await repo.delete(pinned, [])
    # each task its own flow, with its id, named by its title; a taken name gets the id's start
    import sqlalchemy as sa
    F, D, R = db.Flow, db.Deployment, db.FlowRun
    b2 = uuid.uuid4()
    await repo.create(b2, spec("beta"), "schedulemaster", schema)

    async def flows():
        async with db.session_context() as s:
            return {r.id: (r.name, r.tags) for r in (await s.execute(sa.select(F.id, F.name, F.tags))).all()}

    names = await flows()
    assert names[a] == ("alpha 100_", ["schedulemaster"]) and names[b][0] == "beta", names
    assert names[b2][0] == f"beta ({str(b2)[:8]})" and names[c] == ("Alpha", ["schedulemaster", "sm:deleted"]), names
    await repo.write(b2, spec("beta two"), Status.Stop, rename=True)
    assert (await flows())[b2][0] == "beta two"
    # a task of an older version, on the one shared flow, with a run: moved to its own flow
    old = uuid.uuid4()
    await repo.create(old, spec("old"), "schedulemaster", schema)
    async with db.session_context(begin_transaction=True) as s:
        shared = await models.flows.create_flow(session=s, flow=schemas.core.Flow(name="schedulemaster-task"))
        await s.execute(sa.update(D).where(D.id == old).values(flow_id=shared.id))
        run = await models.flow_runs.create_flow_run(session=s, flow_run=schemas.core.FlowRun(
            flow_id=shared.id, deployment_id=old, name="old run"))
    assert await repo.own_flows(batch=1) == 1 and await repo.own_flows() == 0
    async with db.session_context() as s:
        assert (await s.execute(sa.select(D.flow_id).where(D.id == old))).scalar_one() == old
        assert (await s.execute(sa.select(R.flow_id).where(R.id == run.id))).scalar_one() == old
    assert (await flows())[shared.id][1] == ["schedulemaster"]  # the deleted tasks' runs stay findable
    # the status in words among the tags: written with the task, and added to one written without it
    async with db.session_context(begin_transaction=True) as s:
        await s.execute(sa.update(D).where(D.id == b).values(tags=["schedulemaster", "sm:executor:w1", "mine"]))
    assert await repo.mark_status_words() == 1 and await repo.mark_status_words() == 0
    async with db.session_context() as s:
        tags = dict((await s.execute(sa.select(D.id, D.tags).where(D.id.in_([a, b])))).all())
    assert tags == {a: ["schedulemaster", "sm:running"], b: ["schedulemaster", "sm:paused", "sm:executor:w1", "mine"]}, tags
    await repo.write(a, spec("alpha 100%"), Status.Paused, previous=spec("alpha 100%"))
    assert (await repo.read(a)).status == Status.Paused
    assert await repo.run_stats_of([a]) == {}
    # the related resources of the deployment events, as Prefect lists them
    from prefect.server.models.events import _deployment_related_resources
    async with db.session_context() as s:
        orm = await models.deployments.read_deployment(session=s, deployment_id=a)
        theirs = [dict(r) for r in await _deployment_related_resources(s, orm)]
        ours = await repo._related(s, orm.flow_id, orm.work_queue_id)
    assert ours == theirs and len(ours) == 3, (ours, theirs)
    # the rows a Create inserts read back through Prefect's own models
    async with db.session_context() as s:
        orm = await models.deployments.read_deployment(session=s, deployment_id=c2)
        shown = schemas.responses.DeploymentResponse.model_validate(orm, from_attributes=True)
    assert shown.name == "gamma" and shown.created and shown.updated and shown.status == "READY"
    assert [(x.active, x.slug) for x in shown.schedules] == [(False, "quartz 0 * * * * ?")], shown.schedules
    assert shown.labels.get("prefect.flow.id") == str(orm.flow_id), shown.labels
    # pages of one after a mark: every task once, newest first, two made at the same instant included;
    # the parameters as the JSON text the database holds, the same document decoded
    import json
    async with db.session_context(begin_transaction=True) as s:
        same = (await s.execute(sa.select(D.created).where(D.id == b))).scalar_one()
        await s.execute(sa.update(D).where(D.id == c2).values(created=same))
    total, every = await repo.rows(None, 0, 100)
    seen, before = [], None
    while True:
        _total, page = await repo.rows(None, 0, 1, parameters_text=True, before=before)
        seen += [row.id for row in page]
        for row in page:
            assert json.loads(row.parameters) == next(r.parameters for r in every if r.id == row.id)
        if not page:
            break
        before = (page[-1].created, page[-1].id)
    assert seen == [row.id for row in every] and len(seen) == total >= 5, (seen, every)
    print("ok")


asyncio.run(main())
'''


@pytest.mark.timeout(300)
@pytest.mark.parametrize("dialect", ["sqlite", "postgresql"])
def test_the_repository_sql(dialect, tmp_path):
    run_on_prefect_db(SCRIPT, dialect, tmp_path, "sm_repo")


FIRST_CREATES = PREFECT_DB_SCRIPT + r'''

async def main():
    db = await new_db()

    async def create(i):
        await TaskRepository().create(uuid.uuid4(), http_spec(f"first {i}"), "schedulemaster", TASK_SCHEMA)

    await asyncio.gather(*(create(i) for i in range(4)))  # the pool has no tasks queue yet
    async with db.session_context() as s:
        queues = (await s.execute(sa.select(db.WorkQueue.name))).scalars().all()
        tasks = (await s.execute(sa.select(sa.func.count()).select_from(db.Deployment))).scalar_one()
    assert sorted(queues) == ["default", "tasks"] and tasks == 4, (queues, tasks)
    print("ok")


asyncio.run(main())
'''


@pytest.mark.timeout(300)
@pytest.mark.parametrize("dialect", ["sqlite", "postgresql"])
def test_the_first_creates_at_once_make_one_tasks_queue(dialect, tmp_path):
    """Four Creates at once on a new system: PostgreSQL once refused three (each made the queue)."""
    run_on_prefect_db(FIRST_CREATES, dialect, tmp_path, "sm_first")
