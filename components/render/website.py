"""IDR's website on the proxy (served by nginx at /about/): the fetch
script and its systemd timer (real files, copied verbatim), the config they
read, and the one-line page served while there is no site.

Pure functions: tests run the script against a local archive or git
repository. `components/proxy.py` only wires them to the proxy.
"""
from __future__ import annotations

import shlex
from pathlib import Path

from ..settings import Settings
from ..validators import website_kind
from . import HostFile, render_template
from .nginx import WEBSITE_LINK, WWW_ROOT

FILES = Path(__file__).resolve().parent.parent / "files" / "website"
FETCH_SCRIPT = "/usr/local/sbin/idr-website-fetch"
CONFIG = "/etc/idr/website.conf"
SERVICE = "idr-website.service"
TIMER = "idr-website.timer"
UNIT_DIR = "/etc/systemd/system"
# Served at /about/ until a fetch succeeds, and with the website off.
PLACEHOLDER_DIR = f"{WWW_ROOT}/placeholder"


def enabled(settings: Settings) -> bool:
    return bool(settings.website_ref)


def source_url(settings: Settings) -> str:
    return settings.website_source.replace("{ref}", settings.website_ref)


def config_text(settings: Settings) -> str:
    values = {
        "IDR_WEBSITE_KIND": website_kind(settings.website_source),
        "IDR_WEBSITE_SOURCE": source_url(settings),
        "IDR_WEBSITE_REF": settings.website_ref,
        "IDR_WEBSITE_ROOT": WWW_ROOT,
        "IDR_WEBSITE_VERSION": settings.environment,
    }
    lines = [f"# Read by {FETCH_SCRIPT}; rendered from idr:websiteSource and idr:websiteRef."]
    lines += [f"{k}={shlex.quote(v)}" for k, v in values.items()]
    return "\n".join(lines) + "\n"


def placeholder_html(settings: Settings) -> str:
    if enabled(settings):
        why = (f"IDR's website ({settings.website_ref}) has not been fetched to this proxy yet; "
               f"it is tried hourly (systemctl status {SERVICE}).")
    else:
        why = "IDR's website is not installed on this proxy (idr:websiteRef is empty)."
    return f"<!DOCTYPE html><title>{settings.server_name}</title><p>{why}</p>\n"


def website_files(settings: Settings) -> list[HostFile]:
    """With the website off, only the page saying so (a script and units
    left by an earlier `on` stay on disk, disabled)."""
    files = [HostFile(f"{PLACEHOLDER_DIR}/index.html", placeholder_html(settings))]
    if enabled(settings):
        files += [
            HostFile(FETCH_SCRIPT, (FILES / "idr-website-fetch").read_text(), mode="0755"),
            HostFile(f"{UNIT_DIR}/{SERVICE}", (FILES / SERVICE).read_text()),
            HostFile(f"{UNIT_DIR}/{TIMER}", (FILES / TIMER).read_text()),
            HostFile(CONFIG, config_text(settings)),
        ]
    return files


def setup_script(settings: Settings) -> str:
    return render_template(
        "website/setup.sh.j2",
        enabled=enabled(settings),
        git=website_kind(settings.website_source) == "git",
        www_root=WWW_ROOT,
        link=WEBSITE_LINK,
        placeholder=PLACEHOLDER_DIR,
        service=SERVICE,
        timer=TIMER,
    )
