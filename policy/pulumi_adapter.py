"""Wraps the pure rules in `rules` as pulumi_policy policies.

Importing this module starts nothing: only `__main__` builds the PolicyPack (which serves gRPC).

pulumi_policy hands properties over wrapped in proxies that raise `UnknownValueError` when a value
is one of its "unknown" sentinel strings (values not computed yet during preview). `plain` copies
them into ordinary dicts and lists with those values replaced by `rules.UNKNOWN`, so a rule never
trips over a proxy or mistakes a sentinel for a real value.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from functools import cache
from pathlib import Path
from typing import Any

import yaml

from pulumi_policy import (
    EnforcementLevel,
    PolicyConfigSchema,
    PolicyResource,
    ResourceValidationArgs,
    ResourceValidationPolicy,
    StackValidationArgs,
    StackValidationPolicy,
)
from pulumi_policy.proxy import (
    UNKNOWN_ARCHIVE_VALUE,
    UNKNOWN_ARRAY_VALUE,
    UNKNOWN_ASSET_VALUE,
    UNKNOWN_BOOLEAN_VALUE,
    UNKNOWN_NUMBER_VALUE,
    UNKNOWN_OBJECT_VALUE,
    UNKNOWN_STRING_VALUE,
    UnknownValueError,
)
from pulumi_policy.secret import Secret

from rules import RULES, UNKNOWN, Resource, Rule, stack_of, with_defaults

# The project's stack files, one level above the policy pack.
PROJECT_DIR = Path(__file__).resolve().parent.parent
# Stack settings the rules read, as the rules' config names them.
STACK_SETTINGS = {"gitea-stack:gitSshPort": "gitSshPort", "gitea-stack:adopt": "adopt"}

UNKNOWN_SENTINELS = frozenset({
    UNKNOWN_BOOLEAN_VALUE, UNKNOWN_NUMBER_VALUE, UNKNOWN_STRING_VALUE, UNKNOWN_ARRAY_VALUE,
    UNKNOWN_ASSET_VALUE, UNKNOWN_ARCHIVE_VALUE, UNKNOWN_OBJECT_VALUE,
})


def plain(value: Any) -> Any:
    """A property value as plain dicts, lists and scalars, with unknowns as `rules.UNKNOWN`."""
    if isinstance(value, Secret):  # only with secret-preserving proxies: the rules need the value
        value = value.value
    if isinstance(value, str):
        return UNKNOWN if value in UNKNOWN_SENTINELS else value
    if isinstance(value, Mapping):
        return {key: _plain_item(value, key) for key in value}
    if isinstance(value, Sequence):
        return [_plain_item(value, index) for index in range(len(value))]
    return value


def _plain_item(container: Any, key: Any) -> Any:
    # The unknown-checking proxy raises on reading an unknown instead of returning it.
    try:
        return plain(container[key])
    except UnknownValueError:
        return UNKNOWN


def resource_from_args(args: ResourceValidationArgs) -> Resource:
    """The resource a resource policy validates (its inputs; no dependencies are given there)."""
    return Resource(urn=args.urn, type=args.resource_type, name=args.name, props=plain(args.props))


def resource_from_policy_resource(resource: PolicyResource) -> Resource:
    """A resource of a stack validation, with its plain and property dependencies as URNs."""
    dependencies = {dependency.urn for dependency in resource.dependencies}
    for property_dependencies in resource.property_dependencies.values():
        dependencies.update(dependency.urn for dependency in property_dependencies)
    return Resource(urn=resource.urn, type=resource.resource_type, name=resource.name,
                    props=plain(resource.props), dependencies=frozenset(dependencies))


@cache
def stack_settings(stack: str, project_dir: Path | None = None) -> dict[str, Any]:
    """What the rules read from the stack's own config (Pulumi.<stack>.yaml), so nothing is set twice."""
    stack_file = (project_dir or PROJECT_DIR) / f"Pulumi.{stack}.yaml"
    if not stack or not stack_file.is_file():
        return {}
    config = (yaml.safe_load(stack_file.read_text()) or {}).get("config") or {}
    return {name: config[key] for key, name in STACK_SETTINGS.items() if key in config}


def rule_config(policy_config: Any, stack: str) -> dict[str, Any]:
    """Policy config set for the pack wins; then the stack's own settings; then the rules' defaults."""
    return with_defaults({**stack_settings(stack), **(plain(policy_config) or {})})


def _config_schema(rule: Rule) -> PolicyConfigSchema | None:
    return PolicyConfigSchema(properties=dict(rule.config_schema)) if rule.config_schema else None


def resource_policy(rule: Rule) -> ResourceValidationPolicy:
    def validate(args: ResourceValidationArgs, report_violation) -> None:
        resource = resource_from_args(args)
        for message in rule.check(resource, rule_config(args.get_config(), resource.stack)):
            report_violation(message, resource.urn)

    return ResourceValidationPolicy(name=rule.name, description=rule.description, validate=validate,
                                    enforcement_level=EnforcementLevel.MANDATORY,
                                    config_schema=_config_schema(rule))


def stack_policy(rule: Rule) -> StackValidationPolicy:
    def validate(args: StackValidationArgs, report_violation) -> None:
        resources = [resource_from_policy_resource(resource) for resource in args.resources]
        stack = stack_of(resources)
        for urn, message in rule.check(resources, rule_config(args.get_config(), stack)):
            report_violation(message, urn)

    return StackValidationPolicy(name=rule.name, description=rule.description, validate=validate,
                                 enforcement_level=EnforcementLevel.MANDATORY,
                                 config_schema=_config_schema(rule))


def build_policies() -> list:
    """One MANDATORY pulumi_policy policy per rule, in the order of `rules.RULES`."""
    return [resource_policy(rule) if rule.scope == "resource" else stack_policy(rule) for rule in RULES]
