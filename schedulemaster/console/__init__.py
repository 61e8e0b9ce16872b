"""The console on the legacy port: sign-in, tasks, and what Prefect's UI has no page for."""
