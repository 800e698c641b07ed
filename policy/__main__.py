"""The IDR policy pack, run by `pulumi preview/up --policy-pack policy`."""
from pulumi_policy import EnforcementLevel, PolicyPack

from idr_policies import POLICIES

PolicyPack(name="idr", policies=POLICIES, enforcement_level=EnforcementLevel.MANDATORY)
