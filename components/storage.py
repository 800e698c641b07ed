"""A data volume: new, cloned from a volume, or restored from a snapshot.

Protected and retained on delete: no `pulumi up` or `destroy` removes one
without an explicit `pulumi state unprotect` first.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import pulumi
import pulumi_openstack as openstack

from .layout import Host
from .settings import ConfigError, Settings


@dataclass
class DataVolumeArgs:
    settings: Settings
    host: Host
    # cloneFromStack's outputs, for a volume still to be cloned from them
    # (layout.clones_to_create); None otherwise.
    clone_source: Optional[pulumi.StackReference] = None


def _source_from_stack(ref: pulumi.StackReference, role: str, size: int, stack: str) -> pulumi.Output:
    """The source volume ID from the other stack's `dataVolumes` output,
    refusing a clone smaller than its source. Only for a volume still to be
    created: once it exists, its source is no longer read (layout.clones_to_create),
    so a source that grew, shrank or vanished never fails an update."""
    def pick(volumes):
        if not volumes or role not in volumes:
            raise ConfigError("cloneFromStack", stack, f"a stack whose dataVolumes output has a {role} volume")
        source = volumes[role]
        if int(source["size"]) > size:
            raise ConfigError(f"{role}VolumeSize", size,
                              f"at least the size of its source {source['id']} in {stack} ({source['size']} GB)")
        return source["id"]
    return ref.get_output("dataVolumes").apply(pick)


class DataVolume(pulumi.ComponentResource):
    def __init__(self, name: str, args: DataVolumeArgs, opts: Optional[pulumi.ResourceOptions] = None):
        super().__init__("idr:storage:DataVolume", name, None, opts)
        s, host = args.settings, args.host
        spec = host.volume
        assert spec is not None, f"{host.name} holds no data volume"
        source_vol_id: pulumi.Input[str] | None = spec.from_volume or None
        if args.clone_source is not None:
            source_vol_id = _source_from_stack(args.clone_source, spec.role, spec.size, s.clone_from_stack)
        self.volume = openstack.blockstorage.Volume(
            f"{host.name}-data",
            name=f"{host.name}-data",
            description=f"IDR {s.environment} {spec.role} data, mounted at {spec.mount}",
            size=spec.size,
            source_vol_id=source_vol_id,
            snapshot_id=spec.from_snapshot or None,
            volume_type=s.volume_type or None,
            # Growing idr:<role>VolumeSize extends the volume while attached
            # (the mount step then grows the filesystem); a shrink fails.
            enable_online_resize=True,
            availability_zone=s.availability_zone or None,
            metadata={"idr-environment": s.environment, "idr-role": spec.role, "idr-mount": spec.mount},
            # Where a clone came from is history once it exists: a later change of
            # the source (or cloneFromStack removed after a release) must not
            # ask to replace the volume.
            opts=pulumi.ResourceOptions(parent=self, protect=True, retain_on_delete=True,
                                        ignore_changes=["sourceVolId", "snapshotId"]),
        )
        self.register_outputs({"id": self.volume.id, "size": self.volume.size})
