"""Entry point the Pulumi CLI runs (cwd = policy/) for `pulumi preview --policy-pack policy`.

Constructing PolicyPack starts the analyzer's gRPC server and blocks, so nothing may import this
module; tests import `pulumi_adapter` and `rules` instead.
"""

from pulumi_policy import EnforcementLevel, PolicyPack

from pulumi_adapter import build_policies

PolicyPack(name="gitea-stack", policies=build_policies(), enforcement_level=EnforcementLevel.MANDATORY)
