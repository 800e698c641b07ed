"""Pure functions that turn settings into the files that land on hosts.

Nothing here touches Pulumi resources: tests call these directly, and the
components only wire their results into remote commands. Templates live in
`components/templates/`; one module here per concern (nginx, bfcache, ...).
"""
from __future__ import annotations

import shlex
from dataclasses import dataclass
from pathlib import Path

import jinja2

TEMPLATES = Path(__file__).resolve().parent.parent / "templates"

_ENV = jinja2.Environment(
    loader=jinja2.FileSystemLoader(str(TEMPLATES)),
    undefined=jinja2.StrictUndefined,  # a missing setting is an error, never an empty string
    keep_trailing_newline=True,
    trim_blocks=True,
    lstrip_blocks=True,
    autoescape=False,
)
_ENV.filters["shquote"] = shlex.quote


@dataclass(frozen=True)
class HostFile:
    """A file as it lands on a host: absolute path, text and octal mode."""

    path: str
    content: str
    mode: str = "0644"

    def __post_init__(self):
        if not self.path.startswith("/") or ".." in self.path.split("/"):
            raise ValueError(f"host file path must be absolute and plain: {self.path!r}")


def render_template(name: str, **context) -> str:
    """Render `components/templates/<name>` with jinja2 (strict undefined)."""
    return _ENV.get_template(name).render(**context)
