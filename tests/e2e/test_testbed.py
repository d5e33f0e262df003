"""The testbed itself: the EC2 host stand-in that `pulumi up`'s remote steps run against.

One module testbed, in order: SSH and sudo as `pulumi up` uses them, the testbed's dockerd behind
`sudo docker`, the data volume, the program's own wait and install steps, private files, moto from
the host's root, pebble, containers reaching the testbed, nothing listening outside the namespace,
a new instance for the same data volume; the last test stops it and checks that nothing of it is
left.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest
from cryptography import x509

from gitea_stack.provision import install_command, wait_command
from gitea_stack.rendering import DATA_MOUNT_POINT, SCRIPTS_DIR, read_script
from gitea_stack.versions import DOCKER_PACKAGES
from tests.harness.acme import dns_query_a
from tests.harness.testbed import CACHE_DIR, Testbed, hostroot_image

# What existed before the testbed started (the last test checks it is all gone again).
BEFORE: dict[str, object] = {}


@pytest.fixture(scope="module")
def testbed():
    BEFORE["dirs"] = {p: Path(p).exists() for p in ("/opt/gitea-stack", "/srv/gitea-stack", "/home/ubuntu",
                                                   "/root/.aws")}
    with Testbed() as started:
        yield started


def test_ssh_with_the_key_as_ubuntu_and_passwordless_sudo(testbed):
    result = testbed.ssh("id -un; sudo -n true && echo sudo-ok")
    assert result.stdout.split() == ["ubuntu", "sudo-ok"]
    # The same login with nothing but the key text, as pulumi's ConnectionArgs(private_key=...) has it.
    assert testbed.private_key_openssh.startswith("-----BEGIN OPENSSH PRIVATE KEY-----")
    assert testbed.private_key_path.read_text() == testbed.private_key_openssh
    assert (testbed.ssh_host, testbed.ssh_port, testbed.ssh_user) == (testbed.address, 2222, "ubuntu")


def test_sshd_takes_keys_only_and_no_root(testbed):
    effective = testbed.run(f"/usr/sbin/sshd -T -f {testbed.run_dir / 'sshd' / 'sshd_config'}").stdout
    for setting in ("usepam no", "passwordauthentication no", "kbdinteractiveauthentication no",
                    "authenticationmethods publickey", "permitrootlogin no", f"port {testbed.ssh_port}"):
        assert setting in effective.splitlines(), setting
    login = f"ubuntu@{testbed.address}"
    as_root = [f"root@{testbed.address}" if arg == login else arg for arg in testbed.ssh_argv("true")]
    assert subprocess.run(as_root, capture_output=True, timeout=30).returncode == 255


def test_sudo_docker_reaches_the_testbed_dockerd(testbed):
    inside = testbed.ssh("sudo docker info --format '{{.ID}} {{.DockerRootDir}}'").stdout.split()
    outside = testbed.docker("info", "--format", "{{.ID}} {{.DockerRootDir}}").stdout.split()
    assert inside == outside
    assert inside[1] == str(CACHE_DIR / "docker")
    # The default socket path (compose mounts it into diun) is the testbed's, inside the namespace.
    assert testbed.run("test -S /var/run/docker.sock && echo socket").stdout.strip() == "socket"
    # Docker's compose plugin, which the host scripts run, is v2 or later and talks to it too.
    version = testbed.ssh("sudo docker compose version --short").stdout.strip().lstrip("v")
    assert int(version.split(".")[0]) >= 2, version
    assert testbed.ssh("sudo docker compose ls --all --format json").returncode == 0


def test_the_wait_step_finds_cloud_init_done_and_the_data_volume_mounted(testbed):
    assert testbed.ssh(f"mountpoint -q {DATA_MOUNT_POINT}").returncode == 0
    result = testbed.ssh(wait_command(), check=False)  # the program's own first remote step
    assert result.returncode == 0, result.stderr
    assert testbed.run(f"findmnt --noheadings --output FSTYPE {DATA_MOUNT_POINT}").stdout.strip() == "tmpfs"


def test_the_install_step_finds_everything_installed(testbed):
    command = install_command()
    assert command.startswith("sudo bash -s -- ") and all(f"{p}={v}" in command for p, v in DOCKER_PACKAGES.items())
    result = testbed.ssh(command, input=read_script("install-host.sh"), check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "install-host: everything is installed at its pinned version" in result.stdout
    assert testbed.systemctl_calls() == []  # nothing was (re)started


def test_the_shims_answer_for_the_host_and_defer_otherwise(testbed):
    pinned = testbed.ssh("sudo dpkg-query -W -f='${Version}' docker-ce").stdout
    assert pinned == DOCKER_PACKAGES["docker-ce"]
    real = subprocess.run(["dpkg-query", "-W", "-f=${Version}", "bash"], capture_output=True, text=True).stdout
    assert testbed.ssh("sudo dpkg-query -W -f='${Version}' bash").stdout == real
    assert "install ok installed" in testbed.ssh("dpkg-query -W -f='${Status}' python3-boto3").stdout
    testbed.ssh("sudo systemctl daemon-reload && sudo systemctl enable --now 'a unit.timer'")
    assert testbed.systemctl_calls()[-2:] == [["daemon-reload"], ["enable", "--now", "a unit.timer"]]
    assert "enable --now a unit.timer\n" in testbed.systemctl_log()
    # The testbed shares this machine's package database: installing is refused, not attempted.
    refused = testbed.ssh("sudo apt-get install -y hello", check=False)
    assert refused.returncode == 100 and "refusing `apt-get install -y hello`" in refused.stderr
    assert testbed.ssh("sudo dpkg --print-architecture").stdout.strip()
    assert testbed.ssh("sudo dpkg -i /dev/null", check=False).returncode != 0


def test_files_written_under_opt_gitea_stack_stay_in_the_testbed(testbed):
    testbed.ssh("sudo install -d -m 0755 /opt/gitea-stack/probe && echo written | sudo tee /opt/gitea-stack/probe/file"
                " >/dev/null && echo home >~/gitea-stack-upload-probe")
    assert (testbed.path("/opt/gitea-stack") / "probe" / "file").read_text() == "written\n"
    assert testbed.path("/home/ubuntu/gitea-stack-upload-probe").read_text() == "home\n"
    assert not Path("/opt/gitea-stack/probe").exists()
    assert not Path("/home/ubuntu/gitea-stack-upload-probe").exists()
    testbed.ssh(f"echo data | sudo tee {DATA_MOUNT_POINT}/probe >/dev/null")
    assert testbed.path(f"{DATA_MOUNT_POINT}/probe").read_text() == "data\n"
    assert not Path(f"{DATA_MOUNT_POINT}/probe").exists()


def test_a_small_data_volume_can_stand_in_for_a_full_one(testbed):
    def free_mib() -> int:
        return int(testbed.ssh(f"df --output=avail -m {DATA_MOUNT_POINT} | tail -n 1").stdout)

    assert free_mib() > 1024
    testbed.replace_data_volume(8)
    try:
        assert free_mib() <= 8
        assert testbed.ssh(f"mountpoint -q {DATA_MOUNT_POINT}", check=False).returncode == 0
        assert not testbed.path(f"{DATA_MOUNT_POINT}/probe").exists()
    finally:
        testbed.restore_data_volume()
    assert free_mib() > 1024
    assert testbed.path(f"{DATA_MOUNT_POINT}/probe").read_text() == "data\n"


def test_boto3_on_the_host_uses_root_credentials_against_moto(testbed):
    script = ("import boto3; c = boto3.client('secretsmanager'); "
              "c.create_secret(Name='testbed/probe', SecretString='from-the-host'); "
              "print(c.get_secret_value(SecretId='testbed/probe')['SecretString'])")
    result = testbed.ssh(f"sudo python3 -c {shlex.quote(script)}", check=False)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "from-the-host"
    outside = testbed.boto3_client("secretsmanager")
    assert outside.get_secret_value(SecretId="testbed/probe")["SecretString"] == "from-the-host"
    outside.delete_secret(SecretId="testbed/probe", ForceDeleteWithoutRecovery=True)


def test_fetch_secrets_reads_what_the_test_seeded(testbed):
    client = testbed.boto3_client("secretsmanager")
    client.create_secret(Name="e2e/postgres-password", SecretString="pg-secret")
    client.create_secret(Name="e2e/smtp", SecretString=json.dumps(
        {"host": "email-smtp.eu-central-1.amazonaws.com", "port": 587, "username": "AKIA", "password": "pw"}))
    facts = (f"AWS_REGION={testbed.region}\nBACKUP_BUCKET=b\n"
             "SECRET_POSTGRES_PASSWORD=e2e/postgres-password\nSECRET_SMTP_CREDENTIALS=e2e/smtp\n")
    testbed.ssh("cat >~/facts.env", input=facts)
    result = testbed.ssh(f"out=$(sudo mktemp -d) && sudo python3 {SCRIPTS_DIR}/fetch-secrets.py ~/facts.env \"$out\""
                         " && sudo cat \"$out/postgres-password\" \"$out/smtp-port\"", check=False)
    assert result.returncode == 0, result.stderr
    assert result.stdout == "pg-secret587"


def test_pebble_answers_inside_the_namespace_with_its_ca(testbed):
    result = testbed.run(f"curl --silent --show-error --fail --cacert {testbed.acme_ca_path} {testbed.directory_url}")
    assert "newOrder" in json.loads(result.stdout)
    assert testbed.acme_ca_pem == (CACHE_DIR / "pebble-ca" / "ca.pem").read_text()
    assert dns_query_a(testbed.dns_server, testbed.domain) == [testbed.address]
    root = x509.load_pem_x509_certificate(testbed.pebble_root_pem().encode())
    assert "Pebble Root CA" in root.subject.rfc4514_string()


def test_containers_reach_the_testbed_address(testbed):
    image = hostroot_image(testbed)
    script = (f"curl --silent --show-error --fail --cacert /ca.pem {testbed.directory_url} >/dev/null && "
              f"curl --silent --show-error --output /dev/null --write-out '%{{http_code}}' {testbed.moto_url}/")
    result = testbed.docker("run", "--rm", "--volume", "/usr:/usr:ro", "--volume", f"{testbed.acme_ca_path}:/ca.pem:ro",
                            image, "bash", "-c", script, check=False, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip() == "200"


def test_a_published_port_answers_on_the_testbed_address_only(testbed):
    # As nginx's 80:80 in the compose file: reachable from the test process over the veth and from
    # inside the namespace (where pebble validates HTTP-01), absent from this machine's interfaces.
    container = testbed.docker("run", "--detach", "--publish", "80:8000", "--volume", "/usr:/usr:ro",
                               hostroot_image(testbed), "python3", "-m", "http.server", "8000").stdout.strip()
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                with urllib.request.urlopen(f"http://{testbed.address}/", timeout=2) as response:
                    assert response.status == 200
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
        inside = testbed.run(f"curl --silent --output /dev/null --write-out '%{{http_code}}' http://{testbed.address}/")
        assert inside.stdout == "200"
        outside = subprocess.run(["ss", "-ltnH", "sport = :80"], capture_output=True, text=True, check=True).stdout
        assert outside.strip() == "", outside
    finally:
        testbed.docker("rm", "--force", container)


def test_sftp_uploads_land_in_the_testbed_home(testbed):
    # pulumi's CopyToRemote uses the SFTP subsystem.
    argv = [testbed.tools["ssh"].replace("/ssh", "/sftp"), "-F", "/dev/null", "-i", str(testbed.private_key_path),
            "-P", str(testbed.ssh_port), "-o", f"UserKnownHostsFile={testbed.known_hosts_path}",
            "-o", "BatchMode=yes", "-b", "-", f"{testbed.ssh_user}@{testbed.address}"]
    result = subprocess.run(argv, input="mkdir gitea-stack-upload\nput /etc/hostname gitea-stack-upload/probe\n",
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stdout + result.stderr
    assert testbed.path("/home/ubuntu/gitea-stack-upload/probe").read_text() == Path("/etc/hostname").read_text()


def listening(ss_output: str) -> list[tuple[str, int, str]]:
    sockets = []
    for line in ss_output.splitlines():
        fields = line.split()
        if len(fields) >= 5:
            address, _, port = fields[4].rpartition(":")
            sockets.append((address.strip("[]"), int(port), line))
    return sockets


def test_nothing_listens_outside_the_namespace(testbed):
    inside = listening(testbed.run("ss -ltnuH").stdout)
    ports = set(testbed.ports.values())
    assert ports <= {port for _, port, _ in inside}, inside  # the check below is not vacuous
    outside = subprocess.run(["ss", "-ltnupH"], capture_output=True, text=True, check=True).stdout
    testbed_pids = set(testbed.recorded_pids().values())
    for address, port, line in listening(outside):
        assert port not in ports, f"a testbed port listens on this machine: {line}"
        assert address != testbed.address, line
        assert not any(f"pid={pid}," in line for pid in testbed_pids), line
    # The veth reaches the testbed only: nothing of this machine is reachable from it by a route.
    routes = testbed.run("ip -4 route").stdout
    assert "default" not in routes, routes


def test_a_new_instance_keeps_the_data_volume_and_nothing_else(testbed):
    testbed.ssh("sudo install -d /opt/gitea-stack/old /var/log/gitea-stack && echo old | sudo tee "
                f"/opt/gitea-stack/old/file {DATA_MOUNT_POINT}/kept >/dev/null && sudo systemctl daemon-reload "
                "&& touch ~/old-upload")
    image = hostroot_image(testbed)
    testbed.docker("run", "--detach", "--restart", "unless-stopped", "--stop-timeout", "1", "--volume",
                   "/usr:/usr:ro", image, "sleep", "infinity")  # sleep ignores SIGTERM: killed after 1 s
    testbed.docker("network", "create", "old-network")
    old_dockerd = testbed.recorded_pids()["dockerd"]

    testbed.replace_instance()

    assert testbed.recorded_pids()["dockerd"] != old_dockerd and not Path(f"/proc/{old_dockerd}").exists()
    assert testbed.docker("ps", "--all", "--quiet").stdout.split() == []
    assert "old-network" not in testbed.docker("network", "ls", "--format", "{{.Name}}").stdout.split()
    assert testbed.docker("image", "inspect", image, check=False).returncode == 0  # the image cache stays
    for gone in ("/opt/gitea-stack/old", "/var/log/gitea-stack", "/home/ubuntu/old-upload",
                 "/home/ubuntu/gitea-stack-upload"):
        assert not testbed.path(gone).exists(), gone
    assert testbed.systemctl_calls() == []
    assert testbed.path(f"{DATA_MOUNT_POINT}/kept").read_text() == "old\n"
    assert testbed.path(f"{DATA_MOUNT_POINT}/probe").read_text() == "data\n"
    # The new instance: the same login, sudo, the new dockerd behind `sudo docker`, the instance role's AWS access.
    inside = testbed.ssh("sudo docker info --format '{{.ID}}'").stdout.strip()
    assert inside == testbed.docker("info", "--format", "{{.ID}}").stdout.strip()
    assert testbed.ssh("sudo test -s /root/.aws/credentials", check=False).returncode == 0


def test_stop_leaves_nothing_behind(testbed):
    pids = testbed.recorded_pids()
    holder_mnt = os.readlink(f"/proc/{pids['holder']}/ns/mnt")
    netns, veth, run_dir = testbed.netns, testbed.veth_host, testbed.run_dir
    sudoers = Path(f"/etc/sudoers.d/gitea-stack-testbed-{os.getpid()}")
    assert sudoers.exists()
    user_created = testbed._state["user_created"]  # noqa: SLF001 - what stop() must undo
    # A container that would come back with the daemon (as the forge's do) must be gone too.
    container = testbed.docker("run", "--detach", "--restart", "unless-stopped", "--volume", "/usr:/usr:ro",
                               hostroot_image(testbed), "sleep", "infinity").stdout.strip()
    pids["container"] = int(testbed.docker("inspect", "--format", "{{.State.Pid}}", container).stdout)

    testbed.stop()
    print(f"\ntestbed timings: {json.dumps({k: round(v, 2) for k, v in testbed.timings.items()})}")

    alive = [f"{name} ({pid})" for name, pid in pids.items() if Path(f"/proc/{pid}").exists()]
    assert not alive, alive
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                assert os.readlink(proc / "ns" / "mnt") != holder_mnt, f"process {proc.name} is in the testbed"
            except (FileNotFoundError, PermissionError):  # gone, or not ours to inspect (pid 1 here)
                pass
    assert netns not in subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert subprocess.run(["ip", "link", "show", veth], capture_output=True).returncode != 0
    assert testbed.address not in subprocess.run(["ip", "-4", "addr"], capture_output=True, text=True).stdout
    mounts = Path("/proc/self/mountinfo").read_text()
    assert str(run_dir) not in mounts and "gitea-stack-testbed" not in mounts
    assert not run_dir.exists()
    assert not sudoers.exists()
    if user_created:
        assert subprocess.run(["getent", "passwd", "ubuntu"], capture_output=True).returncode != 0
        assert subprocess.run(["getent", "group", "ubuntu"], capture_output=True).returncode != 0
    else:  # an ubuntu user this machine had before the testbed is left as it was
        assert subprocess.run(["getent", "passwd", "ubuntu"], capture_output=True, check=False).returncode == 0
    for directory, existed in BEFORE["dirs"].items():
        assert Path(directory).exists() == existed, directory
    assert not (CACHE_DIR / "testbed-state.json").exists()
    assert not re.search(r"gst\d+h", subprocess.run(["ip", "-br", "link"], capture_output=True, text=True).stdout)
