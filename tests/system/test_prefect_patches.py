"""What the project changes in Prefect's server, shown against a real SQLite file."""

import asyncio

import pytest
import sqlalchemy as sa

from schedulemaster import prefect_patches


async def _interleave(cfg, mode_of_first: str | None):
    """A reads, B writes and commits, then A writes: the read-then-write race of two writers."""
    from prefect.server.database.configurations import SQLITE_BEGIN_MODE

    engine = await cfg.engine()
    async with engine.begin() as conn:
        await conn.execute(sa.text("CREATE TABLE IF NOT EXISTS t (who TEXT)"))
    a, b = await cfg.session(engine), await cfg.session(engine)
    a_has_read = asyncio.Event()

    async def first():
        token = SQLITE_BEGIN_MODE.set(mode_of_first) if mode_of_first else None
        try:
            async with (cfg.begin_transaction(a) if token is None else a.begin()):
                await a.execute(sa.text("SELECT count(*) FROM t"))
                a_has_read.set()
                await asyncio.sleep(0.5)  # B tries to write meanwhile
                await a.execute(sa.text("INSERT INTO t VALUES ('a')"))
        finally:
            if token is not None:
                SQLITE_BEGIN_MODE.reset(token)

    async def second():
        await a_has_read.wait()
        async with cfg.begin_transaction(b):
            await b.execute(sa.text("INSERT INTO t VALUES ('b')"))

    try:
        await asyncio.gather(first(), second())
        async with engine.connect() as conn:
            return sorted(r[0] for r in await conn.execute(sa.text("SELECT who FROM t")))
    finally:
        await a.close()
        await b.close()
        await engine.dispose()


@pytest.mark.timeout(60)
def test_explicit_transactions_wait_for_the_write_lock_instead_of_failing(tmp_path):
    from prefect.server.database.configurations import AioSqliteConfiguration

    prefect_patches.apply()
    url = f"sqlite+aiosqlite:///{tmp_path}/{{}}.db"
    # What Prefect does unpatched: a DEFERRED transaction that read before another commit
    # is refused at its first write, without waiting.
    with pytest.raises(sa.exc.OperationalError, match="database is locked"):
        asyncio.run(_interleave(AioSqliteConfiguration(url.format("deferred")), "DEFERRED"))
    # Patched: the same interleaving, both writes land (B waited for A's commit).
    assert asyncio.run(_interleave(AioSqliteConfiguration(url.format("patched")), None)) == ["a", "b"]


async def _read_inside_a_write(cfg):
    """What Prefect's work queue update does: inside its write transaction, another session
    of the same task reads (the queue's status event reads its pool)."""
    engine = await cfg.engine()
    async with engine.begin() as conn:
        await conn.execute(sa.text("CREATE TABLE IF NOT EXISTS t (who TEXT)"))
    outer, inner = await cfg.session(engine), await cfg.session(engine)
    try:
        async with cfg.begin_transaction(outer):
            await outer.execute(sa.text("INSERT INTO t VALUES ('outer')"))
            # WAL lets a reader in beside the writer: it sees the last commit, not 'outer'
            return (await inner.execute(sa.text("SELECT count(*) FROM t"))).scalar_one()
    finally:
        await inner.close()
        await outer.close()
        await engine.dispose()


@pytest.mark.timeout(20)
def test_a_session_opened_inside_a_write_transaction_reads_at_once(tmp_path):
    """The IMMEDIATE mode is for the transaction's own BEGIN only: a session opened inside it
    used to begin IMMEDIATE too and wait SQLite's busy timeout (60 s) for the lock its own
    task held (PATCH of a work queue hung; the 60 s stalls of the embedded default)."""
    from prefect.server.database.configurations import AioSqliteConfiguration

    prefect_patches.apply()
    cfg = AioSqliteConfiguration(f"sqlite+aiosqlite:///{tmp_path}/nested.db")

    async def bounded():
        return await asyncio.wait_for(_read_inside_a_write(cfg), 10)

    assert asyncio.run(bounded()) == 0


@pytest.mark.timeout(30)
def test_a_writer_waits_its_turn_but_not_forever(monkeypatch, caplog):
    """Writers queue in the process; one kept waiting past TURN_WAIT_SECONDS goes on to SQLite
    (whose busy timeout then bounds it) instead of hanging on a holder that waits for it."""
    monkeypatch.setattr(prefect_patches, "TURN_WAIT_SECONDS", 0.5)
    order = []

    async def writer(name, hold):
        async with prefect_patches._writer_turn():
            order.append(f"{name} in")
            async with prefect_patches._writer_turn():  # the same task again: no second wait
                await asyncio.sleep(hold)
            order.append(f"{name} out")

    async def main():
        first = asyncio.create_task(writer("a", 0.2))
        await asyncio.sleep(0.05)
        await asyncio.gather(first, writer("b", 0))  # b waits for a
        stuck = asyncio.create_task(writer("c", 1.5))
        await asyncio.sleep(0.05)
        await writer("d", 0)  # gives up waiting after 0.5 s, while c still holds the turn
        order.append("d done while c holds" if not stuck.done() else "c released first")
        await stuck

    asyncio.run(main())
    assert order[:4] == ["a in", "a out", "b in", "b out"]
    assert order[4:7] == ["c in", "d in", "d out"] and "d done while c holds" in order
    assert "no turn for a Prefect write transaction" in caplog.text


async def test_prefects_background_worker_wakes_once_a_second():
    """The docket worker Prefect's server starts for its services (patch 6), as the server
    makes it: ``Worker(docket)`` on the in-memory backend."""
    from docket import Docket
    from prefect.server.api import background_workers

    prefect_patches.apply()
    async with Docket(name="sm-test-patch", url="memory://sm-test-patch") as docket:
        async with background_workers.Worker(docket) as worker:
            assert worker.scheduling_resolution == prefect_patches.DOCKET_WAKE
            assert worker.minimum_check_interval == prefect_patches.DOCKET_WAKE


def test_prefects_api_compresses_at_the_cheapest_level():
    """Patch 7, seen in the app Prefect's create_app builds: its API middleware stack."""
    from prefect.server.api.server import create_app

    prefect_patches.apply()
    app = create_app(ephemeral=True, final=True)
    api = next(r.app for r in app.routes if getattr(r, "name", None) == "api")
    gzips = [m for m in api.user_middleware if "GZip" in m.cls.__name__]
    assert gzips and all(m.cls._schedulemaster_defaults == {"compresslevel": prefect_patches.GZIP_LEVEL}
                         for m in gzips), gzips
    built = gzips[0].cls(app=None)
    assert built.compresslevel == prefect_patches.GZIP_LEVEL
