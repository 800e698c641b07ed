"""The script that puts files on a host and runs a follow-up step."""
from __future__ import annotations

import base64
import textwrap
from typing import Sequence

from . import HostFile, render_template


def install_script(host: str, files: Sequence[HostFile], run: str = "") -> str:
    """Bash script (run as root) that installs `files` on `host`, then `run`.

    File contents travel base64-encoded so no byte of them is ever parsed by
    the shell."""
    encoded = [
        {
            "path": f.path,
            "mode": f.mode,
            "b64": "\n".join(textwrap.wrap(base64.b64encode(f.content.encode()).decode(), 76)),
        }
        for f in files
    ]
    return render_template("host/install-files.sh.j2", host=host, files=encoded, run=run.strip())
