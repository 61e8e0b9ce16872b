"""The Prefect Variables the master writes and every node reads (nodes cannot reach the store).

``schedulemaster_nodes``: which executor nodes may fire tasks, the console's 启用 (enable) /
休息 (disable). A node is a Prefect worker of the pool; whether it is alive is Prefect's (its heartbeats).
Whether it may work is the operator's, kept in the Prefect Variable ``schedulemaster_nodes``
(``{"disabled": [names]}``, visible in the UI's Variables page). The master writes it; every
node reads it with its view of the live workers (every few seconds), and the master reads it
when it routes a Start or a RunOnce. So a disabled node drops out of the rendezvous choice
everywhere, and its tasks move to the other allowed nodes, as the original's 休息 took a
worker's Quartz down while it stayed connected (status 1, 空闲).
"""

from __future__ import annotations

from typing import Any

NODES_VARIABLE = "schedulemaster_nodes"
#: ``schedulemaster_settings``: the settings nodes need (Http_RequestTimeout...), never a secret
SETTINGS_VARIABLE = "schedulemaster_settings"


def disabled_of(value: Any) -> set[str]:
    """The disabled node names in the Variable's value (anything malformed: none)."""
    if isinstance(value, dict) and isinstance(value.get("disabled"), list):
        return {n for n in value["disabled"] if isinstance(n, str)}
    return set()


async def read_disabled(client) -> set[str]:
    variable = await client.read_variable_by_name(NODES_VARIABLE)
    return disabled_of(variable.value if variable is not None else None)


async def set_disabled(client, name: str, disabled: bool) -> bool:
    """Add or remove ``name``; False when it was already so (nothing written)."""
    from prefect.client.schemas.actions import VariableCreate, VariableUpdate

    variable = await client.read_variable_by_name(NODES_VARIABLE)
    current = disabled_of(variable.value if variable is not None else None)
    wanted = current | {name} if disabled else current - {name}
    if wanted == current and variable is not None:
        return False
    value = {"disabled": sorted(wanted)}
    if variable is None:
        await client.create_variable(VariableCreate(name=NODES_VARIABLE, value=value, tags=["schedulemaster"]))
    else:
        await client.update_variable(VariableUpdate(name=NODES_VARIABLE, value=value))
    return True


async def read_node_settings() -> dict[str, Any]:
    """The settings as the master last mirrored them (empty until it has)."""
    from prefect.variables import Variable

    value = await Variable.aget(SETTINGS_VARIABLE, default={})
    return value if isinstance(value, dict) else {}


async def read_node_variables(client) -> tuple[set[str], dict[str, Any]]:
    """(disabled node names, settings) in one call: what a node re-reads every few seconds."""
    answer = await client.request("POST", "/variables/filter", json={
        "variables": {"name": {"any_": [NODES_VARIABLE, SETTINGS_VARIABLE]}}, "limit": 2})
    values = {v.get("name"): v.get("value") for v in answer.json() if isinstance(v, dict)}
    settings = values.get(SETTINGS_VARIABLE)
    return disabled_of(values.get(NODES_VARIABLE)), settings if isinstance(settings, dict) else {}


async def mirror_settings(client, store) -> None:
    """Copy the store's settings, secrets (``*Pwd``) left out, into the Variable nodes read."""
    from prefect.client.schemas.actions import VariableCreate, VariableUpdate

    value = {k: v for k, v in store.configs().items() if not k.endswith("Pwd")}
    existing = await client.read_variable_by_name(SETTINGS_VARIABLE)
    if existing is None:
        await client.create_variable(VariableCreate(name=SETTINGS_VARIABLE, value=value,
                                                    tags=["schedulemaster"]))
    else:
        await client.update_variable(VariableUpdate(name=SETTINGS_VARIABLE, value=value))
