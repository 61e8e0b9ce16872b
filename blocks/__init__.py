"""Prefect blocks this project ships (registered by the master at start-up)."""
