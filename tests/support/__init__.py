"""Shared test support: the stand-ins (fake `pulumi`, Neutron, OpenStack API) and the worlds tests build from them."""
