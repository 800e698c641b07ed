"""IDR on OpenStack: Pulumi components and the pure renderers behind them."""
from pathlib import Path

# The Pulumi project (and its config namespace) as Pulumi.yaml names it.
PROJECT = "idr"
# The project: Pulumi.yaml, the stack files, relative config paths.
PROJECT_DIR = Path(__file__).resolve().parent.parent
