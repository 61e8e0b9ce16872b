"""Plain Prefect's way to fire an HTTP task: one flow run per firing, run by a ProcessWorker."""

import httpx
from prefect import flow
from prefect.runtime import flow_run


@flow(name="bench-baseline-post")
def post_hit(url: str) -> int:
    return httpx.post(url, headers={"Idempotency-Key": str(flow_run.get_id())}, timeout=30).status_code
