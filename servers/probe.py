"""A minimal async HTTP GET for readiness probes of local servers.

Why not an HTTP library: probes only ever talk plain HTTP to 127.0.0.1, and the HTTP client
that openai ships has changed package names across major versions (httpx, httpx2). The
standard library's asyncio streams are enough and never block the event loop.
"""

from __future__ import annotations

import asyncio


async def http_get(
    host: str, port: int, path: str, headers: dict[str, str] | None = None, timeout: float = 5.0
) -> tuple[int, bytes]:
    """Return (status, body). Raises OSError/TimeoutError when nothing answers."""
    async with asyncio.timeout(timeout):
        reader, writer = await asyncio.open_connection(host, port)
        try:
            head = [f"GET {path} HTTP/1.1", f"Host: {host}:{port}", "Connection: close", "Accept: */*"]
            head += [f"{k}: {v}" for k, v in (headers or {}).items()]
            writer.write(("\r\n".join(head) + "\r\n\r\n").encode("latin-1"))
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
    _, _, body = rest.partition(b"\r\n\r\n")
    return int(parts[1]), body
