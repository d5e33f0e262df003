"""Runs the Pulumi program under mocks and records everything it registers.

The engine cannot run here, so a recording monitor stands in for it: for each resource it keeps the
type, name, inputs (also in raw form, where secret inputs are still wrapped), parent, dependencies and
the options that matter (protect, retainOnDelete, ignoreChanges, deleteBeforeReplace). `FakeAws`
answers resource creations and data-source calls with deterministic, recognisable values.
"""

from __future__ import annotations

import asyncio
import runpy
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pulumi
from google.protobuf import json_format
from pulumi.runtime import mocks as pulumi_mocks
from pulumi.runtime import rpc
from pulumi.runtime.settings import set_root_resource
from pulumi.runtime.stack import wait_for_rpcs

from gitea_stack.cli import stack_file_values

PROJECT_DIR = Path(__file__).resolve().parents[2]
ACCOUNT = "123456789012"
REGION = "eu-central-1"
ELASTIC_IP = "198.51.100.7"
DKIM_TOKENS = ("dkimtokenone", "dkimtokentwo", "dkimtokenthree")
SECRET_SIGNATURE = rpc._special_secret_sig  # marks a secret value in serialized properties
# What ec2.get_instance_type answers for the types the tests use: (memory MiB, supported architectures),
# as AWS describes them.
INSTANCE_TYPES: dict[str, tuple[int, tuple[str, ...]]] = {
    "t3.micro": (1024, ("x86_64",)),
    "t3.small": (2048, ("x86_64",)),
    "t3.medium": (4096, ("x86_64",)),
    "t3.large": (8192, ("x86_64",)),
    "m7i-flex.large": (8192, ("x86_64",)),
    "t4g.small": (2048, ("arm64",)),
    "t4g.medium": (4096, ("arm64",)),
    "t4g.large": (8192, ("arm64",)),
    "m7g.xlarge": (16384, ("arm64",)),
    "c6a.2xlarge": (16384, ("x86_64",)),
    "mac2.metal": (16384, ("arm64_mac",)),
}


@dataclass
class Registered:
    urn: str
    type: str
    name: str
    custom: bool
    parent: str
    dependencies: frozenset[str]
    property_dependencies: dict[str, list[str]]
    protect: bool
    retain_on_delete: bool
    delete_before_replace: bool
    ignore_changes: tuple[str, ...]
    additional_secret_outputs: tuple[str, ...]
    raw_inputs: dict[str, Any]   # as serialized: secret values still wrapped in their marker
    inputs: dict[str, Any] = field(default_factory=dict)  # unwrapped, set once the engine deserializes


@dataclass
class StackRun:
    resources: list[Registered]
    outputs: dict[str, Any]
    secret_outputs: frozenset[str]
    calls: list[tuple[str, dict[str, Any]]]
    mock_secrets: frozenset[str]  # every secret value the fake provider handed out

    def of_type(self, type_token: str) -> list[Registered]:
        return [r for r in self.resources if r.type == type_token]

    def one(self, type_token: str, name: str | None = None) -> Registered:
        found = [r for r in self.of_type(type_token) if name is None or r.name == name]
        assert len(found) == 1, f"expected one {type_token} {name or ''}, found {[r.name for r in found]}"
        return found[0]

    def named(self, name: str) -> Registered:
        found = [r for r in self.resources if r.name == name]
        assert len(found) == 1, f"expected one resource named {name}, found {len(found)}"
        return found[0]

    def by_urn(self, urn: str) -> Registered:
        return next(r for r in self.resources if r.urn == urn)

    def children_of(self, parent: Registered) -> list[Registered]:
        return [r for r in self.resources if r.parent == parent.urn]

    def descendants_of(self, parent: Registered) -> Iterator[Registered]:
        for child in self.children_of(parent):
            yield child
            yield from self.descendants_of(child)


class FakeAws(pulumi.runtime.Mocks):
    """Deterministic answers from AWS, random and tls. Unmocked data-source calls fail the test."""

    def __init__(self, zones: tuple[str, ...] = (f"{REGION}b", f"{REGION}a", f"{REGION}c"),
                 secret_version: str = "v1", hosted_zones: tuple[tuple[str, str, bool], ...] | None = None,
                 volumes: dict[str, dict[str, Any]] | None = None, instances: dict[str, str] | None = None,
                 kept_secrets: dict[str, str] | None = None, buckets: dict[str, str] | None = None):
        self.zones = zones
        self.secret_version = secret_version  # the version id every stored secret value gets
        # What the account already holds: (zone id, name, private) hosted zones; volume id ->
        # {az, size, encrypted, status, tags}; instance id -> type (this stack's, tagged as such);
        # kept secret name -> value; bucket name -> region.
        self.hosted_zones = hosted_zones if hosted_zones is not None else (
            ("Z0MOCKZONE", "example.com.", False), ("Z0PRIVATE", "internal.example.com.", True))
        self.volumes = volumes or {}
        self.instances = instances or {}
        self.kept_secrets = kept_secrets or {}
        self.buckets = buckets or {}
        self.secrets: set[str] = set()
        self.calls: list[tuple[str, dict[str, Any]]] = []

    def _volumes_matching(self, args: dict[str, Any]) -> list[str]:
        filters = {f["name"]: set(f["values"]) for f in args.get("filters") or []}
        tags = args.get("tags") or {}
        return [volume_id for volume_id, volume in self.volumes.items()
                if volume_id in filters.get("volume-id", {volume_id})
                and volume.get("status", "available") in filters.get("status", {volume.get("status", "available")})
                and all(volume.get("tags", {}).get(key) == value for key, value in tags.items())]

    def _secret(self, value: str) -> str:
        self.secrets.add(value)
        return value

    def new_resource(self, args: pulumi_mocks.MockResourceArgs) -> tuple[str | None, dict]:
        inputs, name, kind = dict(args.inputs), args.name, args.typ
        service = kind.split(":")[1].split("/")[0]
        outputs = {**inputs, "arn": f"arn:aws:{service}:{REGION}:{ACCOUNT}:{name}"}
        resource_id = f"{name}-id"
        if kind == "random:index/randomPassword:RandomPassword":
            outputs["result"] = self._secret(f"MOCK-SECRET-{name}-Zq7")
        elif kind == "tls:index/privateKey:PrivateKey":
            outputs["privateKeyOpenssh"] = self._secret(f"-----BEGIN OPENSSH PRIVATE KEY-----\nMOCK-{name}\n")
            outputs["publicKeyOpenssh"] = f"ssh-ed25519 AAAAC3MOCK{name}"
        elif kind == "aws:s3/bucket:Bucket":
            bucket = inputs.get("bucket") or f"{inputs['bucketPrefix']}mock"
            outputs.update(bucket=bucket, arn=f"arn:aws:s3:::{bucket}")
            resource_id = bucket
        elif kind == "aws:secretsmanager/secret:Secret":
            secret_name = inputs.get("name") or f"{inputs['namePrefix']}MOCK"
            outputs.update(name=secret_name, arn=f"arn:aws:secretsmanager:{REGION}:{ACCOUNT}:secret:{secret_name}")
        elif kind == "aws:sesv2/emailIdentity:EmailIdentity":
            outputs.update(arn=f"arn:aws:ses:{REGION}:{ACCOUNT}:identity/{inputs['emailIdentity']}",
                           dkimSigningAttributes={"tokens": list(DKIM_TOKENS)})
        elif kind == "aws:iam/accessKey:AccessKey":
            resource_id = "AKIAMOCKSMTPUSER0001"
            outputs.update(secret=self._secret("MOCK-AWS-SECRET-KEY"),
                           sesSmtpPasswordV4=self._secret("MOCK-SMTP-PASSWORD"))
        elif kind == "aws:ec2/keyPair:KeyPair":
            outputs["keyName"] = f"{inputs['keyNamePrefix']}mock"
        elif kind == "aws:ebs/volume:Volume":
            resource_id = "vol-0123456789abcdef0"
        elif kind == "aws:ec2/instance:Instance":
            resource_id = "i-0123456789abcdef0"
        elif kind == "aws:ec2/subnet:Subnet":
            resource_id = "subnet-0123456789abcdef0"
        elif kind == "aws:ec2/eip:Eip":
            outputs["publicIp"] = ELASTIC_IP
        elif kind in ("aws:iam/user:User", "aws:iam/role:Role", "aws:iam/instanceProfile:InstanceProfile"):
            outputs["name"] = inputs.get("name") or f"{name}-mock"
            outputs["arn"] = f"arn:aws:iam::{ACCOUNT}:{kind.rsplit(':', 1)[-1].lower()}{inputs.get('path', '/')}" \
                             f"{outputs['name']}"
        elif kind == "aws:cloudwatch/metricAlarm:MetricAlarm":
            outputs["name"] = inputs.get("name") or f"{name}-mock"  # the provider's auto-name
        elif kind == "aws:secretsmanager/secretVersion:SecretVersion":
            outputs["versionId"] = f"{name}-{self.secret_version}"
        elif kind == "aws:kms/key:Key":
            resource_id = "mock-key-0000-1111"
            outputs.update(keyId=resource_id, arn=f"arn:aws:kms:{REGION}:{ACCOUNT}:key/{resource_id}")
        elif kind == "aws:cloudwatch/logGroup:LogGroup":
            outputs["arn"] = f"arn:aws:logs:{REGION}:{ACCOUNT}:log-group:{inputs['name']}"
        elif kind == "aws:route53/record:Record":
            outputs["fqdn"] = inputs["name"]
        return resource_id, outputs

    def call(self, args: pulumi_mocks.MockCallArgs) -> dict:
        self.calls.append((args.token, dict(args.args)))
        if args.token == "aws:index/getRegion:getRegion":
            return {"id": REGION, "name": REGION, "region": REGION}
        if args.token == "aws:index/getCallerIdentity:getCallerIdentity":
            return {"id": ACCOUNT, "accountId": ACCOUNT, "arn": f"arn:aws:iam::{ACCOUNT}:user/operator",
                    "userId": "AIDAMOCKOPERATOR"}
        if args.token == "aws:ec2/getInstanceType:getInstanceType":
            instance_type = args.args["instanceType"]
            memory, architectures = INSTANCE_TYPES[instance_type]
            return {"id": instance_type, "instanceType": instance_type, "memorySize": memory,
                    "supportedArchitectures": list(architectures)}
        if args.token == "aws:index/getPartition:getPartition":
            return {"id": "aws", "partition": "aws", "dnsSuffix": "amazonaws.com", "reverseDnsPrefix": "com.amazonaws"}
        if args.token == "aws:route53/getZones:getZones":
            return {"id": "zones", "ids": [zone_id for zone_id, _, _ in self.hosted_zones]}
        if args.token == "aws:route53/getZone:getZone":
            zone_id, name, private = next(zone for zone in self.hosted_zones if zone[0] == args.args["zoneId"])
            return {"id": zone_id, "zoneId": zone_id, "name": name, "privateZone": private}
        if args.token == "aws:ebs/getEbsVolumes:getEbsVolumes":
            return {"id": REGION, "ids": self._volumes_matching(args.args)}
        if args.token == "aws:ebs/getVolume:getVolume":
            volume_id = self._volumes_matching(args.args)[0]
            volume = self.volumes[volume_id]
            return {"id": volume_id, "volumeId": volume_id, "availabilityZone": volume["az"], "size": volume["size"],
                    "encrypted": volume.get("encrypted", True), "volumeType": "gp3"}
        if args.token == "aws:ec2/getInstances:getInstances":
            return {"id": REGION, "ids": sorted(self.instances)}
        if args.token == "aws:ec2/getInstance:getInstance":
            return {"id": args.args["instanceId"], "instanceType": self.instances[args.args["instanceId"]]}
        if args.token == "aws:secretsmanager/getSecrets:getSecrets":
            prefix = args.args["filters"][0]["values"][0]
            names = sorted(name for name in self.kept_secrets if name.startswith(prefix))
            return {"id": REGION, "names": names, "arns": [f"arn:aws:secretsmanager:{REGION}:{ACCOUNT}:secret:{n}"
                                                           for n in names]}
        if args.token == "aws:secretsmanager/getSecret:getSecret":
            name = args.args["name"]
            return {"id": name, "name": name, "arn": f"arn:aws:secretsmanager:{REGION}:{ACCOUNT}:secret:{name}"}
        if args.token == "aws:secretsmanager/getSecretVersion:getSecretVersion":
            name = args.args["secretId"].rsplit(":secret:", 1)[1]
            return {"id": name, "secretId": args.args["secretId"], "versionId": f"kept-{name}",
                    "secretString": self._secret(self.kept_secrets[name])}
        if args.token == "aws:s3/getBuckets:getBuckets":
            prefix = args.args.get("prefix", "")
            return {"id": REGION, "buckets": [{"name": name, "bucketRegion": region,
                                               "bucketArn": f"arn:aws:s3:::{name}"}
                                              for name, region in sorted(self.buckets.items()) if name.startswith(prefix)]}
        if args.token == "aws:ec2/getInstanceTypeOfferings:getInstanceTypeOfferings":
            # A type AWS does not know is offered nowhere.
            instance_type = args.args["filters"][0]["values"][0]
            zones = list(self.zones) if instance_type in INSTANCE_TYPES else []
            return {"id": REGION, "locations": zones, "locationTypes": ["availability-zone"] * len(zones),
                    "instanceTypes": [instance_type] * len(zones)}
        if args.token == "aws:ec2/getAmi:getAmi":
            filters = {f["name"]: f["values"][0] for f in args.args["filters"]}
            return {"id": f"ami-mock-{filters['architecture']}", "architecture": filters["architecture"],
                    "name": filters["name"]}
        raise AssertionError(f"the program called a data source the mocks do not know: {args.token}")


class RecordingMonitor(pulumi_mocks.MockMonitor):
    def __init__(self, mocks: FakeAws):
        super().__init__(mocks)
        self.registered: list[Registered] = []

    def RegisterResource(self, request):
        response = super().RegisterResource(request)
        if request.type != "pulumi:pulumi:Stack":
            property_dependencies = {key: list(deps.urns) for key, deps in request.propertyDependencies.items()}
            all_dependencies = set(request.dependencies)
            for urns in property_dependencies.values():
                all_dependencies.update(urns)
            self.registered.append(Registered(
                urn=response.urn, type=request.type, name=request.name, custom=request.custom,
                parent=request.parent, dependencies=frozenset(all_dependencies),
                property_dependencies=property_dependencies, protect=bool(request.protect),
                retain_on_delete=bool(request.retainOnDelete), delete_before_replace=request.deleteBeforeReplace,
                ignore_changes=tuple(request.ignoreChanges),
                additional_secret_outputs=tuple(request.additionalSecretOutputs),
                raw_inputs=json_format.MessageToDict(request.object),
                inputs=unwrap_secrets(rpc.deserialize_properties(request.object))))
        return response


EXAMPLE_STACK_FILE = PROJECT_DIR / "examples" / "Pulumi.example.yaml"


def stack_file_config(path: Path = EXAMPLE_STACK_FILE) -> dict[str, str]:
    """A stack file's config as the engine hands it to a program: strings, JSON for lists and objects."""
    return stack_file_values(path)


def run_program(config: Mapping[str, str], stack: str = "prod", mocks: FakeAws | None = None,
                program: Callable[[], None] | None = None) -> StackRun:
    """Runs `program` (default: the project's `__main__.py`, as the engine would) with `config`.

    An exception from the program propagates after the mocks stop; what was registered up to then is
    attached to it as `.registered`, so tests can prove that bad input registered nothing.
    """
    mocks = mocks or FakeAws()
    monitor = RecordingMonitor(mocks)
    pulumi.runtime.set_all_config(dict(config))
    set_root_resource(None)  # each run starts a new stack
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    try:
        pulumi_mocks.set_mocks(mocks, project="gitea-stack", stack=stack, preview=False, monitor=monitor)
        failure: BaseException | None = None
        try:
            if program is None:
                runpy.run_path(str(PROJECT_DIR / "__main__.py"), run_name="__main__")
            else:
                program()
        except BaseException as error:  # noqa: BLE001 - re-raised once the runtime has drained, as Pulumi does
            failure = error
        loop.run_until_complete(wait_for_rpcs())
        if failure is not None:
            failure.registered = list(monitor.registered)
            raise failure
        outputs, secret_outputs = loop.run_until_complete(_resolve_outputs())
    finally:
        loop.close()
        asyncio.set_event_loop(None)
    return StackRun(resources=list(monitor.registered), outputs=outputs, secret_outputs=frozenset(secret_outputs),
                    calls=list(mocks.calls), mock_secrets=frozenset(mocks.secrets))


async def _resolve_outputs() -> tuple[dict[str, Any], set[str]]:
    root = pulumi.runtime.settings.get_root_resource()
    values, secret = {}, set()
    for name, value in root.outputs.items():
        output = pulumi.Output.from_input(value)
        values[name] = await output.future()
        if await output.is_secret():
            secret.add(name)
    return values, secret


def is_secret_wrapper(value: Any) -> bool:
    return isinstance(value, dict) and value.get(rpc._special_sig_key) == SECRET_SIGNATURE


def unwrap_secrets(value: Any) -> Any:
    """Properties with secret values replaced by the values themselves."""
    if is_secret_wrapper(value):
        return unwrap_secrets(value["value"])
    if isinstance(value, dict):
        return {key: unwrap_secrets(item) for key, item in value.items()}
    if isinstance(value, list):
        return [unwrap_secrets(item) for item in value]
    return value


def plain_strings(raw: Any) -> Iterator[str]:
    """Every string in serialized properties that is NOT inside a secret wrapper."""
    if is_secret_wrapper(raw):
        return
    if isinstance(raw, dict):
        for value in raw.values():
            yield from plain_strings(value)
    elif isinstance(raw, list):
        for value in raw:
            yield from plain_strings(value)
    elif isinstance(raw, str):
        yield raw
