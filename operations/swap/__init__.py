"""Move the public floating IP from one environment to another, in one
Neutron update where the cloud allows it:

    python -m operations.swap --from prod --to newidr [--snapshot] [--yes] [--public-ip IP] [--release-first]

What it does, step by step, and why each step is safe:
docs/operations/new-release.md, rollback.md and move-public-ip-by-hand.md.

Layers, each usable alone:
- components/swap_record.py: the record both stacks' config holds (`idrswap:state`);
- observe.py: both stacks (config, state) and which port holds each IP;
- plan.py: pure: the steps of either order, `check`, `next_step`;
- changes.py, steps.py: the changes, each step a few of them;
- health.py: the HTTP checks, the release gate and the downtime measured;
- command.py: the command, which resumes from what it observes.
"""
from components.swap_record import DIRECT, DONE, IN_PROGRESS, RELEASE_FIRST, Record  # noqa: F401

from ..common import ASSOCIATION_TYPE  # noqa: F401
from .command import Swap, main  # noqa: F401
from .health import http_ok, smoke_gate  # noqa: F401
from .observe import RECORD, load_record  # noqa: F401
