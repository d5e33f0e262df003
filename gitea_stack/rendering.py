"""Rendering of host files from templates/ and scripts/ (pure: no Pulumi import).

Jinja2 runs with StrictUndefined, so a template that uses a variable nobody passed fails loudly,
naming it, instead of rendering an empty string onto a server.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path

import jinja2

from gitea_stack.settings import Settings

PROJECT_DIR = Path(__file__).resolve().parent.parent
TEMPLATES_DIR = PROJECT_DIR / "templates"
SCRIPTS_DIR = PROJECT_DIR / "scripts"

# Where the data volume is mounted on the host: everything that must survive the instance lives here.
DATA_MOUNT_POINT = "/srv/gitea-stack"


@cache
def _environment() -> jinja2.Environment:
    return jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATES_DIR),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        autoescape=False,
        trim_blocks=True,
        lstrip_blocks=True,
    )


def render_template(name: str, **context: object) -> str:
    return _environment().get_template(name).render(**context)


def read_script(name: str) -> str:
    return (SCRIPTS_DIR / name).read_text()


def render_user_data(settings: Settings, data_volume_id: str) -> str:
    """cloud-init for the host: sshd on the admin port, the data volume mounted. No secrets."""
    return render_template(
        "cloud-init.yaml.j2",
        stack=settings.stack,
        admin_ssh_port=settings.admin_ssh_port,
        data_volume_id=data_volume_id,
        data_mount_point=DATA_MOUNT_POINT,
        mount_script=read_script("mount-data-volume.sh"),
    )
