"""Example settings and variants for rendering tests."""

from __future__ import annotations

from gitea_stack.bundle import PRODUCTION, Bundle, HostLayout, render_bundle
from gitea_stack.settings import Settings, parse_settings
from gitea_stack.sizing import InstanceFacts, instance_facts
from tests.harness.pulumi_mocks import INSTANCE_TYPES

BASE = {"domain": "git.example.com", "acmeEmail": "ops@example.com", "alertEmails": ["ops@example.com"],
        "sshAllowedCidrs": ["203.0.113.0/24"]}

VARIANTS: dict[str, dict[str, object]] = {
    "example": {},
    "another-domain": {"domain": "code.example.org", "acmeEmail": "certs@example.org",
                       "alertEmails": ["a@example.org", "b@example.org"]},
    "graviton": {"instanceType": "t4g.large"},
    "custom-ports-and-images": {"adminSshPort": 40022, "gitSshPort": 2200,
                                "images": {"nginx": "docker.io/library/nginx:1.30.2-alpine",
                                           "gitea": "docker.gitea.com/gitea:1.27.4-rootless"}},
}


def variant(name: str) -> Settings:
    return parse_settings({**BASE, **VARIANTS[name]}, "prod")


def facts(settings: Settings) -> InstanceFacts:
    """The instance type of `settings` as AWS describes it (the mocks' table)."""
    memory, architectures = INSTANCE_TYPES[settings.instance_type]
    return instance_facts(settings.instance_type, memory, architectures)


def render(settings: Settings, layout: HostLayout = PRODUCTION) -> Bundle:
    """The bundle of `settings` on its instance type, as the program renders it."""
    return render_bundle(settings, facts(settings).memory_mib, layout)
