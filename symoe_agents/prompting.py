"""Strict prompt templates.

Why strict: research code in this field has shipped prompts with silently missing pieces.
Here a template is a file; rendering fails if a variable is missing or unknown, and every
rendered prompt carries the hash of its template and of its full text, so a run records
exactly what each model was asked.
"""

from __future__ import annotations

import hashlib
import string
from dataclasses import dataclass
from functools import lru_cache
from importlib.resources import files
from pathlib import Path

from .errors import PromptError

TEMPLATE_NAMES = (
    "skills",
    "expert",
    "aggregator",
    "answer_multiple_choice",
    "answer_math",
    "answer_free",
)


def sha256(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class RenderedPrompt:
    text: str
    template: str
    template_sha256: str
    sha256: str


def _braced(names: list[str]) -> str:
    return ", ".join(f"{{{name}}}" for name in names)


@dataclass(frozen=True)
class PromptTemplate:
    name: str
    text: str

    @property
    def fields(self) -> frozenset[str]:
        try:
            return frozenset(f for _, f, _, _ in string.Formatter().parse(self.text) if f is not None)
        except ValueError as exc:
            raise PromptError(f"template {self.name}.md is malformed ({exc}); double literal braces: {{{{ }}}}") from None

    def render(self, **variables: str) -> RenderedPrompt:
        expected = self.fields
        not_provided = sorted(expected - variables.keys())
        unused = sorted(variables.keys() - expected)
        if not_provided or unused:
            # worded for whoever edits the file: preflight shows this before a run is paid for
            parts = []
            if not_provided:
                parts.append(f"uses {_braced(not_provided)}, which symoe does not provide; "
                             f"it provides: {', '.join(sorted(variables)) or 'nothing'}")  # fmt: skip
            if unused:
                parts.append(f"lacks {_braced(unused)}, which symoe provides and the prompt needs; add it")
            raise PromptError(f"template {self.name}.md " + "; ".join(parts))
        try:
            text = self.text.format(**variables)
        except (ValueError, KeyError, IndexError, AttributeError) as exc:  # a bad !conversion, :spec or nested {field}
            raise PromptError(f"template {self.name}.md is malformed ({type(exc).__name__}: {exc}); double literal braces: {{{{ }}}}") from None
        return RenderedPrompt(text=text, template=self.name, template_sha256=sha256(self.text), sha256=sha256(text))


@lru_cache(maxsize=64)
def _read(name: str, directory: str | None) -> str:
    if directory is not None:
        path = Path(directory) / f"{name}.md"
        if not path.is_file():
            raise PromptError(f"template {name}.md not found ({path}); copy it from the built-in prompts in {files('symoe_agents.prompts')}")
        try:
            return path.read_text(encoding="utf-8").rstrip("\n")
        except UnicodeDecodeError as exc:
            raise PromptError(f"template {name}.md ({path}) is not UTF-8 (byte {exc.start}); save it as UTF-8") from None
        except OSError as exc:
            raise PromptError(f"template {name}.md ({path}) cannot be read: {exc.strerror}") from None
    resource = files("symoe_agents.prompts").joinpath(f"{name}.md")
    if not resource.is_file():
        raise PromptError(f"built-in prompt template '{name}' is missing from the installed package")
    return resource.read_text(encoding="utf-8").rstrip("\n")


def load_template(name: str, directory: Path | None = None) -> PromptTemplate:
    """Load template ``name`` from ``directory`` or, by default, the built-in prompts."""
    return PromptTemplate(name=name, text=_read(name, str(directory) if directory else None))
