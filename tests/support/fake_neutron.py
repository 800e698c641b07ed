"""The stand-in Neutron of the stand-in `pulumi` (tests/support/fake_pulumi.py):
floating IP -> name of the port holding it, in a JSON file, with an event log
of every bind and unbind. It does to an association what the provider and
Neutron would (neutron/db/l3_db.py): one floating IP per fixed IP (a port
already holding one refuses another: FloatingIPPortAlreadyAssociated, 409); an
associated IP moves to another port in one update, during which it answers
nothing for `move_seconds`; with `refuse_moves` such a move is refused instead,
as by a cloud that does not re-associate. Imported by the stand-in on every
call: standard library modules it loads anyway only."""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path


def die(message: str):
    """The CLI's failure: its message on stderr, exit status 1."""
    print(f"error: {message}", file=sys.stderr)
    sys.exit(1)


def fip_id(ip: str) -> str:
    return "fip-" + ip.replace(".", "-")


class Neutron:
    def __init__(self, home: Path, settings: dict):
        self.path, self.events_path, self.settings = home / "neutron.json", home / "neutron-events.jsonl", settings

    def holders(self) -> dict:
        return json.loads(self.path.read_text()) if self.path.exists() else {}

    def events(self) -> list[dict]:
        return [json.loads(x) for x in self.events_path.read_text().splitlines()] if self.events_path.exists() else []

    def set(self, ip: str, port: str | None, why: str) -> None:
        data = self.holders()
        if port:
            data[ip] = port
        else:
            data.pop(ip, None)
        self.path.write_text(json.dumps(data))
        with open(self.events_path, "a") as f:
            f.write(json.dumps({"t": time.time(), "ip": ip, "port": port, "why": why}) + "\n")

    def associate(self, ip: str, port: str, refused) -> None:
        """The provider's Create: PUT /v2.0/floatingips/{id} with port_id.
        `refused(status, kind, message)` fails the update with the provider's words."""
        data = self.holders()
        others = sorted(a for a, p in data.items() if p == port and a != ip)
        if others:
            refused(409, "FloatingIPPortAlreadyAssociated",
                    f"Cannot associate floating IP {ip} ({fip_id(ip)}) with port port-{port} using fixed IP "
                    f"192.168.1.10, as that fixed IP already has a floating IP on external network public.")
        holder = data.get(ip)
        if holder == port:
            return
        if holder:
            if self.settings.get("refuse_moves"):
                refused(409, "FloatingIPAssociated",
                        f"Floating IP {ip} is associated with port port-{holder}: disassociate it first.")
            # One update: the old binding goes, the new one comes; the dataplane
            # switches in between.
            self.set(ip, None, f"move from {holder}")
            time.sleep(float(self.settings.get("move_seconds", 0)))
            self.set(ip, port, f"move to {port}")
            return
        self.set(ip, port, "associate")

    def disassociate(self, ip: str) -> None:
        """The provider's Delete: PUT /v2.0/floatingips/{id} with port_id null, wherever the IP is."""
        if ip in self.holders():
            self.set(ip, None, "disassociate")

    def refusal(self, op: str, urn: str, ip: str, port: str, status: int, kind: str, message: str) -> str:
        """terraform-provider-openstack's words around gophercloud's for a refused PUT."""
        body = json.dumps({"NeutronError": {"type": kind, "message": message, "detail": ""}})
        return (f"{op} {urn}: 1 error occurred:\n\t* Error associating openstack_networking_floatingip_associate_v2 "
                f"floating_ip {fip_id(ip)} with port port-{port}: Expected HTTP response code [200] when accessing "
                f"[PUT https://neutron.example.org:9696/v2.0/floatingips/{fip_id(ip)}], but got {status} instead: "
                f"{body}")
