"""The gitea-stack policy rules as pure functions over plain data.

Nothing here imports Pulumi: `pulumi_adapter` turns what pulumi_policy hands over into `Resource`
values (with unknowns replaced by `UNKNOWN`), so the rules can be read and tested on their own.

Unknown values (not computed yet during `pulumi preview`) never cause a violation: a rule reports
only values it can see are wrong, or a required resource that is missing. A property that is absent
(or None) is known: it is not set.
"""

from __future__ import annotations

import fnmatch
import ipaddress
import json
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal


class _Unknown:
    """The type of `UNKNOWN`: a value Pulumi will only know after the update."""

    def __repr__(self) -> str:
        return "UNKNOWN"


UNKNOWN: Any = _Unknown()

# Policy config each rule sees unless the policy pack config overrides it.
DEFAULT_CONFIG: Mapping[str, Any] = {"gitSshPort": 22}

# Ports that may be open to the world besides the git SSH port.
PUBLIC_WEB_PORTS = (80, 443)


# --- model -----------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Resource:
    urn: str  # urn:pulumi:<stack>::<project>::<qualified type>::<name>
    type: str  # e.g. "aws:s3/bucket:Bucket"
    name: str
    props: Mapping[str, Any]  # camelCase properties as Pulumi serialises them
    dependencies: frozenset[str] = frozenset()  # URNs this resource depends on

    @property
    def stack(self) -> str:
        return _urn_parts(self.urn)[0]

    @property
    def project(self) -> str:
        return _urn_parts(self.urn)[1]

    @property
    def label(self) -> str:
        """How messages name the resource, e.g. "Instance 'gitea-host'"."""
        return f"{self.type.rsplit(':', 1)[-1]} '{self.name}'"


@dataclass(frozen=True)
class Violation:
    rule: str
    urn: str
    message: str


ResourceCheck = Callable[[Resource, Mapping[str, Any]], list[str]]
StackCheck = Callable[[Sequence[Resource], Mapping[str, Any]], list[tuple[str, str]]]


@dataclass(frozen=True)
class Rule:
    name: str  # kebab-case id, also the Pulumi policy name
    description: str
    scope: Literal["resource", "stack"]
    check: ResourceCheck | StackCheck
    # JSON-schema properties of the policy config keys this rule reads (None: reads none).
    config_schema: Mapping[str, Any] | None = None


def stack_of(resources: Sequence[Resource]) -> str:
    """The stack every resource of one policy run belongs to ("" for none)."""
    return resources[0].stack if resources else ""


def _urn_parts(urn: str) -> list[str]:
    # The name is last and may itself contain "::", so split at most three times.
    return urn.removeprefix("urn:pulumi:").split("::", 3)


# --- reading values ---------------------------------------------------------------------------------

def dig(value: Any, *path: str) -> Any:
    """The value at `path` in nested mappings: UNKNOWN if any step is unknown, None if absent."""
    for key in path:
        if value is UNKNOWN:
            return UNKNOWN
        if not isinstance(value, Mapping):
            return None
        value = value.get(key)
    return value


def _as_list(value: Any) -> Any:
    """A list property as a list (absent: empty), or UNKNOWN. A lone value counts as a list of one."""
    if value is UNKNOWN:
        return UNKNOWN
    if value is None:
        return []
    if isinstance(value, (list, tuple)):
        return list(value)
    return [value]


def _as_int(value: Any) -> int | None:
    """A whole number from an int, a float (protobuf numbers arrive as floats) or a digit string."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str):
        try:
            return int(value.strip())
        except ValueError:
            return None
    return None


def _contains_unknown(value: Any) -> bool:
    if value is UNKNOWN:
        return True
    if isinstance(value, Mapping):
        return any(_contains_unknown(item) for item in value.values())
    if isinstance(value, (list, tuple)):
        return any(_contains_unknown(item) for item in value)
    return False


# --- three-valued logic: a check on one resource is True, False or UNKNOWN (can't tell yet) --------

def _any3(verdicts: Iterable[Any]) -> Any:
    verdicts = list(verdicts)
    if True in verdicts:
        return True
    return UNKNOWN if any(v is UNKNOWN for v in verdicts) else False


def _all3(verdicts: Iterable[Any]) -> Any:
    verdicts = list(verdicts)
    if False in verdicts:
        return False
    return UNKNOWN if any(v is UNKNOWN for v in verdicts) else True


def _equals(value: Any, expected: Any) -> Any:
    return UNKNOWN if value is UNKNOWN else value == expected


def _is_positive(value: Any) -> Any:
    if value is UNKNOWN:
        return UNKNOWN
    number = _as_int(value)
    return number is not None and number > 0


# --- policy documents -----------------------------------------------------------------------------

def policy_document(value: Any) -> Any:
    """A policy document given as a JSON string or a dict: the dict, UNKNOWN, or None if unreadable.

    A document with any unknown part counts as unknown as a whole: a statement cannot be judged
    while its action, resource or condition is still missing.
    """
    if value is UNKNOWN:
        return UNKNOWN
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
            return None
    if not isinstance(value, Mapping):
        return None
    return UNKNOWN if _contains_unknown(value) else value


def _statements(document: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    return [s for s in _as_list(document.get("Statement")) if isinstance(s, Mapping)]


def _strings(value: Any) -> list[str]:
    return [item for item in _as_list(value) if isinstance(item, str)]


# --- S3: each bucket needs its configuration resources (pulumi-aws 7 splits them out) -------------

BUCKET_TYPES = frozenset({"aws:s3/bucket:Bucket", "aws:s3/bucketV2:BucketV2"})
PUBLIC_ACCESS_BLOCK_TYPES = frozenset({"aws:s3/bucketPublicAccessBlock:BucketPublicAccessBlock"})
ENCRYPTION_TYPES = frozenset({
    "aws:s3/bucketServerSideEncryptionConfiguration:BucketServerSideEncryptionConfiguration",
    "aws:s3/bucketServerSideEncryptionConfigurationV2:BucketServerSideEncryptionConfigurationV2",
})
VERSIONING_TYPES = frozenset({
    "aws:s3/bucketVersioning:BucketVersioning",
    "aws:s3/bucketVersioningV2:BucketVersioningV2",
})
BUCKET_POLICY_TYPES = frozenset({"aws:s3/bucketPolicy:BucketPolicy"})
OWNERSHIP_TYPES = frozenset({"aws:s3/bucketOwnershipControls:BucketOwnershipControls"})
LIFECYCLE_TYPES = frozenset({
    "aws:s3/bucketLifecycleConfiguration:BucketLifecycleConfiguration",
    "aws:s3/bucketLifecycleConfigurationV2:BucketLifecycleConfigurationV2",
})

PUBLIC_ACCESS_FLAGS = ("blockPublicAcls", "blockPublicPolicy", "ignorePublicAcls", "restrictPublicBuckets")


def belongs_to_bucket(config_resource: Resource, bucket: Resource) -> bool:
    """True if `config_resource` configures `bucket`: it depends on the bucket, or names it.

    During preview a new bucket's name is unknown, so the dependency is what links them then.
    """
    if bucket.urn in config_resource.dependencies:
        return True
    config_bucket = config_resource.props.get("bucket")
    bucket_name = bucket.props.get("bucket")
    return isinstance(config_bucket, str) and isinstance(bucket_name, str) and config_bucket == bucket_name


def _bucket_requirement(config_types: frozenset[str], complies: Callable[[Resource, Resource], Any],
                        expectation: str) -> StackCheck:
    """A stack check: every bucket has a linked resource of `config_types` that `complies`.

    `complies(config_resource, bucket)` returns True, False or UNKNOWN; a bucket passes if any
    linked resource complies or cannot be judged yet.
    """
    def check(resources: Sequence[Resource], config: Mapping[str, Any]) -> list[tuple[str, str]]:
        found = []
        for bucket in (r for r in resources if r.type in BUCKET_TYPES):
            linked = [r for r in resources if r.type in config_types and belongs_to_bucket(r, bucket)]
            if _any3(complies(r, bucket) for r in linked) is False:
                names = ", ".join(f"'{r.name}'" for r in linked)
                detail = f" ({names} does not comply)" if linked else ""
                found.append((bucket.urn, f"bucket '{bucket.name}' has no {expectation}{detail}"))
        return found
    return check


def _blocks_all_public_access(pab: Resource, bucket: Resource) -> Any:
    return _all3(_equals(pab.props.get(flag), True) for flag in PUBLIC_ACCESS_FLAGS)


def _encrypts_by_default(sse: Resource, bucket: Resource) -> Any:
    rules = _as_list(sse.props.get("rules"))
    if rules is UNKNOWN:
        return UNKNOWN

    def has_algorithm(rule: Any) -> Any:
        algorithm = dig(rule, "applyServerSideEncryptionByDefault", "sseAlgorithm")
        return UNKNOWN if algorithm is UNKNOWN else isinstance(algorithm, str) and algorithm != ""
    return _any3(has_algorithm(rule) for rule in rules)


def _versioning_enabled(versioning: Resource, bucket: Resource) -> Any:
    return _equals(dig(versioning.props, "versioningConfiguration", "status"), "Enabled")


def _owner_enforced(ownership: Resource, bucket: Resource) -> Any:
    return _equals(dig(ownership.props, "rule", "objectOwnership"), "BucketOwnerEnforced")


def _lifecycle_complete(lifecycle: Resource, bucket: Resource) -> Any:
    rules = _as_list(lifecycle.props.get("rules"))
    if rules is UNKNOWN:
        return UNKNOWN

    def enabled_with(rule: Any, *path: str) -> Any:
        return _all3([_equals(dig(rule, "status"), "Enabled"), _is_positive(dig(rule, *path))])
    expires_noncurrent = _any3(
        enabled_with(rule, "noncurrentVersionExpiration", "noncurrentDays") for rule in rules)
    aborts_uploads = _any3(
        enabled_with(rule, "abortIncompleteMultipartUpload", "daysAfterInitiation") for rule in rules)
    return _all3([expires_noncurrent, aborts_uploads])


def _denies_insecure_transport(bucket_policy: Resource, bucket: Resource) -> Any:
    document = policy_document(bucket_policy.props.get("policy"))
    if document is UNKNOWN:
        return UNKNOWN
    if document is None:
        return False
    bucket_name = bucket.props.get("bucket")
    return any(_is_tls_deny(statement, bucket_name) for statement in _statements(document))


def _is_tls_deny(statement: Mapping[str, Any], bucket_name: Any) -> bool:
    """Deny, to everyone, every S3 action on the bucket and its objects, when TLS is not used."""
    principal = statement.get("Principal")
    everyone = principal == "*" or (isinstance(principal, Mapping) and _strings(principal.get("AWS")) == ["*"])
    all_actions = bool({"s3:*", "*"} & set(_strings(statement.get("Action"))))
    insecure = dig(statement, "Condition", "Bool", "aws:SecureTransport")
    when_insecure = any(str(value).lower() == "false" for value in _as_list(insecure))
    return (statement.get("Effect") == "Deny" and everyone and all_actions and when_insecure
            and _covers_bucket_and_objects(_strings(statement.get("Resource")), bucket_name))


def _covers_bucket_and_objects(arns: list[str], bucket_name: Any) -> bool:
    # Bucket ARNs are arn:<partition>:s3:::<name>; the partition varies, so match on the name part.
    for arn in arns:
        name = arn.partition(":::")[2]
        if name and "/" not in name and f"{arn}/*" in arns:
            if not isinstance(bucket_name, str) or name == bucket_name:
                return True
    return False


BUCKET_LOGGING_TYPES = frozenset({"aws:s3/bucketLogging:BucketLogging", "aws:s3/bucketLoggingV2:BucketLoggingV2"})


def _names_bucket(value: Any, bucket: Resource) -> Any:
    """True/False if `value` (a bucket name property) does or does not name `bucket`; UNKNOWN if either is unknown."""
    bucket_name = bucket.props.get("bucket")
    if value is UNKNOWN or bucket_name is UNKNOWN or not isinstance(bucket_name, str):
        return UNKNOWN
    return value == bucket_name


def _linked_logging(logging: Resource, bucket: Resource) -> bool:
    """True if a BucketLogging concerns `bucket`, as its source or as its target (by dependency or name)."""
    if bucket.urn in logging.dependencies:
        return True
    name = bucket.props.get("bucket")
    return isinstance(name, str) and name in (logging.props.get("bucket"), logging.props.get("targetBucket"))


def check_s3_access_logging(resources: Sequence[Resource], config: Mapping[str, Any]) -> list[tuple[str, str]]:
    """Every bucket logs its requests into another bucket, except the buckets that receive logs."""
    loggings = [r for r in resources if r.type in BUCKET_LOGGING_TYPES]
    found = []
    for bucket in (r for r in resources if r.type in BUCKET_TYPES):
        linked = [logging for logging in loggings if _linked_logging(logging, bucket)]
        # A log bucket logging into itself would log its own log writes forever: receiving another
        # bucket's logs exempts it.
        receives_logs = _any3(
            _all3([_names_bucket(logging.props.get("targetBucket"), bucket),
                   _negate(_names_bucket(logging.props.get("bucket"), bucket))])
            for logging in linked)
        logs_elsewhere = _any3(
            _all3([_names_bucket(logging.props.get("bucket"), bucket),
                   _negate(_names_bucket(logging.props.get("targetBucket"), bucket))])
            for logging in linked)
        if not linked or (receives_logs is False and logs_elsewhere is False):
            found.append((bucket.urn, f"bucket '{bucket.name}' has no BucketLogging writing its access logs "
                                      "to a separate log bucket"))
    return found


def _negate(verdict: Any) -> Any:
    return UNKNOWN if verdict is UNKNOWN else not verdict


# --- VPC ---------------------------------------------------------------------------------------------

VPC_TYPE = "aws:ec2/vpc:Vpc"
FLOW_LOG_TYPE = "aws:ec2/flowLog:FlowLog"
DEFAULT_SECURITY_GROUP_TYPE = "aws:ec2/defaultSecurityGroup:DefaultSecurityGroup"


def _belongs_to_vpc(resource: Resource, vpc: Resource) -> bool:
    if vpc.urn in resource.dependencies:
        return True
    vpc_id, own = resource.props.get("vpcId"), vpc.props.get("id")
    return isinstance(vpc_id, str) and isinstance(own, str) and vpc_id == own


def _vpc_requirement(resource_type: str, complies: Callable[[Resource], Any], expectation: str) -> StackCheck:
    """A stack check: every VPC has a resource of `resource_type` that `complies` (True/False/UNKNOWN)."""
    def check(resources: Sequence[Resource], config: Mapping[str, Any]) -> list[tuple[str, str]]:
        found = []
        for vpc in (r for r in resources if r.type == VPC_TYPE):
            linked = [r for r in resources if r.type == resource_type and _belongs_to_vpc(r, vpc)]
            if _any3(complies(r) for r in linked) is False:
                names = ", ".join(f"'{r.name}'" for r in linked)
                detail = f" ({names} does not comply)" if linked else ""
                found.append((vpc.urn, f"VPC '{vpc.name}' has no {expectation}{detail}"))
        return found
    return check


def _logs_all_traffic(flow_log: Resource) -> Any:
    return _equals(flow_log.props.get("trafficType"), "ALL")


def _has_no_rules(group: Resource) -> Any:
    # An adopted default security group loses every rule it is not given.
    rules = [_as_list(group.props.get(direction)) for direction in ("ingress", "egress")]
    if any(r is UNKNOWN for r in rules):
        return UNKNOWN
    return all(r == [] for r in rules)


# --- CloudWatch Logs and KMS ----------------------------------------------------------------------------

LOG_GROUP_TYPE = "aws:cloudwatch/logGroup:LogGroup"
KMS_KEY_TYPE = "aws:kms/key:Key"


def check_log_group_encrypted_and_expiring(resource: Resource, config: Mapping[str, Any]) -> list[str]:
    if resource.type != LOG_GROUP_TYPE:
        return []
    messages = []
    key = resource.props.get("kmsKeyId")
    if key is not UNKNOWN and not (isinstance(key, str) and key):
        messages.append(f"{resource.label} is not encrypted with a KMS key of the stack: set kmsKeyId")
    retention = resource.props.get("retentionInDays")
    if retention is not UNKNOWN and _is_positive(retention) is False:
        messages.append(f"{resource.label} keeps its logs forever (retentionInDays {retention!r}): set a retention")
    return messages


def check_kms_key_rotation(resource: Resource, config: Mapping[str, Any]) -> list[str]:
    if resource.type == KMS_KEY_TYPE and _equals(resource.props.get("enableKeyRotation"), True) is False:
        return [f"{resource.label} is not rotated: set enableKeyRotation=True"]
    return []


# --- EBS and EC2 ------------------------------------------------------------------------------------

VOLUME_TYPE = "aws:ebs/volume:Volume"
INSTANCE_TYPE = "aws:ec2/instance:Instance"


def check_ebs_encrypted(resource: Resource, config: Mapping[str, Any]) -> list[str]:
    if resource.type == VOLUME_TYPE and _equals(resource.props.get("encrypted"), True) is False:
        return [f"{resource.label} is not encrypted: set encrypted=True"]
    return []


def check_instance_volumes_encrypted(resource: Resource, config: Mapping[str, Any]) -> list[str]:
    if resource.type != INSTANCE_TYPE:
        return []
    messages = []
    if _equals(dig(resource.props, "rootBlockDevice", "encrypted"), True) is False:
        messages.append(f"{resource.label} has an unencrypted root volume: set rootBlockDevice.encrypted=True")
    devices = _as_list(resource.props.get("ebsBlockDevices"))
    for index, device in enumerate([] if devices is UNKNOWN else devices):
        if _equals(dig(device, "encrypted"), True) is False:
            name = dig(device, "deviceName")
            which = f"'{name}'" if isinstance(name, str) else f"#{index}"
            messages.append(f"{resource.label} has an unencrypted EBS block device {which}: set encrypted=True")
    return messages


def check_instance_imdsv2(resource: Resource, config: Mapping[str, Any]) -> list[str]:
    if resource.type != INSTANCE_TYPE:
        return []
    tokens = dig(resource.props, "metadataOptions", "httpTokens")
    if _equals(tokens, "required") is False:
        return [f"{resource.label} allows IMDSv1 (metadataOptions.httpTokens is {tokens!r}): set it to 'required'"]
    return []


# --- security groups ----------------------------------------------------------------------------

INGRESS_RULE_TYPE = "aws:vpc/securityGroupIngressRule:SecurityGroupIngressRule"
SECURITY_GROUP_RULE_TYPE = "aws:ec2/securityGroupRule:SecurityGroupRule"
SECURITY_GROUP_TYPES = frozenset({"aws:ec2/securityGroup:SecurityGroup",
                                  "aws:ec2/defaultSecurityGroup:DefaultSecurityGroup"})

ALL_PROTOCOLS = frozenset({"-1", "all"})
PORT_PROTOCOLS = frozenset({"tcp", "udp", "6", "17"})
# ICMP has no ports, and path MTU discovery needs it from anywhere.
ICMP_PROTOCOLS = frozenset({"icmp", "icmpv6", "1", "58"})


@dataclass(frozen=True)
class _Ingress:
    """One ingress permission, whichever of the three AWS shapes it was written in."""
    where: str  # names it in messages
    protocol: Any
    from_port: Any
    to_port: Any
    cidrs: list[Any]


def _ingresses(resource: Resource) -> list[_Ingress]:
    props = resource.props
    if resource.type == INGRESS_RULE_TYPE:
        cidrs = [props.get("cidrIpv4"), props.get("cidrIpv6")]
        return [_Ingress(resource.label, props.get("ipProtocol"), props.get("fromPort"), props.get("toPort"), cidrs)]
    if resource.type == SECURITY_GROUP_RULE_TYPE and props.get("type") == "ingress":
        return [_Ingress(resource.label, props.get("protocol"), props.get("fromPort"), props.get("toPort"),
                         _ingress_cidrs(props))]
    if resource.type in SECURITY_GROUP_TYPES:
        blocks = _as_list(props.get("ingress"))
        return [
            _Ingress(f"{resource.label} ingress #{index}", dig(block, "protocol"), dig(block, "fromPort"),
                     dig(block, "toPort"), _ingress_cidrs(block))
            for index, block in enumerate([] if blocks is UNKNOWN else blocks)
        ]
    return []


def _ingress_cidrs(block: Any) -> list[Any]:
    cidrs = []
    for key in ("cidrBlocks", "ipv6CidrBlocks"):
        value = _as_list(dig(block, key))
        cidrs.extend([] if value is UNKNOWN else value)
    return cidrs


def _is_whole_internet(cidr: Any) -> bool:
    if not isinstance(cidr, str):
        return False
    try:
        return ipaddress.ip_network(cidr.strip(), strict=False).prefixlen == 0
    except ValueError:
        return False


def public_ports(config: Mapping[str, Any]) -> frozenset[int]:
    git_ssh_port = _as_int(config.get("gitSshPort", DEFAULT_CONFIG["gitSshPort"]))
    if git_ssh_port is None:
        raise ValueError(f"gitea-stack:gitSshPort must be a port number, got {config.get('gitSshPort')!r}")
    return frozenset({*PUBLIC_WEB_PORTS, git_ssh_port})


def _ports_text(allowed: frozenset[int]) -> str:
    web = ", ".join(str(port) for port in PUBLIC_WEB_PORTS)
    git = sorted(allowed - set(PUBLIC_WEB_PORTS))
    return f"{web} and the git SSH port {git[0]} (gitea-stack:gitSshPort)" if git else web


def _protocol_name(value: Any) -> str:
    """"tcp", "-1", "6"...: numbers (which may arrive as floats) as their decimal string."""
    number = _as_int(value)
    return str(number) if number is not None else str(value).strip().lower()


def _world_open_problem(ingress: _Ingress, allowed: frozenset[int]) -> str | None:
    """What is wrong with a world-open ingress, or None if it is fine, not world-open or unknown."""
    world = [cidr for cidr in ingress.cidrs if _is_whole_internet(cidr)]
    if not world or ingress.protocol is UNKNOWN or ingress.protocol is None:
        return None
    source = f"from {world[0]}"
    protocol = _protocol_name(ingress.protocol)
    if protocol in ALL_PROTOCOLS:
        return f"{ingress.where} allows all traffic {source}"
    if protocol in ICMP_PROTOCOLS:
        return None
    if protocol not in PORT_PROTOCOLS:
        return f"{ingress.where} allows protocol {protocol} {source}"
    if ingress.from_port is UNKNOWN or ingress.to_port is UNKNOWN:
        return None
    low, high = _as_int(ingress.from_port), _as_int(ingress.to_port)
    if low is None or high is None:
        return f"{ingress.where} allows {protocol} {source} without a port range"
    low, high = min(low, high), max(low, high)
    if all(port in allowed for port in range(low, high + 1)):
        return None
    ports = f"port {low}" if low == high else f"ports {low}-{high}"
    return f"{ingress.where} allows {protocol} {ports} {source}"


def check_admin_ssh_not_world_open(resource: Resource, config: Mapping[str, Any]) -> list[str]:
    allowed = public_ports(config)
    messages = []
    for ingress in _ingresses(resource):
        problem = _world_open_problem(ingress, allowed)
        if problem:
            messages.append(f"{problem}; only ports {_ports_text(allowed)} may be open to the world "
                            "(admin SSH comes from gitea-stack:sshAllowedCidrs)")
    return messages


# Ranges that, merged, are wider than this open a port to much of the internet (an ISP's block at most).
WIDEST_MERGED_PREFIX = {4: 8, 6: 16}


def _ingress_target(resource: Resource) -> Any:
    """The security group an ingress belongs to: its id, else (preview) the group it depends on, else
    "unknown" (grouped together: wrongly merging two groups' ranges is the safe mistake)."""
    if resource.type not in (INGRESS_RULE_TYPE, SECURITY_GROUP_RULE_TYPE):
        return resource.urn
    group_id = resource.props.get("securityGroupId")
    if isinstance(group_id, str):
        return group_id
    groups = sorted(urn for urn in resource.dependencies if any(f"{kind}::" in urn for kind in SECURITY_GROUP_TYPES))
    return groups[0] if groups else "unknown"


def check_ranges_not_world_together(resources: Sequence[Resource], config: Mapping[str, Any]) -> list[tuple[str, str]]:
    """Several narrow ranges on one port of one group can add up to the internet (two /1s are 0.0.0.0/0)."""
    allowed = public_ports(config)
    grouped: dict[tuple, list[tuple[str, str, ipaddress.IPv4Network | ipaddress.IPv6Network]]] = {}
    for resource in resources:
        target = _ingress_target(resource)
        for ingress in _ingresses(resource):
            low, high = _as_int(ingress.from_port), _as_int(ingress.to_port)
            if low is None or high is None or _protocol_name(ingress.protocol) in ICMP_PROTOCOLS:
                continue
            if all(port in allowed for port in range(min(low, high), max(low, high) + 1)):
                continue
            for cidr in ingress.cidrs:
                try:
                    network = ipaddress.ip_network(cidr.strip(), strict=False)
                except (AttributeError, ValueError):
                    continue
                key = (str(target), _protocol_name(ingress.protocol), min(low, high), max(low, high))
                grouped.setdefault(key, []).append((resource.urn, ingress.where, network))
    violations = []
    for (_, protocol, low, high), entries in sorted(grouped.items()):
        for version, widest in WIDEST_MERGED_PREFIX.items():
            # A single whole-internet range is admin-ssh-not-world-open's to report.
            mine = [entry for entry in entries if entry[2].version == version and entry[2].prefixlen > 0]
            merged = [n for n in ipaddress.collapse_addresses(entry[2] for entry in mine) if n.prefixlen < widest]
            if merged:
                ports = f"port {low}" if low == high else f"ports {low}-{high}"
                urn, where, _ = min(mine, key=lambda entry: (entry[2].prefixlen, entry[0]))
                violations.append((urn, f"{where} and {len(mine) - 1} other ingress range(s) on {protocol} {ports} "
                                        "together cover "
                                        f"{', '.join(map(str, merged))}, wider than /{widest}: as good as open to "
                                        "the internet (narrow gitea-stack:sshAllowedCidrs)"))
    return violations


# --- IAM ----------------------------------------------------------------------------------------------

INLINE_POLICY_TYPES = frozenset({
    "aws:iam/rolePolicy:RolePolicy", "aws:iam/userPolicy:UserPolicy",
    "aws:iam/groupPolicy:GroupPolicy", "aws:iam/policy:Policy",
})
ROLE_TYPE = "aws:iam/role:Role"

# The property naming the managed policies a resource attaches (a single ARN or a list).
MANAGED_POLICY_ARN_PROPS = {
    "aws:iam/rolePolicyAttachment:RolePolicyAttachment": "policyArn",
    "aws:iam/userPolicyAttachment:UserPolicyAttachment": "policyArn",
    "aws:iam/groupPolicyAttachment:GroupPolicyAttachment": "policyArn",
    "aws:iam/policyAttachment:PolicyAttachment": "policyArn",
    "aws:iam/rolePolicyAttachmentsExclusive:RolePolicyAttachmentsExclusive": "policyArns",
    "aws:iam/userPolicyAttachmentsExclusive:UserPolicyAttachmentsExclusive": "policyArns",
    "aws:iam/groupPolicyAttachmentsExclusive:GroupPolicyAttachmentsExclusive": "policyArns",
    ROLE_TYPE: "managedPolicyArns",
}
BROAD_MANAGED_POLICIES = frozenset({"AdministratorAccess", "PowerUserAccess", "IAMFullAccess"})


def _policy_documents(resource: Resource) -> list[tuple[str, Any]]:
    """(where, raw document) for every permission policy a resource carries."""
    if resource.type in INLINE_POLICY_TYPES:
        return [(resource.label, resource.props.get("policy"))]
    if resource.type == ROLE_TYPE:
        inline = _as_list(resource.props.get("inlinePolicies"))
        return [(f"{resource.label} inline policy #{index}", dig(block, "policy"))
                for index, block in enumerate([] if inline is UNKNOWN else inline)]
    return []


def _is_wildcard_action(action: str) -> bool:
    return action == "*" or action.endswith(":*")


def _wildcard_problem(statement: Mapping[str, Any]) -> str | None:
    if statement.get("Effect") != "Allow":
        return None
    # NotResource in an Allow grants everything but the listed resources: as broad as "*".
    if "*" not in _strings(statement.get("Resource")) and "NotResource" not in statement:
        return None
    # NotAction in an Allow grants every action but the listed ones, so it is broad whatever it lists.
    if "NotAction" in statement:
        return f"allows every action except {_strings(statement.get('NotAction'))} on every resource"
    wildcards = [action for action in _strings(statement.get("Action")) if _is_wildcard_action(action)]
    if wildcards:
        return f"allows {', '.join(repr(a) for a in wildcards)} on Resource '*'"
    return None


def check_iam_no_wildcard_allow(resource: Resource, config: Mapping[str, Any]) -> list[str]:
    messages = []
    for where, raw in _policy_documents(resource):
        document = policy_document(raw)
        if document is UNKNOWN or document is None:
            continue
        for index, statement in enumerate(_statements(document)):
            problem = _wildcard_problem(statement)
            if problem:
                sid = statement.get("Sid")
                which = f"statement '{sid}'" if isinstance(sid, str) else f"statement #{index}"
                messages.append(f"{where} {which} {problem}: name the actions and resources it needs")
    return messages


def is_broad_managed_policy(arn: str) -> bool:
    name = arn.rsplit("/", 1)[-1]
    return name in BROAD_MANAGED_POLICIES or name.endswith("FullAccess")


def check_iam_no_broad_managed_policies(resource: Resource, config: Mapping[str, Any]) -> list[str]:
    prop = MANAGED_POLICY_ARN_PROPS.get(resource.type)
    arns = _as_list(resource.props.get(prop)) if prop else []
    if arns is UNKNOWN:
        return []
    return [f"{resource.label} attaches the broad managed policy {arn}: write a least-privilege policy instead"
            for arn in arns if isinstance(arn, str) and is_broad_managed_policy(arn)]


# Action names that write to S3: every Put* and Delete* (objects, versions, bucket settings).
S3_WRITE_VERBS = ("put", "delete")


def _may_write_s3(action: str) -> bool:
    """True if an action, wildcards included ("s3:*", "s3:Put*", "*Object"), can name an S3 Put or Delete."""
    service, _, name = action.lower().partition(":")
    if action == "*":
        return True
    if not fnmatch.fnmatchcase("s3", service):
        return False
    literal = re.split(r"[*?]", name, maxsplit=1)[0]
    if literal == name:  # no wildcard: the action itself
        return name.startswith(S3_WRITE_VERBS)
    return any(verb.startswith(literal) or literal.startswith(verb) for verb in S3_WRITE_VERBS)


def _own_bucket_test(resources: Sequence[Resource], config: Mapping[str, Any]) -> Callable[[str], Any]:
    """A test of a bucket name: True if the stack owns it, False if not, UNKNOWN if it cannot tell yet.

    The stack owns the buckets it creates (a new one's name is unknown in a preview, but starts with
    its bucketPrefix) and the backup bucket it adopts (`gitea-stack:adopt.backupBucket`).
    """
    names, prefixes, unknown = set(), [], False
    adoption = config.get("adopt")
    if isinstance(adoption, str):  # as the engine hands a map over: JSON
        try:
            adoption = json.loads(adoption)
        except ValueError:
            adoption = None
    adopted = dig(adoption, "backupBucket")
    if isinstance(adopted, str):
        names.add(adopted)
    for bucket in (r for r in resources if r.type in BUCKET_TYPES):
        name, prefix = bucket.props.get("bucket"), bucket.props.get("bucketPrefix")
        if isinstance(name, str):
            names.add(name)
        elif isinstance(prefix, str):
            prefixes.append(prefix)
        else:
            unknown = True

    def owns(name: str) -> Any:
        if name in names or any(name.startswith(prefix) for prefix in prefixes):
            return True
        return UNKNOWN if unknown else False
    return owns


def _bucket_of_arn(arn: str) -> str | None:
    """The bucket an S3 ARN names (arn:<partition>:s3:::<bucket>[/key]); "*" for every bucket; None if not S3."""
    if arn == "*":
        return "*"
    if not re.match(r"^arn:[a-z-]+:s3:::", arn):
        return None
    return arn.partition(":::")[2].split("/", 1)[0]


def check_s3_writes_only_to_own_buckets(resources: Sequence[Resource],
                                        config: Mapping[str, Any]) -> list[tuple[str, str]]:
    """No policy lets a role or user of the stack write to a bucket the stack does not own.

    A restore (`restoreFrom`) reads another stack's bucket: a write there could damage the only
    copy of the old forge.
    """
    owns = _own_bucket_test(resources, config)
    violations = []
    for resource in resources:
        for where, raw in _policy_documents(resource):
            document = policy_document(raw)
            if document is UNKNOWN or document is None:
                continue
            for statement in _statements(document):
                # A wildcard on every resource is iam-no-wildcard-allow's to report.
                if statement.get("Effect") != "Allow" or _wildcard_problem(statement):
                    continue
                writes = "NotAction" in statement or any(
                    _may_write_s3(action) for action in _strings(statement.get("Action")))
                if not writes:
                    continue
                buckets = [_bucket_of_arn(arn) for arn in _strings(statement.get("Resource"))]
                if "NotResource" in statement:
                    buckets.append("*")
                foreign = sorted({bucket for bucket in buckets if bucket and ("*" in bucket or owns(bucket) is False)})
                if foreign:
                    violations.append((resource.urn, f"{where} allows S3 writes (Put or Delete) on "
                                                     f"{', '.join(foreign)}, which this stack does not own: "
                                                     "grant read only on other buckets (s3:ListBucket, s3:GetObject)"))
    return violations


# --- Secrets Manager ----------------------------------------------------------------------------

SECRET_TYPE = "aws:secretsmanager/secret:Secret"


def check_secret_recovery_window(resource: Resource, config: Mapping[str, Any]) -> list[str]:
    if resource.type != SECRET_TYPE:
        return []
    window = resource.props.get("recoveryWindowInDays")
    if window is None or window is UNKNOWN:  # absent: the AWS default of 30 days
        return []
    days = _as_int(window)
    if days is not None and (days == 0 or 7 <= days <= 30):
        return []
    return [f"{resource.label} has recoveryWindowInDays {window!r}: expected 0 (delete at once) or 7 to 30"]


# --- tags -----------------------------------------------------------------------------------------

TAGGABLE_TYPES = frozenset({
    "aws:ec2/vpc:Vpc",
    "aws:ec2/subnet:Subnet",
    "aws:ec2/internetGateway:InternetGateway",
    "aws:ec2/routeTable:RouteTable",
    "aws:ec2/securityGroup:SecurityGroup",
    "aws:vpc/securityGroupIngressRule:SecurityGroupIngressRule",
    "aws:vpc/securityGroupEgressRule:SecurityGroupEgressRule",
    "aws:ec2/instance:Instance",
    "aws:ebs/volume:Volume",
    "aws:ec2/eip:Eip",
    "aws:ec2/keyPair:KeyPair",
    "aws:iam/role:Role",
    "aws:iam/instanceProfile:InstanceProfile",
    "aws:iam/user:User",
    "aws:s3/bucket:Bucket",
    "aws:s3/bucketV2:BucketV2",
    "aws:secretsmanager/secret:Secret",
    "aws:sesv2/emailIdentity:EmailIdentity",
    "aws:cloudwatch/metricAlarm:MetricAlarm",
    "aws:cloudwatch/logGroup:LogGroup",
    "aws:ec2/flowLog:FlowLog",
    "aws:ec2/defaultSecurityGroup:DefaultSecurityGroup",
    "aws:kms/key:Key",
})


def check_stack_tags(resource: Resource, config: Mapping[str, Any]) -> list[str]:
    if resource.type not in TAGGABLE_TYPES:
        return []
    tags = resource.props.get("tags")
    if tags is UNKNOWN:
        return []
    tags = tags if isinstance(tags, Mapping) else {}
    messages = []
    for key, expected in (("Project", resource.project), ("Stack", resource.stack)):
        value = tags.get(key)
        if value is UNKNOWN or value == expected:
            continue
        found = "is missing it" if value is None else f"has {key}={value!r}"
        messages.append(f"{resource.label} needs tag {key}={expected!r} but {found}")
    return messages


# --- the rule set ---------------------------------------------------------------------------------

RULES: tuple[Rule, ...] = (
    Rule("s3-public-access-block",
         "Every S3 bucket has a BucketPublicAccessBlock with blockPublicAcls, blockPublicPolicy, "
         "ignorePublicAcls and restrictPublicBuckets all true.",
         "stack", _bucket_requirement(PUBLIC_ACCESS_BLOCK_TYPES, _blocks_all_public_access,
                                      "BucketPublicAccessBlock with all four flags true")),
    Rule("s3-default-encryption",
         "Every S3 bucket has a server-side encryption configuration with an sseAlgorithm.",
         "stack", _bucket_requirement(ENCRYPTION_TYPES, _encrypts_by_default,
                                      "BucketServerSideEncryptionConfiguration with an sseAlgorithm")),
    Rule("s3-versioning",
         "Every S3 bucket has a BucketVersioning with status Enabled.",
         "stack", _bucket_requirement(VERSIONING_TYPES, _versioning_enabled,
                                      "BucketVersioning with status Enabled")),
    Rule("s3-tls-only",
         "Every S3 bucket has a BucketPolicy denying all S3 actions on the bucket and its objects "
         "when aws:SecureTransport is false.",
         "stack", _bucket_requirement(BUCKET_POLICY_TYPES, _denies_insecure_transport,
                                      "BucketPolicy denying requests where aws:SecureTransport is false")),
    Rule("s3-owner-enforced",
         "Every S3 bucket has BucketOwnershipControls with objectOwnership BucketOwnerEnforced (ACLs off).",
         "stack", _bucket_requirement(OWNERSHIP_TYPES, _owner_enforced,
                                      "BucketOwnershipControls with objectOwnership BucketOwnerEnforced")),
    Rule("s3-lifecycle",
         "Every S3 bucket has a lifecycle configuration with enabled rules that expire noncurrent "
         "versions and abort incomplete multipart uploads.",
         "stack", _bucket_requirement(LIFECYCLE_TYPES, _lifecycle_complete,
                                      "BucketLifecycleConfiguration with enabled rules expiring noncurrent "
                                      "versions and aborting incomplete multipart uploads")),
    Rule("s3-access-logging",
         "Every S3 bucket that does not itself receive access logs has a BucketLogging writing its "
         "server access logs to another bucket.",
         "stack", check_s3_access_logging),
    Rule("vpc-flow-logs",
         "Every VPC has a FlowLog recording ALL traffic.",
         "stack", _vpc_requirement(FLOW_LOG_TYPE, _logs_all_traffic, "FlowLog recording ALL traffic")),
    Rule("vpc-default-security-group-closed",
         "Every VPC's default security group is managed (DefaultSecurityGroup) with no ingress and no egress rule.",
         "stack", _vpc_requirement(DEFAULT_SECURITY_GROUP_TYPE, _has_no_rules,
                                   "DefaultSecurityGroup without any ingress or egress rule")),
    Rule("log-group-encrypted-and-expiring",
         "Every CloudWatch log group is encrypted with a KMS key (kmsKeyId) and has a retention.",
         "resource", check_log_group_encrypted_and_expiring),
    Rule("kms-key-rotation",
         "Every KMS key has automatic rotation enabled.",
         "resource", check_kms_key_rotation),
    Rule("ebs-encrypted",
         "Every EBS volume is encrypted.",
         "resource", check_ebs_encrypted),
    Rule("instance-root-volume-encrypted",
         "Every EC2 instance has an encrypted root volume, and any EBS block devices it declares are encrypted.",
         "resource", check_instance_volumes_encrypted),
    Rule("instance-imdsv2",
         "Every EC2 instance requires IMDSv2 (metadataOptions.httpTokens is 'required').",
         "resource", check_instance_imdsv2),
    Rule("admin-ssh-not-world-open",
         "No security group ingress is open to 0.0.0.0/0 or ::/0 except on ports 80, 443 and the git SSH "
         "port (the stack's gitea-stack:gitSshPort, default 22; policy config gitSshPort overrides it); "
         "admin SSH must come from known CIDRs.",
         "resource", check_admin_ssh_not_world_open,
         config_schema={"gitSshPort": {"type": "integer", "minimum": 1, "maximum": 65535}}),
    Rule("admin-ssh-ranges-not-world-together",
         "The ingress ranges of one security group port (other than 80, 443 and the git SSH port), merged, "
         "are no wider than /8 (IPv4) or /16 (IPv6): several ranges must not add up to the internet.",
         "stack", check_ranges_not_world_together,
         config_schema={"gitSshPort": {"type": "integer", "minimum": 1, "maximum": 65535}}),
    Rule("iam-no-wildcard-allow",
         "No IAM policy document allows '*' or '<service>:*' actions (or uses NotAction) on Resource '*'.",
         "resource", check_iam_no_wildcard_allow),
    Rule("iam-no-broad-managed-policies",
         "No IAM principal gets a broad AWS managed policy (AdministratorAccess, PowerUserAccess, "
         "IAMFullAccess or any *FullAccess).",
         "resource", check_iam_no_broad_managed_policies),
    Rule("s3-writes-only-to-own-buckets",
         "No IAM policy allows S3 Put or Delete actions on a bucket the stack does not own (the buckets it "
         "creates, and the backup bucket it adopts: gitea-stack:adopt.backupBucket); another stack's bucket, "
         "such as restoreFrom's, is read only.",
         "stack", check_s3_writes_only_to_own_buckets,
         config_schema={"adopt": {"type": "object"}}),
    Rule("secret-recovery-window",
         "A Secrets Manager secret's recoveryWindowInDays, when set, is 0 or between 7 and 30.",
         "resource", check_secret_recovery_window),
    Rule("stack-tags",
         "Every taggable resource carries the tags Project and Stack matching its Pulumi project and stack.",
         "resource", check_stack_tags),
)


def with_defaults(config: Mapping[str, Any] | None) -> dict[str, Any]:
    return {**DEFAULT_CONFIG, **(config or {})}


def evaluate(resources: Sequence[Resource], config: Mapping[str, Any] | None = None) -> list[Violation]:
    """Run every rule: resource rules on each resource, stack rules on the whole list."""
    config = with_defaults(config)
    violations = []
    for rule in RULES:
        if rule.scope == "resource":
            for resource in resources:
                violations.extend(Violation(rule.name, resource.urn, message)
                                  for message in rule.check(resource, config))
        else:
            violations.extend(Violation(rule.name, urn, message) for urn, message in rule.check(resources, config))
    return violations
