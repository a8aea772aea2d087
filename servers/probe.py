"""A minimal async HTTP client for readiness probes and control calls to local servers.

Why not an HTTP library: these calls only ever talk plain HTTP to 127.0.0.1, and the HTTP
client that openai ships has changed package names across major versions (httpx, httpx2).
The standard library's asyncio streams are enough and never block the event loop.
"""

from __future__ import annotations

import asyncio
import json


async def http_request(
    method: str,
    host: str,
    port: int,
    path: str,
    headers: dict[str, str] | None = None,
    body: bytes = b"",
    timeout: float = 5.0,
) -> tuple[int, bytes]:
    """Return (status, body). Raises OSError/TimeoutError when nothing answers."""
    async with asyncio.timeout(timeout):
        reader, writer = await asyncio.open_connection(host, port)
        try:
            head = [f"{method} {path} HTTP/1.1", f"Host: {host}:{port}", "Connection: close", "Accept: */*"]
            head += [f"{k}: {v}" for k, v in (headers or {}).items()]
            if body or method in ("POST", "PUT"):
                head += ["Content-Type: application/json", f"Content-Length: {len(body)}"]
            writer.write(("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + body)
            await writer.drain()
            data = await reader.read()
        finally:
            writer.close()
            try:
                await writer.wait_closed()
            except OSError:
                pass
    status_line, _, rest = data.partition(b"\r\n")
    parts = status_line.split()
    if len(parts) < 2 or not parts[1].isdigit():
        raise OSError(f"not an HTTP response from {host}:{port}{path}")
    _, _, payload = rest.partition(b"\r\n\r\n")
    return int(parts[1]), payload


async def http_get(
    host: str, port: int, path: str, headers: dict[str, str] | None = None, timeout: float = 5.0
) -> tuple[int, bytes]:
    return await http_request("GET", host, port, path, headers, timeout=timeout)


async def lists_model(host: str, port: int, served: str, headers: dict[str, str], timeout: float = 5.0) -> bool:
    """True when GET /v1/models answers 200 and lists ``served``."""
    status, body = await http_get(host, port, "/v1/models", headers, timeout)
    if status != 200:
        return False
    try:
        return served in [m.get("id") for m in json.loads(body or b"{}").get("data", [])]
    except (ValueError, AttributeError):
        return False


async def post_ok(port: int, path: str, api_key: str, timeout: float = 120.0) -> None:
    """POST a control route (sleep, wake) on a local server; raise OSError unless 200."""
    status, body = await http_request(
        "POST", "127.0.0.1", port, path, {"Authorization": f"Bearer {api_key}"}, b"{}", timeout=timeout
    )
    if status != 200:
        raise OSError(f"POST {path} answered {status}: {body[:200]!r}")
