"""The server manager (``symoe_agents.servers``): starts, probes and stops model servers."""

from .base import Backend, Endpoint, Launch
from .manager import ServerManager, backend_for
from .process import ServerProcess, free_port, live_servers

__all__ = ["Backend", "Endpoint", "Launch", "ServerManager", "ServerProcess", "backend_for", "free_port", "live_servers"]
