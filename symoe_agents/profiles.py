"""Model profiles: per-skill scores and validation accuracy, one JSON file per model.

File format (``PROFILES_DIR/<model>.json``)::

    {"model": "smollm2", "skills": {"algebra": 3, "geometry": -1}, "validation_accuracy": 0.42}

``skills`` holds, for every keyword of the validation set, +1 per question with that keyword
the model answered correctly and -1 per question it got wrong (method.md section 2).
``symoe profile`` writes these files (a later issue); any tool may.
"""

from __future__ import annotations

import json
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from .errors import ProfileError


class Profile(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    model: str
    skills: dict[str, float]
    validation_accuracy: float | None = Field(default=None, ge=0.0, le=1.0)

    @property
    def total(self) -> float:
        return sum(self.skills.values())


def load_profiles(directory: str | Path, pool: list[str]) -> dict[str, Profile]:
    """Profiles of the expert pool, in pool order. Files for other models are ignored;
    a pool model without a file is an error (routing cannot weigh an unknown model)."""
    directory = Path(directory)
    if not directory.is_dir():
        raise ProfileError(f"profiles directory {directory} not found; pass an existing folder or omit profiles")
    found: dict[str, Profile] = {}
    for path in sorted(directory.glob("*.json")):
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            profile = Profile.model_validate(data)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ProfileError(f"{path}: not valid JSON ({exc})") from None
        except ValidationError as exc:
            first = exc.errors()[0]
            key = ".".join(str(p) for p in first["loc"])
            raise ProfileError(f"{path}: {key}: {first['msg']}") from None
        if profile.model in found:
            raise ProfileError(f"{path}: a second profile for model '{profile.model}'; keep one file per model")
        found[profile.model] = profile
    missing = [m for m in pool if m not in found]
    if missing:
        raise ProfileError(
            f"{directory}: no profile for expert(s) {', '.join(missing)}; "
            f"add <model>.json for each, or remove them from roles.experts"
        )
    return {m: found[m] for m in pool}


def profile_vocabulary(profiles: dict[str, Profile]) -> list[str]:
    """Every skill any profile knows, in first-seen order."""
    seen: dict[str, None] = {}
    for p in profiles.values():
        for s in p.skills:
            seen.setdefault(s, None)
    return list(seen)
