"""Where an HTTP task or a delayed callback may be sent, and what its request may carry.

Checked when a task or a delayed task is created or edited, so that what can never work, or
would be dangerous, is refused with the field named and nothing written:

- a URL with control characters (CR/LF would split the request line), a port outside 1-65535,
  a scheme other than http(s);
- a link-local or cloud metadata address (169.254.169.254 hands out cloud credentials to
  whoever asks from the machine): denied by default; loopback and private networks stay
  allowed, since users call their own services. The settings ``Http_DeniedNetworks`` and
  ``Http_AllowedNetworks`` (comma-separated CIDRs) add networks to deny, or allow some of
  the default ones back;
- header names that are not HTTP tokens, values with control characters, and the headers
  that frame the request (Content-Length, Host, Transfer-Encoding, ...);
- JSON nested deeper than ``MAX_JSON_DEPTH`` (Python's parser recurses once per level).
"""

from __future__ import annotations

import asyncio
import functools
import ipaddress
import re
import socket
import time
from typing import Iterable
from urllib.parse import urlsplit

MAX_JSON_DEPTH = 32
HTTP_METHODS = ("GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS")
#: link-local (v4, v6), "this network", and the metadata services that are not link-local
DEFAULT_DENIED = ("169.254.0.0/16", "fe80::/10", "0.0.0.0/8", "100.100.100.200/32", "168.63.129.16/32",
                  "fd00:ec2::254/128")
METADATA_HOSTS = {"metadata", "metadata.google.internal", "metadata.goog", "instance-data",
                  "instance-data.ec2.internal"}
FRAMING_HEADERS = {"content-length", "host", "transfer-encoding", "connection", "upgrade", "te", "trailer",
                   "keep-alive", "expect", "proxy-connection"}
_TOKEN = re.compile(r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]{1,100}$")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_VALUE_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")  # a header value may hold a tab


class TargetError(ValueError):
    """The address or the request can never be sent, or must not be."""


def networks(text: str | None) -> list[ipaddress._BaseNetwork]:
    """Comma-separated CIDRs (a bare address is a /32 or /128); raises ValueError naming a bad one."""
    out = []
    for part in (text or "").split(","):
        part = part.strip()
        if part:
            try:
                out.append(ipaddress.ip_network(part, strict=False))
            except ValueError:
                raise ValueError(f"'{part[:60]}' is not a network (e.g. 10.0.0.0/8 or 169.254.169.254)") from None
    return out


class NetworkPolicy:
    """Which addresses requests may go to: the default denied networks, plus the ones a
    setting denies, minus the ones a setting allows."""

    def __init__(self, denied: str | None = None, allowed: str | None = None):
        self.denied = networks(",".join(DEFAULT_DENIED)) + networks(denied)
        self.allowed = networks(allowed)

    @classmethod
    def from_settings(cls, configs: dict[str, str]) -> "NetworkPolicy":
        return _policy(configs.get("Http_DeniedNetworks") or "", configs.get("Http_AllowedNetworks") or "")

    def refuses(self, address: str) -> bool:
        try:
            ip = ipaddress.ip_address(address.split("%", 1)[0])
        except ValueError:
            return False
        if getattr(ip, "ipv4_mapped", None):
            ip = ip.ipv4_mapped
        if any(ip.version == n.version and ip in n for n in self.allowed):
            return False
        return any(ip.version == n.version and ip in n for n in self.denied)


@functools.lru_cache(maxsize=16)
def _policy(denied: str, allowed: str) -> NetworkPolicy:
    """One parsed policy per settings value (a busy client creates a thousand callbacks a second)."""
    try:
        return NetworkPolicy(denied, allowed)
    except ValueError:  # validated when saved; a bad stored value falls back to the defaults
        return NetworkPolicy()


def check_url(url: str, field: str, policy: NetworkPolicy) -> str:
    """The URL stripped, or TargetError saying what is wrong with it in ``field``, from its
    text alone; a host name's addresses are checked by ``acheck_resolved``."""
    return _check_literal(url.strip(), field, policy)


@functools.lru_cache(maxsize=4096)
def _check_literal(url: str, field: str, policy: NetworkPolicy) -> str:
    """What can be told from the URL's text alone; cached, since clients send the same few
    callback URLs over and over (a thousand creates a second)."""
    if _CONTROL.search(url):  # a space is escaped when sent (as .NET did); CR/LF would split the request
        raise TargetError(f"{field} 不能包含控制字符 (CR/LF/NUL)")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise TargetError(f"{field} 无效：{exc}") from None
    if parts.scheme.lower() not in ("http", "https") or not parts.hostname:
        raise TargetError(f"{field} 必须是 http:// 或 https:// 开头的绝对地址")
    if port is not None and not 1 <= port <= 65535:
        raise TargetError(f"{field} 的端口必须在 1-65535 之间")
    host = parts.hostname.rstrip(".").lower()
    if host in METADATA_HOSTS:
        raise TargetError(f"{field} 指向云主机的元数据服务 ({host})，不允许")
    _check_addresses([host], field, policy)
    return url


async def acheck_url(url: str, field: str, policy: NetworkPolicy) -> str:
    """``check_url``, then the addresses its host name resolves to (``acheck_resolved``)."""
    url = check_url(url, field, policy)
    await acheck_resolved(url, field, policy)
    return url


async def acheck_resolved(url: str, field: str, policy: NetworkPolicy) -> None:
    """The addresses a URL's host name resolves to (a URL ``check_url`` already took), looked
    up in a thread unless known from the last minute (a resolver can take seconds, and the
    master's loop is Prefect's too); an IP literal costs nothing."""
    host = (urlsplit(url).hostname or "").rstrip(".").lower()
    if _is_ip(host):
        return
    hit = _resolved.get(host)
    found = hit[0] if hit is not None and time.monotonic() - hit[1] < RESOLVE_TTL else \
        await asyncio.to_thread(_resolve, host)
    _check_addresses(found, field, policy)


def _check_addresses(addresses: list[str], field: str, policy: NetworkPolicy) -> None:
    for address in addresses:
        if policy.refuses(address):
            raise TargetError(f"{field} 指向受保护的网络地址 {address}（链路本地或云元数据地址；"
                              f"设置 Http_AllowedNetworks 可放行）")


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
        return True
    except ValueError:
        return False


_resolved: dict[str, tuple[list[str], float]] = {}
RESOLVE_TTL = 60.0


def _resolve(host: str) -> list[str]:
    """The addresses a name has now (cached a minute: a client creating a thousand callbacks
    a second to one host costs one lookup); none when it does not resolve here (a node may
    resolve it; the request itself will say)."""
    hit = _resolved.get(host)
    if hit is not None and time.monotonic() - hit[1] < RESOLVE_TTL:
        return hit[0]
    try:
        found = sorted({info[4][0] for info in socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)})
    except (OSError, UnicodeError):
        found = []
    if len(_resolved) > 10_000:
        _resolved.clear()
    _resolved[host] = (found, time.monotonic())
    return found


def check_method(method: str) -> str:
    m = method.strip().upper()
    if m not in HTTP_METHODS:
        raise TargetError(f"HttpMethod '{method[:10]}' 不是有效的HTTP方法（可选：{' / '.join(HTTP_METHODS)}）")
    return m


def check_headers(pairs: Iterable[tuple[str, str]], field: str = "HttpHeaders") -> None:
    for key, value in pairs:
        if not _TOKEN.match(key):
            raise TargetError(f"{field} 的头名称 '{key[:40]!r}' 无效（只能是 HTTP token 字符，不能含空格或控制字符）")
        if key.lower() in FRAMING_HEADERS:
            raise TargetError(f"{field} 不能设置 {key}：它由请求本身决定")
        if _VALUE_CONTROL.search(value) or len(value) > 8000:
            raise TargetError(f"{field} 的 {key} 值不能包含控制字符 (CR/LF/NUL)，最长 8000 个字符")


def json_depth(text: str) -> int:
    """How deeply arrays and objects nest in ``text`` (JSON or not), without parsing it: a
    scan that skips strings, so depth is known before a recursive parser sees the text."""
    depth = deepest = 0
    in_string = escaped = False
    for ch in text:
        if in_string:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_string = False
        elif ch == '"':
            in_string = True
        elif ch in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif ch in "]}":
            depth -= 1
    return deepest


def check_json_depth(text: str | None, field: str) -> None:
    if text and json_depth(text) > MAX_JSON_DEPTH:
        raise TargetError(f"{field} 的 JSON 嵌套超过 {MAX_JSON_DEPTH} 层")
