"""Operator commands: floating-IP swap, volume backups, retiring a stack.

They drive the `pulumi` CLI as subprocesses and talk to OpenStack through
openstacksdk; none of them imports the Pulumi program. Run from the project
directory: `python -m operations.<command> --help`.
"""
