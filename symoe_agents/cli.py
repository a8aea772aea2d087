"""The ``symoe`` command line. ``asyncio.run`` happens here and nowhere else.

Signals: the first Ctrl-C or SIGTERM cancels the run; cancellation unwinds through the
controller and the server manager, which stop every server symoe started; the command
exits 130 (SIGINT) or 143 (SIGTERM). A second signal kills the servers at once and exits.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from .cli_common import err
from .config import embedded_config_text, load_config
from .errors import ConfigError
from .preflight import prompt_problems

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="Symbolic Mixture-of-Experts: route each question to skill-matched expert LLMs and aggregate their answers.",
)


@app.callback()
def _root() -> None:
    """Symbolic Mixture-of-Experts on local OpenAI-compatible servers."""


from .cli_solve import solve  # noqa: E402

app.command("solve")(solve)


@app.command("config")
def show_config(
    config: Annotated[Optional[Path], typer.Option("--config", help="validate this file instead of printing the built-in pool")] = None,
) -> None:
    """Print the built-in embedded pool's TOML (a starting point), or validate --config FILE."""
    if config is None:
        print(embedded_config_text(), end="")
        return
    try:
        cfg = load_config(config)
    except ConfigError as exc:
        err(f"error: {exc}")
        raise typer.Exit(2) from None
    problems = prompt_problems(cfg.prompts_dir)  # reading a few small files: cheap enough to validate here too
    if problems:
        err("\n".join(f"error: {config}: {p}" for p in problems))
        raise typer.Exit(2)
    print(f"{config}: ok")
    for name, m in cfg.models.items():
        roles = [r for r, v in (("skills", cfg.roles.skill_inferencer), ("aggregator", cfg.roles.aggregator)) if v == name]
        if name in cfg.roles.experts:
            roles.insert(0, "expert")
        print(f"  {name:<24} {m.backend:<9} {', '.join(roles) or '-'}")


from .cli_eval import evaluate  # noqa: E402
from .cli_profiles import pick_aggregator, profile  # noqa: E402
from .cli_servers import check, servers_app  # noqa: E402
from .cli_serve import serve  # noqa: E402

app.command("check")(check)
app.command("profile")(profile)
app.command("pick-aggregator")(pick_aggregator)
app.command("eval")(evaluate)
app.command("serve")(serve)
app.add_typer(servers_app, name="servers")


def main() -> None:
    app()


if __name__ == "__main__":
    main()
