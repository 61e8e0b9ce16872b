"""API extensions for what the original only offered in its console: accounts and settings.

Same door as the Task API (``ms_auth_user`` / ``ms_auth_secret``), same envelope, same form
binding. The console had no roles; here accounts, settings and the audit trail need the admin
role (ms_compat/roles.py), and the last enabled admin cannot be disabled, deleted or demoted.
Passwords are stored as the original stored them (lowercase hex MD5), so existing
``ms_auth_secret`` values keep working after an import.
"""

from __future__ import annotations

import asyncio
import json
import re
from typing import Any, Awaitable, Callable
from zoneinfo import ZoneInfo

from fastapi import FastAPI, Request

from schedulemaster import alarms
from schedulemaster.flows.targets import networks
from schedulemaster.ms_compat import responses as R
from schedulemaster.ms_compat import roles
from schedulemaster.ms_compat.binding import F, FormValues, id_from_form_or_query, page_bounds
from schedulemaster.store import audit as audit_store
from schedulemaster.store.db import DEFAULT_ADMIN, Store, SystemUser, md5_hex

USER_LIST = [F("pageNumber", "int"), F("pageSize", "int"), F("name", max_length=50)]
USER_CREATE = [F("UserName", required=True, max_length=50), F("RealName", required=True, max_length=50),
               F("Password", max_length=50), F("Phone", max_length=15), F("Email", max_length=500),
               F("Role", max_length=10)]
USER_EDIT = [F("Id", "int", required=True), F("RealName", required=True, max_length=50),
             F("Phone", max_length=15), F("Email", max_length=500), F("Role", max_length=10)]
AUDIT_QUERY = [F("pageNumber", "int"), F("pageSize", "int"), F("actor", max_length=50),
               F("resource", max_length=100), F("action", max_length=20), F("kind", max_length=20),
               F("startDate", "date"), F("endDate", "date")]
USER_ID = [F("id", "int", required=True)]
CHANGE_PWD = [F("OldPassword", required=True, max_length=50), F("NewPassword", required=True, max_length=50)]

_USERNAME = re.compile(r"^[A-Za-z0-9_.@-]{2,50}$")
_EMAIL = re.compile(r"^[^@\s<>,;\"]+@[^@\s<>,;\"]+\.[^@\s<>,;\"]+$")
_PHONE = re.compile(r"^[0-9+\-() ]{0,15}$")
MIN_PASSWORD = 6

# settings whose values must parse, and how (the original accepted anything and failed later)
_INT = re.compile(r"^\d{1,9}$")


def _networks_ok(value: str) -> bool:
    try:
        networks(value)
        return len(value) <= 1000
    except ValueError:
        return False


CONFIG_RULES: dict[str, tuple[Callable[[str], bool], str]] = {
    "Email_SmtpPort": (lambda v: v == "" or (_INT.match(v) is not None and 0 < int(v) < 65536), "1-65535 或留空"),
    "Http_RequestTimeout": (lambda v: _INT.match(v) is not None, "非负整数（秒）"),
    "Http_FailOnNon2xx": (lambda v: v.lower() in ("true", "false"), "true 或 false"),
    "System_WorkerUnHealthTimes": (lambda v: _INT.match(v) is not None, "非负整数"),
    "DelayTask_DelayPattern": (lambda v: v in ("Relative", "Absolute"), "Relative 或 Absolute"),
    "DelayTask_RetryTimes": (lambda v: _INT.match(v) is not None and int(v) <= 100, "0-100"),
    "DelayTask_RetrySpans": (lambda v: _INT.match(v) is not None and int(v) <= 86400, "0-86400（秒）"),
    "DelayTask_RequestTimeout": (lambda v: _INT.match(v) is not None and 1 <= int(v) <= 600, "1-600（秒）"),
    "Assembly_ImagePullPolicy": (lambda v: v in ("Always", "IfNotPresent"), "Always 或 IfNotPresent"),
    "Http_DeniedNetworks": (_networks_ok, "逗号分隔的网段，如 10.9.0.0/16,192.0.2.7"),
    "Http_AllowedNetworks": (_networks_ok, "逗号分隔的网段，如 169.254.0.0/16"),
    alarms.SETTING: (alarms.check, f"Apprise 支持的 URL，逗号或空格分隔，最多 {alarms.MAX_URLS} 个"),
}
SECRET_SUFFIX = "Pwd"
MASK = "******"


def user_row(u: SystemUser, fmt) -> dict[str, Any]:
    return {"Id": u.id, "UserName": u.username, "RealName": u.realname, "Phone": u.phone, "Email": u.email,
            "Status": u.status, "CreateTime": fmt(u.createtime), "LastLoginTime": fmt(u.lastlogintime),
            "Role": u.role}


def add_admin_routes(app: FastAPI, store: Store, guarded, form_of: Callable[[Request], Awaitable[FormValues]],
                     fmt_date: Callable, on_settings_saved: Callable[[], Awaitable[None]]) -> None:
    """Register /api/Account/* and /api/System/* on the legacy app (paths are lowercased there)."""

    def check_contact(m: dict[str, Any]) -> str | None:
        if m.get("Email") and not _EMAIL.match(m["Email"]):
            return "邮箱格式不正确!"
        if m.get("Phone") and not _PHONE.match(m["Phone"]):
            return "手机号码格式不正确!"
        return None

    @app.get("/api/account/querylist")
    async def account_list(request: Request):
        async def act(m, _user):
            page, size = page_bounds(m["pageNumber"], m["pageSize"], 10)
            users = await asyncio.to_thread(store.list_users, m["name"])
            rows = [user_row(u, fmt_date) for u in users[(page - 1) * size: page * size]]
            return R.ok("请求数据成功", {"total": len(users), "rows": rows})

        return await guarded(request, USER_LIST, FormValues(request.query_params.multi_items()), act)

    @app.post("/api/account/create")
    async def account_create(request: Request):
        async def act(m, _user):
            if not _USERNAME.match(m["UserName"]):
                return R.failed("用户名只能包含字母、数字和 _ . @ -，长度 2-50!")
            password = m["Password"] if m["Password"] is not None else DEFAULT_ADMIN[1]
            if len(password) < MIN_PASSWORD:
                return R.failed(f"密码至少 {MIN_PASSWORD} 位!")
            if (why := check_contact(m)) is not None:
                return R.failed(why)
            role = roles.parse(m["Role"]) if m["Role"] else roles.DEFAULT_NEW
            if role is None:
                return R.failed(f"Role 只能是 {' / '.join(roles.ROLES)}!")
            try:
                user = await asyncio.to_thread(store.create_user, m["UserName"], password, m["RealName"], m["Phone"],
                                              m["Email"], role)
            except ValueError:
                return R.failed("用户名已存在!")
            return R.ok("账号创建成功!", user.id)

        return await guarded(request, USER_CREATE, await form_of(request), act)

    @app.post("/api/account/edit")
    async def account_edit(request: Request):
        async def act(m, _user):
            if (why := check_contact(m)) is not None:
                return R.failed(why)
            values = {"realname": m["RealName"], "phone": m["Phone"], "email": m["Email"]}
            if m["Role"]:
                role = roles.parse(m["Role"])
                if role is None:
                    return R.failed(f"Role 只能是 {' / '.join(roles.ROLES)}!")
                if role != roles.ADMIN and await asyncio.to_thread(store.enabled_admins) == [m["Id"]]:
                    return R.failed("至少要保留一个启用的管理员账号!")
                values["role"] = role
            if not await asyncio.to_thread(store.update_user, m["Id"], **values):
                return R.failed("账号不存在!")
            return R.ok("账号编辑成功!")

        return await guarded(request, USER_EDIT, await form_of(request), act)

    def status_action(path: str, status: int, done: str):
        async def endpoint(request: Request):
            async def act(m, user: SystemUser):
                if m["id"] == user.id and status != 1:
                    return R.failed("不能禁用或删除当前登录的账号!")
                if m["id"] == 1 and status == -1:
                    return R.failed("不能删除超级管理员!")
                if status != 1 and await asyncio.to_thread(store.enabled_admins) == [m["id"]]:
                    return R.failed("至少要保留一个启用的管理员账号!")
                if not await asyncio.to_thread(store.update_user, m["id"], status=status):
                    return R.failed("账号不存在!")
                return R.ok(done)

            return await guarded(request, USER_ID, id_from_form_or_query(
                await form_of(request), request.query_params.multi_items()), act)

        endpoint.__name__ = f"account_{path}"
        app.post(f"/api/account/{path}")(endpoint)

    status_action("enable", 1, "账号已启用!")
    status_action("disable", 0, "账号已禁用!")
    status_action("delete", -1, "账号已删除!")

    @app.post("/api/account/resetpwd")
    async def account_reset(request: Request):
        async def act(m, _user):
            if not await asyncio.to_thread(store.update_user, m["id"], password=md5_hex(DEFAULT_ADMIN[1])):
                return R.failed("账号不存在!")
            return R.ok(f"密码已重置为 {DEFAULT_ADMIN[1]}!")

        return await guarded(request, USER_ID, id_from_form_or_query(
            await form_of(request), request.query_params.multi_items()), act)

    @app.post("/api/account/changepwd")
    async def account_change_password(request: Request):
        async def act(m, user: SystemUser):
            import hmac

            if not hmac.compare_digest(md5_hex(m["OldPassword"]), user.password):
                return R.failed("原密码错误!")
            if len(m["NewPassword"]) < MIN_PASSWORD:
                return R.failed(f"密码至少 {MIN_PASSWORD} 位!")
            await asyncio.to_thread(store.update_user, user.id, password=md5_hex(m["NewPassword"]))
            return R.ok("密码修改成功!")

        return await guarded(request, CHANGE_PWD, await form_of(request), act)

    @app.get("/api/system/configs")
    async def config_list(request: Request):
        async def act(_m, _user):
            rows = [{"Key": c.key, "Group": c.group, "Name": c.name,
                     "Value": (MASK if c.value else "") if c.key.endswith(SECRET_SUFFIX) else c.value,
                     "Sort": c.sort, "Remark": c.remark, "UpdateTime": fmt_date(c.updatetime),
                     "UpdateUserName": c.updateusername} for c in await asyncio.to_thread(store.config_rows)]
            return R.ok("请求数据成功", rows)

        return await guarded(request, [], FormValues([]), act)

    @app.post("/api/system/saveconfig")
    async def config_save(request: Request):
        form = await form_of(request)

        async def act(_m, user: SystemUser):
            known = {c.key.lower(): c.key for c in await asyncio.to_thread(store.config_rows)}
            values: dict[str, str] = {}
            for raw_key, vals in form.plain.items():
                key = known.get(raw_key)
                if key is None:
                    return R.failed(f"未知的配置项：{raw_key[:50]}")
                value = (vals[-1] if vals else "").strip()
                if len(value) > 1000:
                    return R.failed(f"{key} 的值过长（最多 1000 个字符）")
                if key.endswith(SECRET_SUFFIX) and value == MASK:
                    continue  # the masked value shown by Configs: unchanged
                rule = CONFIG_RULES.get(key)
                if rule is not None and not rule[0](value):
                    return R.failed(f"{key} 的值无效：{value[:50]}（应为 {rule[1]}）")
                values[key] = value
            if not form.plain:
                return R.failed("没有要保存的配置项!")
            if not values:  # only masked secrets came back: nothing changes
                return R.ok("保存成功!")
            await asyncio.to_thread(store.set_configs, values, user.username)
            await on_settings_saved()
            return R.ok("保存成功!")

        return await guarded(request, [], FormValues([]) if not form.broken else form, act)


def add_audit_route(app: FastAPI, guarded, trail, tz_of: Callable[[], str]) -> None:
    """``GET /api/System/QueryAudit``: the audit trail, newest first (ms_compat/audit.py)."""

    @app.get("/api/system/queryaudit")
    async def query_audit(request: Request):
        async def act(m, _user):
            page, size = page_bounds(m["pageNumber"], m["pageSize"], 20)
            zone = ZoneInfo(tz_of())
            aware = lambda d: d.replace(tzinfo=zone) if d is not None else None  # noqa: E731
            start, end = aware(m["startDate"]), aware(m["endDate"])
            total, rows = await asyncio.to_thread(audit_store.query, trail.engine, m["actor"], m["resource"],
                                                  m["action"], m["kind"], start, end, page, size)
            return R.ok("请求数据成功", {"total": total, "rows": [{
                "Id": e.id, "Time": R.fmt_date(e.at.astimezone(zone).replace(tzinfo=None)), "Actor": e.actor,
                "Role": e.role, "Address": e.address, "Kind": e.kind, "Action": e.action, "Resource": e.resource,
                "Outcome": e.outcome, "Message": e.message, "Changes": json.loads(e.changes or "{}")}
                for e in rows]})

        return await guarded(request, AUDIT_QUERY, FormValues(request.query_params.multi_items()), act)
