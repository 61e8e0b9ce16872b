"""Plain Prefect's HTTP firing for the soak: like `baseline_flow.post_hit`, but the path ends in the
run's scheduled instant (epoch seconds) so the soak can tell lost, late and duplicated firings."""

import httpx
from prefect import flow
from prefect.runtime import flow_run


@flow(name="bench-baseline-post")  # the deployments are of this flow name (lateness.Baseline)
def post_scheduled(url: str) -> int:
    at = int(flow_run.scheduled_start_time.timestamp())
    return httpx.post(f"{url}/{at}", headers={"Idempotency-Key": str(flow_run.get_id())}, timeout=30).status_code
