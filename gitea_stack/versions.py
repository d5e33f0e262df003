"""Every pinned version of the stack, in one place.

Container images are the defaults of the `images` stack setting; a stack can override one service's
image there. Tags are exact releases, never `latest`, so a deploy is repeatable and Diun can tell
an operator when a newer release exists.
"""

DEFAULT_IMAGES: dict[str, str] = {
    "gitea": "docker.gitea.com/gitea:1.27.3-rootless",
    "postgres": "docker.io/library/postgres:18.4-bookworm",
    "nginx": "docker.io/library/nginx:1.28.0-alpine",
    "certbot": "docker.io/certbot/certbot:v4.1.1",
    "diun": "docker.io/crazymax/diun:4.33.0",
}

# Ubuntu 24.04 LTS images are published by Canonical under this AWS account.
CANONICAL_AMI_OWNER = "099720109477"
UBUNTU_AMI_NAME_PATTERN = "ubuntu/images/hvm-ssd-gp3/ubuntu-noble-24.04-{arch}-server-*"
