"""The master publishes recorded runs' events only when Prefect's in-memory consumers have room:
a consumer 10,000 events behind would drop the next ones (schedulemaster/master/bulk_runs.py)."""

from __future__ import annotations

import asyncio

import pytest

from schedulemaster.master import bulk_runs


@pytest.fixture
def events_topic():
    from prefect.server.utilities.messaging import memory

    topic = memory.Topic.by_name("events")
    sub = topic.subscribe()
    yield sub
    topic.unsubscribe(sub)


@pytest.fixture
def published(monkeypatch) -> list:
    """What the master publishes, in place of Prefect's events client."""
    out = []

    class Client:
        async def __aenter__(self):
            return self

        async def __aexit__(self, *exc):
            return False

        async def emit(self, event):
            out.append(event)

    monkeypatch.setattr("prefect.server.events.clients.PrefectServerEventsClient", Client)
    return out


def test_publishing_waits_while_a_consumer_is_far_behind_then_goes_on(events_topic, published):

    async def scenario():
        for i in range(bulk_runs.CONSUMER_QUEUE - 100):  # a consumer nearly full
            events_topic._queue.put_nowait(i)
        emitting = asyncio.create_task(bulk_runs.emit(["e1", "e2"]))
        await asyncio.sleep(0.5)
        assert not published and not emitting.done()  # held back, not dropped
        while events_topic._queue.qsize() > bulk_runs.CONSUMER_QUEUE // 2:  # the consumer catches up
            events_topic._queue.get_nowait()
        await asyncio.wait_for(emitting, 5)
        assert published == ["e1", "e2"]

    asyncio.run(scenario())


def test_publishing_gives_up_waiting_after_the_bound(events_topic, published, monkeypatch, caplog):
    monkeypatch.setattr(bulk_runs, "ROOM_WAIT_SECONDS", 0.3)
    for i in range(bulk_runs.CONSUMER_QUEUE - 10):
        events_topic._queue.put_nowait(i)
    asyncio.run(asyncio.wait_for(bulk_runs.emit(["late"]), 5))
    assert published == ["late"] and "events behind" in caplog.text
