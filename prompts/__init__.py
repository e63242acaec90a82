"""Prompt templates (jinja2). Rendering fails loudly on a missing variable (StrictUndefined)."""
from __future__ import annotations

from pathlib import Path

import jinja2

_ENV = jinja2.Environment(loader=jinja2.FileSystemLoader(Path(__file__).parent), undefined=jinja2.StrictUndefined,
                          keep_trailing_newline=True, trim_blocks=True, lstrip_blocks=True)


def render(name: str, **variables) -> str:
    """Render prompts/<name>.j2 with `variables`."""
    return _ENV.get_template(f"{name}.j2").render(**variables).strip() + "\n"
