"""Proxy: nginx on <env>-proxy, the full cache purge, and the rsync daemon.

Only wiring: every text comes from components/render/nginx.py.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import pulumi

from .hostfiles import HostFiles, HostFilesArgs, HostStepsArgs
from .render import nginx as render

TYPE = "idr:proxy:Proxy"


@dataclass
class ProxyArgs(HostStepsArgs):
    pass


class Proxy(pulumi.ComponentResource):
    def __init__(self, name: str, args: ProxyArgs, opts: Optional[pulumi.ResourceOptions] = None):
        super().__init__(TYPE, name, None, opts)
        s = args.settings
        proxy = s.host("proxy")
        after = list(args.depends_on)
        ids = args.instance_ids

        # nginx: re-runs only when a rendered file (or the setup step) changes.
        self.nginx = HostFiles(
            f"{name}-nginx",
            HostFilesArgs(s, proxy, render.nginx_files(s), run=render.setup_script(s),
                          instance_id=ids.get(proxy.name)),
            pulumi.ResourceOptions(parent=self, depends_on=after),
        )

        # Full cache purge: once per value of idr:cachePurgeGeneration (a new
        # value replaces the command, which runs the script again); 0 never
        # runs. The script itself is installed with nginx above, so this
        # command's text stays the same and nothing else re-runs it; nor does
        # a replaced proxy (no instance trigger): its cache is on the volume.
        self.cache_purge = None
        if s.cache_purge_generation:
            self.cache_purge = HostFiles(
                f"{name}-cache-purge",
                HostFilesArgs(s, proxy, render.purge_files(s), run=render.PURGE_SCRIPT,
                              triggers=[s.cache_purge_generation]),
                pulumi.ResourceOptions(parent=self, depends_on=[self.nginx]),
            )

        # rsync: the data is on omeroreadwrite; the proxy's nginx forwards 873.
        self.rsyncd = None
        if s.rsync_enabled:
            self.rsyncd = HostFiles(
                f"{name}-rsyncd",
                HostFilesArgs(s, s.host("omeroreadwrite"), render.rsyncd_files(s),
                              run=render.rsyncd_setup_script(s),
                              instance_id=ids.get(s.host("omeroreadwrite").name)),
                pulumi.ResourceOptions(parent=self, depends_on=after),
            )

        self.register_outputs({
            "host": proxy.name,
            "cachePurgeGeneration": s.cache_purge_generation,
            "rsyncEnabled": s.rsync_enabled,
        })
