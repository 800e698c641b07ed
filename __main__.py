"""Pulumi entry point: `pulumi up -s <stack>`. Only wires; see components/."""
from components.program import main

main()
