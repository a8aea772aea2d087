"""GPU memory, read through ``nvidia-smi`` when it is there (no NVML binding needed).

Used to (1) wait until a stopped server's GPU memory is really released before the next
server starts (polled under a deadline, never a fixed sleep), (2) record each server's peak
GPU memory, and (3) size co-resident servers from what is free at their start. Where
``nvidia-smi`` is missing, every call answers "unknown" and symoe falls back to process
and port checks alone.
"""

from __future__ import annotations

import asyncio
import shutil
from dataclasses import dataclass

from symoe_agents.redaction import child_env


@dataclass(frozen=True)
class GpuInfo:
    index: int
    total_mib: int
    used_mib: int
    free_mib: int


class GpuMonitor:
    def __init__(self, exe: str):
        self.exe = exe

    @classmethod
    def detect(cls) -> "GpuMonitor | None":
        exe = shutil.which("nvidia-smi")
        return cls(exe) if exe else None

    async def _query(self, *args: str) -> list[list[str]]:
        proc = await asyncio.create_subprocess_exec(
            self.exe, *args, "--format=csv,noheader,nounits",
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL, env=child_env(),
        )  # fmt: skip
        try:
            out, _ = await asyncio.wait_for(proc.communicate(), timeout=15)
        except asyncio.TimeoutError:
            proc.kill()
            await proc.wait()
            raise OSError("nvidia-smi did not answer within 15 s") from None
        if proc.returncode != 0:
            raise OSError(f"nvidia-smi exited with {proc.returncode}")
        return [[c.strip() for c in line.split(",")] for line in out.decode().splitlines() if line.strip()]

    async def gpus(self) -> list[GpuInfo]:
        rows = await self._query("--query-gpu=index,memory.total,memory.used,memory.free")
        return [GpuInfo(int(r[0]), int(float(r[1])), int(float(r[2])), int(float(r[3]))) for r in rows]

    async def process_memory(self) -> dict[int, int]:
        """MiB of GPU memory held by each process that holds any."""
        rows = await self._query("--query-compute-apps=pid,used_memory")
        out: dict[int, int] = {}
        for r in rows:
            if len(r) >= 2 and r[0].isdigit():
                try:
                    out[int(r[0])] = out.get(int(r[0]), 0) + int(float(r[1]))
                except ValueError:
                    continue
        return out


@dataclass(frozen=True)
class MemoryShare:
    """What a co-resident server may take: ``need_gib`` out of ``free_gib`` free at its start
    on a device of ``total_gib``."""

    need_gib: float
    free_gib: float
    total_gib: float

    def of_free(self, headroom_gib: float = 1.0) -> float:
        """SGLang's --mem-fraction-static: a fraction of the memory free at launch."""
        usable = min(self.need_gib, self.free_gib - headroom_gib)
        return 0.0 if usable <= 0 or self.free_gib <= 0 else round(min(0.95, usable / self.free_gib), 4)

    def of_total(self, headroom_gib: float = 1.0) -> float:
        """vLLM's --gpu-memory-utilization: this instance's fraction of the whole device."""
        usable = min(self.need_gib, self.free_gib - headroom_gib)
        return 0.0 if usable <= 0 or self.total_gib <= 0 else round(min(0.95, usable / self.total_gib), 4)
