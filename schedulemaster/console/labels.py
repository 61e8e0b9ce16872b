"""The console's words: Chinese as in the original's console, English on the switch."""

from __future__ import annotations

from typing import Callable

LANGS = ("zh", "en")
DEFAULT_LANG = "zh"

LABELS: dict[str, tuple[str, str]] = {
    "app": ("ScheduleMaster 控制台", "ScheduleMaster console"),
    "sign_in": ("登录", "Sign in"),
    "sign_out": ("退出", "Sign out"),
    "username": ("用户名", "User name"),
    "password": ("密码", "Password"),
    "bad_login": ("用户名或密码错误", "Wrong user name or password"),
    "expired_form": ("页面已过期，请重试", "This page expired; try again"),
    "tasks": ("任务管理", "Tasks"),
    "new_task": ("创建任务", "New task"),
    "edit_task": ("编辑任务", "Edit task"),
    "title": ("任务名称", "Title"),
    "status": ("状态", "Status"),
    "all": ("全部", "All"),
    "cron": ("Cron 表达式", "Cron"),
    "next_fire": ("下次执行", "Next fire"),
    "last_run": ("上次执行", "Last run"),
    "total_runs": ("执行次数", "Runs"),
    "nodes": ("节点", "Nodes"),
    "any_node": ("任意节点", "any node"),
    "actions": ("操作", "Actions"),
    "search": ("查询", "Search"),
    "running": ("运行中", "Running"),
    "paused": ("已暂停", "Paused"),
    "stopped": ("已停止", "Stopped"),
    "start": ("启动", "Start"),
    "pause": ("暂停", "Pause"),
    "resume": ("恢复", "Resume"),
    "stop": ("停止", "Stop"),
    "runonce": ("立即执行", "Run once"),
    "delete": ("删除", "Delete"),
    "edit": ("编辑", "Edit"),
    "save": ("保存", "Save"),
    "cancel": ("取消", "Cancel"),
    "confirm_delete": ("确定删除该任务？", "Delete this task?"),
    "kind": ("任务类型", "Kind"),
    "http_task": ("HTTP 任务", "HTTP task"),
    "plugin_task": ("程序集任务", "Plugin task"),
    "run_loop": ("循环执行", "Repeat on the cron"),
    "start_date": ("开始时间", "Start date"),
    "end_date": ("结束时间", "End date"),
    "remark": ("备注", "Remark"),
    "url": ("请求地址", "URL"),
    "method": ("请求方式", "Method"),
    "content_type": ("Content-Type", "Content-Type"),
    "headers": ("请求头 (JSON)", "Headers (JSON)"),
    "body": ("请求体", "Body"),
    "assembly": ("程序集名称", "Assembly"),
    "class_name": ("类名", "Class"),
    "params": ("自定义参数 (JSON)", "Custom parameters (JSON)"),
    "keepers": ("监护人", "Keepers"),
    "nexts": ("子任务", "Child tasks"),
    "executors": ("指定节点", "Executors"),
    "run_now": ("创建后立即启动", "Start at once"),
    "upcoming": ("接下来的执行时间", "Next fire times"),
    "preview_none": ("无", "none"),
    "runs": ("运行记录", "Runs"),
    "scheduled": ("计划时间", "Scheduled"),
    "result": ("结果", "Result"),
    "elapsed": ("耗时 (秒)", "Elapsed (s)"),
    "in_prefect": ("在 Prefect 中查看", "Open in Prefect"),
    "no_tasks": ("没有任务", "No tasks"),
    "no_runs": ("还没有运行记录", "No runs yet"),
    "prev": ("上一页", "Previous"),
    "next": ("下一页", "Next"),
    "not_found": ("没有找到", "Not found"),
    "forbidden": ("当前账号没有权限", "This account may not do that"),
    "language": ("English", "中文"),
    "signed_in_as": ("当前用户", "Signed in as"),
    "result_0": ("运行中", "running"),
    "result_1": ("成功", "succeeded"),
    "result_2": ("失败", "failed"),
    "result_3": ("已取消", "cancelled"),
}

#: the legacy Status numbers (Status.Stop = 0, Running = 1, Paused = 2) by their word
STATUS_WORDS = {0: "stopped", 1: "running", 2: "paused"}


def translator(lang: str) -> Callable[[str], str]:
    index = LANGS.index(lang) if lang in LANGS else 0

    def t(key: str) -> str:
        pair = LABELS.get(key)
        return pair[index] if pair else key

    return t
