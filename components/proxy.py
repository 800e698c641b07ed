"""Proxy: nginx on <env>-proxy, its TLS certificate, the full cache purge,
and the rsync daemon.

Only wiring: every text comes from components/render/nginx.py.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import pulumi

from . import layout
from .hostfiles import HostFiles, HostFilesArgs, HostStepsArgs, remote_step
from .render import nginx as render
from .render import website

TYPE = "idr:proxy:Proxy"


@dataclass
class ProxyArgs(HostStepsArgs):
    pass


class Proxy(pulumi.ComponentResource):
    def __init__(self, name: str, args: ProxyArgs, opts: Optional[pulumi.ResourceOptions] = None):
        super().__init__(TYPE, name, None, opts)
        s = args.settings
        proxy = layout.host(s, "proxy")
        after = args.waits(proxy)
        ids = args.instance_ids

        # TLS: the certificate chain and key from stack config, or (none
        # given) a self-signed placeholder the nginx step makes itself.
        self.tls_self_signed = render.tls_self_signed(s)
        self.tls = None
        nginx_after = after
        if not self.tls_self_signed:
            # The private key is a secret: it reaches the proxy only inside
            # this step's stdin, a secret Output (encrypted in state). It is
            # never a HostFile: those are component properties in plain text
            # and the offline render writes them out. The chain travels with
            # it, so the pair is installed, checked and rolled back together.
            script = pulumi.Output.secret(s.tls_private_key).apply(lambda key: render.tls_script(s, key))
            instance = ids.get(proxy.name)
            self.tls = remote_step(
                f"{name}-tls", s, proxy, script, [instance] if instance is not None else [],
                pulumi.ResourceOptions(parent=self, depends_on=after))
            # nginx needs the pair in place to start: the TLS step goes first.
            nginx_after = [*after, self.tls]

        # nginx: re-runs only when a rendered file (or the setup step) changes.
        self.nginx = HostFiles(
            f"{name}-nginx",
            HostFilesArgs(s, proxy, render.nginx_files(s), run=render.setup_script(s),
                          instance_id=ids.get(proxy.name)),
            pulumi.ResourceOptions(parent=self, depends_on=nginx_after),
        )

        # IDR's website at /about/: the fetch script, its hourly timer and its
        # config. A new websiteRef re-runs only this step (nginx is untouched).
        self.website = HostFiles(
            f"{name}-website",
            HostFilesArgs(s, proxy, website.website_files(s), run=website.setup_script(s),
                          instance_id=ids.get(proxy.name)),
            pulumi.ResourceOptions(parent=self, depends_on=[self.nginx]),
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
        # Off, a step stops what an earlier `on` started: closing port 873
        # alone would leave rsyncd serving /data on the private network.
        readwrite = layout.host(s, "omeroreadwrite")
        if s.rsync_enabled:
            files, run, step = render.rsyncd_files(s), render.rsyncd_setup_script(s), f"{name}-rsyncd"
        else:
            files, run, step = [], render.rsyncd_off_script(s), f"{name}-rsyncd-off"
        self.rsyncd = HostFiles(
            step, HostFilesArgs(s, readwrite, files, run=run, instance_id=ids.get(readwrite.name)),
            pulumi.ResourceOptions(parent=self, depends_on=args.waits(readwrite)))

        self.register_outputs({
            "host": proxy.name,
            "cachePurgeGeneration": s.cache_purge_generation,
            "rsyncEnabled": s.rsync_enabled,
            "tlsSelfSigned": self.tls_self_signed,
            "websiteRef": s.website_ref,
        })
