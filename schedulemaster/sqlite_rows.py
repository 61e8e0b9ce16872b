"""Rows written to SQLite as one multi-row INSERT (or UPDATE), its SQL text made once per shape.

Why one statement: the sqlite3 driver runs in aiosqlite's thread and gives up Python's GIL at
each row it steps through (each row of an executemany, each row a RETURNING answers), then
waits for the GIL again; while the master's event loop keeps the GIL busy, each wait lasts
up to the switch interval. Measured here: 1,000 rows by executemany took 0.5-1.5 s beside a
busy thread and 33-47 ms as one statement (10 ms both when idle), and those seconds are
spent holding SQLite's one write lock. PostgreSQL (asyncpg, in the event loop) keeps
executemany.
"""

from __future__ import annotations

import functools

SQLITE_MAX_PARAMETERS = 32_766  # in one statement


@functools.lru_cache(maxsize=64)
def _values_sql(table: str, columns: tuple[str, ...], rows: int) -> str:
    row = "(" + ", ".join("?" * len(columns)) + ")"
    return f"INSERT INTO {table} ({', '.join(columns)}) VALUES {', '.join([row] * rows)}"


async def insert_rows(session, table, rows: list[dict]) -> None:
    """Insert ``rows`` (dicts with the same keys) into ``table`` in the session's transaction,
    each value through its column type's bind processing and the columns left out given their
    Python-side defaults, as SQLAlchemy would. Why by hand: SQLAlchemy compiles a multi-row
    VALUES statement afresh for every call (it cannot cache one): recording 200 firings a
    second, that compile was a tenth of the master's CPU (py-spy)."""
    if not rows:
        return
    conn = await session.connection()
    # the columns a row leaves out get their Python-side defaults, as SQLAlchemy gives them
    missing = [c for c in table.columns if c.name not in rows[0] and c.default is not None]
    if any(not (c.default.is_scalar or c.default.is_callable) for c in missing):  # SQL expressions
        import sqlalchemy as sa

        await session.execute(sa.insert(table).values(rows))
        return
    if missing:
        rows = [{**row, **{c.name: c.default.arg(None) if c.default.is_callable else c.default.arg
                           for c in missing}} for row in rows]
    columns = tuple(rows[0])
    for part, params in _chunks(conn, table, columns, rows):
        await conn.exec_driver_sql(_values_sql(table.name, columns, len(part)), params)


def _chunks(conn, table, names: tuple[str, ...], rows: list[dict]):
    """(rows, their values in ``names`` order through each column type's bind processing), as
    many rows at a time as one statement may take parameters."""
    processors = [table.c[name].type.dialect_impl(conn.dialect).bind_processor(conn.dialect) for name in names]
    step = max(1, SQLITE_MAX_PARAMETERS // len(names))
    for i in range(0, len(rows), step):
        part = rows[i:i + step]
        yield part, tuple(value if proc is None else proc(value)
                          for row in part for proc, value in zip(processors, (row[name] for name in names)))


@functools.lru_cache(maxsize=64)
def _update_sql(table: str, key: str, columns: tuple[str, ...], rows: int) -> str:
    row = "(" + ", ".join("?" * (len(columns) + 1)) + ")"
    sets = ", ".join(f"{c} = v.column{i + 2}" for i, c in enumerate(columns))
    return f"UPDATE {table} SET {sets} FROM (VALUES {', '.join([row] * rows)}) AS v WHERE {table}.{key} = v.column1"


async def update_rows(session, table, key: str, rows: list[dict]) -> None:
    """Set each row's other columns on the rows of ``table`` whose ``key`` column equals the
    row's ``key`` value, in the session's transaction. On SQLite one ``UPDATE ... FROM
    (VALUES ...)`` per chunk (why one statement: above), values through their column types'
    bind processing; elsewhere an executemany."""
    import sqlalchemy as sa

    if not rows:
        return
    conn = await session.connection()
    columns = tuple(c for c in rows[0] if c != key)
    if conn.dialect.name != "sqlite":
        stmt = sa.update(table).where(table.c[key] == sa.bindparam("_key")).values(
            {c: sa.bindparam(c) for c in columns})
        await conn.execute(stmt, [{"_key": row[key], **{c: row[c] for c in columns}} for row in rows])
        return
    for part, params in _chunks(conn, table, (key, *columns), rows):
        await conn.exec_driver_sql(_update_sql(table.name, key, columns, len(part)), params)
