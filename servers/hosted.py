"""Hosted OpenAI-compatible endpoints: nothing to start or stop, a key from the environment."""

from __future__ import annotations

import os

from symoe_agents import redaction
from symoe_agents.config import OpenAIModel
from symoe_agents.errors import EndpointError

from .base import Endpoint


def hosted_endpoint(name: str, cfg: OpenAIModel) -> Endpoint:
    key = "not-needed"
    if cfg.api_key_env:
        key = os.environ.get(cfg.api_key_env, "")
        if not key:
            raise EndpointError(
                f"model '{name}': environment variable {cfg.api_key_env} is not set; "
                f"export {cfg.api_key_env}=<your key> (config: models.{name}.api_key_env)"
            )
        redaction.remember(key)  # scrubbed from every error message from now on
    return Endpoint(base_url=cfg.base_url, served_model=cfg.model, api_key=key, key_env=cfg.api_key_env)
