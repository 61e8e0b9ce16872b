"""CLI groups that talk to a running system through its legacy API: plugin, account, config.

They use the same door as any legacy client (``ms_auth_user`` / ``ms_auth_secret`` computed
from the password), so they work against a remote master as well as a local ``up``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import typer

Api = typer.Option("http://127.0.0.1:30000", "--api", envvar="SM_API", help="the legacy API's base URL (env SM_API)")
User = typer.Option("admin", "--user", envvar="SM_USER", help="ms_auth_user (env SM_USER)")
Password = typer.Option("111111", "--password", envvar="SM_PASSWORD", help="the user's password (env SM_PASSWORD)")

plugin_app = typer.Typer(help="Plugin packages (MetaType 1 tasks).", no_args_is_help=True)
account_app = typer.Typer(help="Accounts: the users API auth and Keepers refer to.", no_args_is_help=True)
config_app = typer.Typer(help="Settings (the original's systemconfigs).", no_args_is_help=True)
nodes_app = typer.Typer(help="Executor nodes: list, enable (启用), disable (休息), delete (删除).",
                        no_args_is_help=True)


def call(api: str, user: str, password: str, method: str, path: str, **kw) -> Any:
    """One legacy API call through ``LegacyClient``; prints the failure and exits (1, or 2
    for a request the API refused as malformed) unless the envelope says Success."""
    from schedulemaster.notebook.legacy_client import (LegacyAuthError, LegacyClient, LegacyError, LegacyUnavailable,
                                              LegacyValidationError)

    try:
        with LegacyClient(api, user, password) as client:
            body = client.envelope(method, path, **kw)
    except ValueError as exc:  # a URL that is not http(s)
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2)
    except LegacyAuthError:
        typer.echo("error: 401 (wrong user or password, or the user is disabled)", err=True)
        raise typer.Exit(1)
    except LegacyValidationError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2)
    except LegacyUnavailable as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1)
    except LegacyError as exc:
        if exc.http_status == 403:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(1)
        if exc.http_status == 413:
            typer.echo("error: 413 Payload Too Large (the API takes 1 MiB per request, 16 MiB per batch)", err=True)
            raise typer.Exit(2)
        raise
    if not isinstance(body, dict) or not body.get("Success"):
        typer.echo(f"error: {(body or {}).get('Message') if isinstance(body, dict) else body}", err=True)
        raise typer.Exit(1)
    return body


def _table(rows: list[dict[str, Any]], columns: list[str]) -> None:
    from rich.console import Console
    from rich.table import Table

    import sys

    table = Table(*columns)
    for row in rows:
        table.add_row(*["" if row.get(c) is None else str(row.get(c)) for c in columns])
    # piped into grep or a file: wide enough that no cell is cut
    Console(width=None if sys.stdout.isatty() else 250).print(table)


@plugin_app.command("upload")
def plugin_upload(file: Path = typer.Argument(..., help="<AssemblyName>.zip or <AssemblyName>.whl"),
                  api: str = Api, user: str = User, password: str = Password) -> None:
    """Upload a plugin package; tasks using it pick it up at their next Start."""
    if not file.is_file():
        typer.echo(f"error: {file} is not a file", err=True)
        raise typer.Exit(2)
    with file.open("rb") as fh:
        body = call(api, user, password, "POST", "Task/UploadPlugin",
                    files={"file": (file.name, fh, "application/zip")})
    data = body["Data"]
    typer.echo(f"uploaded {data['FileName']} ({data['Size']} bytes, sha256 {data['Sha256'][:16]}…); "
               f"tasks with AssemblyName={data['Name']} use it from their next Start")


@account_app.command("list")
def account_list(name: Optional[str] = typer.Option(None, "--name", help="part of the user or real name"),
                 api: str = Api, user: str = User, password: str = Password) -> None:
    """List the accounts (deleted ones excluded)."""
    params = {"pageNumber": 1, "pageSize": 1000, **({"name": name} if name else {})}
    data = call(api, user, password, "GET", "Account/QueryList", params=params)["Data"]
    _table(data["rows"], ["Id", "UserName", "RealName", "Role", "Email", "Phone", "Status", "LastLoginTime"])


@account_app.command("create")
def account_create(username: str = typer.Argument(...),
                   real_name: str = typer.Option(..., "--real-name"),
                   new_password: str = typer.Option(..., "--new-password", prompt=True, hide_input=True,
                                                    confirmation_prompt=True, help="the new account's password"),
                   email: Optional[str] = typer.Option(None, "--email"),
                   phone: Optional[str] = typer.Option(None, "--phone"),
                   role: str = typer.Option("operator", "--role", help="admin | operator | viewer"),
                   api: str = Api, user: str = User, password: str = Password) -> None:
    """Create an account (user names are unique, case-insensitively)."""
    data = {"UserName": username, "RealName": real_name, "Password": new_password, "Role": role,
            **({"Email": email} if email else {}), **({"Phone": phone} if phone else {})}
    body = call(api, user, password, "POST", "Account/Create", data=data)
    typer.echo(f"{body['Message']} id={body['Data']}")


@account_app.command("edit")
def account_edit(user_id: int = typer.Argument(..., min=1),
                 real_name: str = typer.Option(..., "--real-name"),
                 email: Optional[str] = typer.Option(None, "--email"),
                 phone: Optional[str] = typer.Option(None, "--phone"),
                 role: Optional[str] = typer.Option(None, "--role", help="admin | operator | viewer "
                                                    "[default: unchanged]"),
                 api: str = Api, user: str = User, password: str = Password) -> None:
    """Set an account's real name, email and phone (an option left out clears the field), and its role."""
    data = {"Id": user_id, "RealName": real_name, **({"Email": email} if email else {}),
            **({"Phone": phone} if phone else {}), **({"Role": role} if role else {})}
    typer.echo(call(api, user, password, "POST", "Account/Edit", data=data)["Message"])


def _status_command(action: str, help_text: str) -> None:
    def command(user_id: int = typer.Argument(..., min=1), api: str = Api, user: str = User,
                password: str = Password) -> None:
        typer.echo(call(api, user, password, "POST", f"Account/{action}", data={"id": user_id})["Message"])

    command.__doc__ = help_text
    account_app.command({"ResetPwd": "reset-password"}.get(action, action.lower()))(command)


_status_command("Enable", "Enable an account.")
_status_command("Disable", "Disable an account (its secret stops working).")
_status_command("Delete", "Delete an account (soft, as the original).")
_status_command("ResetPwd", "Reset an account's password to the default.")


@account_app.command("change-password")
def account_change_password(new_password: str = typer.Option(..., "--new-password", prompt=True, hide_input=True,
                                                             confirmation_prompt=True),
                            api: str = Api, user: str = User, password: str = Password) -> None:
    """Change the calling user's own password (--user / --password are the current ones)."""
    data = {"OldPassword": password, "NewPassword": new_password}
    typer.echo(call(api, user, password, "POST", "Account/ChangePwd", data=data)["Message"])


@config_app.command("list")
def config_list(api: str = Api, user: str = User, password: str = Password) -> None:
    """Show every setting (secrets masked)."""
    rows = call(api, user, password, "GET", "System/Configs")["Data"]
    _table(rows, ["Key", "Value", "Group", "Name", "UpdateTime", "UpdateUserName"])


@config_app.command("set")
def config_set(pairs: list[str] = typer.Argument(..., help="KEY=VALUE ..., e.g. Http_RequestTimeout=20"),
               api: str = Api, user: str = User, password: str = Password) -> None:
    """Change settings, all or none."""
    data: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            typer.echo(f"error: {pair!r} is not KEY=VALUE", err=True)
            raise typer.Exit(2)
        data[key.strip()] = value
    typer.echo(call(api, user, password, "POST", "System/SaveConfig", data=data)["Message"])


@nodes_app.command("list")
def nodes_list(api: str = Api, user: str = User, password: str = Password) -> None:
    """Every node with its status (下线 offline, 空闲 idle = disabled, 运行 running), priority,
    max concurrency and the firings it holds now."""
    data = call(api, user, password, "GET", "Node/QueryList")["Data"]
    _table(data["rows"], ["NodeName", "Status", "StatusText", "Enabled", "Priority", "MaxConcurrency",
                          "RunningFirings", "MachineName", "LastUpdateTime"])


@nodes_app.command("edit")
def nodes_edit(name: str = typer.Argument(..., help="the node's name (schedulemaster node --name)"),
               priority: Optional[int] = typer.Option(None, "--priority", min=0, max=1000,
                                                      help="weight in routing; 0 = only when no other node may"),
               maxc: Optional[int] = typer.Option(None, "--maxc", min=1, max=1000, help="firings run at once"),
               api: str = Api, user: str = User, password: str = Password) -> None:
    """Change a node's priority and max concurrency; the node applies them within seconds."""
    if priority is None and maxc is None:
        typer.echo("error: give --priority and/or --maxc", err=True)
        raise typer.Exit(2)
    data = {"name": name, **({"priority": priority} if priority is not None else {}),
            **({"maxConcurrency": maxc} if maxc is not None else {})}
    typer.echo(call(api, user, password, "POST", "Node/Edit", data=data)["Message"])


def _node_command(action: str, help_text: str) -> None:
    def command(name: str = typer.Argument(..., help="the node's name (schedulemaster node --name)"),
                api: str = Api, user: str = User, password: str = Password) -> None:
        typer.echo(call(api, user, password, "POST", f"Node/{action}", data={"name": name})["Message"])

    command.__doc__ = help_text
    nodes_app.command(action.lower())(command)


_node_command("Enable", "Let the node fire tasks again.")
_node_command("Disable", "Take the node out of the rotation: its tasks move to the other allowed nodes.")
_node_command("Delete", "Forget an offline node (refused while it is alive).")
