"""Example settings and variants for rendering tests."""

from __future__ import annotations

from gitea_stack.settings import Settings, parse_settings

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
