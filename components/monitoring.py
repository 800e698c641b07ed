"""Monitoring (idr:monitoringEnabled): the program's files on the management
host (alert rules, Grafana's provisioning and dashboards) and the proxy's
exporters (node_exporter, mtail on nginx's access log).

Only wiring: every text comes from components/render/monitoring.py. IDR's
playbooks install the rest (the deployment step: management-prometheus.yml,
then components/playbooks/monitoring.yml); the management host's files go
first, so the containers find their data directories.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import pulumi

from . import layout
from .hostfiles import HostFiles, HostFilesArgs, HostStepsArgs
from .render import monitoring as render

TYPE = "idr:monitoring:Monitoring"


@dataclass
class MonitoringArgs(HostStepsArgs):
    pass


class Monitoring(pulumi.ComponentResource):
    def __init__(self, name: str, args: MonitoringArgs, opts: Optional[pulumi.ResourceOptions] = None):
        super().__init__(TYPE, name, None, opts)
        s, ids = args.settings, args.instance_ids
        self.steps: list[HostFiles] = []
        if render.enabled(s):
            if warning := render.probe_list_warning(s):
                pulumi.log.warn(warning, self)
            management, proxy = layout.host(s, "management"), layout.host(s, "proxy")
            self.management = HostFiles(
                f"{name}-management",
                HostFilesArgs(s, management, render.management_files(s), run=render.management_setup_script(s),
                              instance_id=ids.get(management.name)),
                pulumi.ResourceOptions(parent=self, depends_on=args.waits(management)))
            # The proxy's nginx writes the log mtail reads.
            self.proxy = HostFiles(
                f"{name}-proxy-exporters",
                HostFilesArgs(s, proxy, render.proxy_files(s), run=render.PROXY_SETUP,
                              instance_id=ids.get(proxy.name)),
                pulumi.ResourceOptions(parent=self, depends_on=args.waits(proxy)))
            self.steps = [self.management, self.proxy]
        self.register_outputs({"enabled": render.enabled(s)})
