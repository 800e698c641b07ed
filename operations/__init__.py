"""Operator commands: floating-IP swap, volume backups, retiring a stack.

They drive Pulumi through its Automation API (pulumi.automation: a
LocalWorkspace over the project directory, which runs the `pulumi` CLI found
on PATH) and talk to OpenStack through openstacksdk; none of them imports the
Pulumi program. Run from the project directory:
`python -m operations.<command> --help`.
"""
