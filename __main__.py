"""Pulumi entry point: `pulumi up -s <stack>`. Only wires; see components/."""
import pulumi

from components.program import main

pulumi.run(main)
