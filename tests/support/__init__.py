"""Shared test support, imported by tests and benchmarks (never a test module):
the settings factory (settings.py), the stand-ins (fake `pulumi`, Neutron,
OpenStack API, `omero`) and the worlds tests build from them, real daemons on
loopback (sshd, nginx, PostgreSQL), and reference text (page.py)."""
