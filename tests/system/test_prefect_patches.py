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
