"""The log plane's configuration (Loki and Alloy), checked offline against upstream, plus the real
inputs it reads.

Loki (docker.io/grafana/loki:3.7.8) and Alloy (docker.io/grafana/alloy:v1.19.2) cannot be installed or
run here. Their rendered configs are checked against references extracted from the upstream sources
(tests/host/reference/extract_log_plane_reference.py, which records repository, ref and commit):
  * Loki: every key path of loki/config.yml exists in Loki's configuration reference
    (docs/sources/shared/configuration.md), with values of the documented type;
  * Alloy: alloy/config.alloy is parsed (a parser for the Alloy syntax subset below), and every
    component, argument and block name must be in the component's reference page and in the
    `alloy:"..."` struct tags of Alloy's Go source, required arguments must be set, and every
    component reference must point at a component of the file and one of its exports.
The inputs are real where a real tool exists here:
  * a real dockerd (Debian's docker.io) with the json-file driver and the log option
    `labels=com.docker.compose.service` writes the log file Alloy reads; the JMESPath expressions of
    the Alloy config are evaluated on that real line (python jmespath, the same specification as
    Alloy's go-jmespath);
  * a real nginx with the proposed `log_format gitea_stack_json escape=json` writes the access line
    the nginx stage parses;
  * the SSH failed-login expression is matched against the OpenSSH message formats (from the source
    of 9.6p1, Ubuntu 24.04's version) and against a real sshd's log of failed logins.
"""

from __future__ import annotations

import json
import re
import subprocess
import tarfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import jmespath
import pytest
import yaml

from gitea_stack.settings import parse_settings
from tests.harness.bundles import BASE, render, variant
from tests.harness.nginx import free_port, wait_for_port
from tests.harness.tools import require_root, require_tool, stop_process

REFERENCE = Path(__file__).parent / "reference"
LOKI_REFERENCE = json.loads((REFERENCE / "loki" / "config-reference.json").read_text())
ALLOY_REFERENCE = json.loads((REFERENCE / "alloy" / "components-reference.json").read_text())

# The observability contract (shared notes of issue 12).
CONTRACT_METRICS = {"nginx_http_requests_total", "nginx_http_request_duration_seconds",
                    "admin_ssh_failed_logins_total"}
CONTRACT_BUCKETS = [0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30]
NGINX_FIELDS = ("time", "remote_addr", "method", "uri", "status", "request_time", "bytes_sent",
                "upstream_response_time", "host", "user_agent")
# The log_format proposed for templates/nginx/http.conf.j2 (owned by the nginx work of issue 12).
NGINX_LOG_FORMAT = (
    "log_format gitea_stack_json escape=json '{\"time\":\"$time_iso8601\",\"remote_addr\":\"$remote_addr\","
    "\"method\":\"$request_method\",\"uri\":\"$request_uri\",\"status\":$status,"
    "\"request_time\":$request_time,\"bytes_sent\":$bytes_sent,"
    "\"upstream_response_time\":\"$upstream_response_time\",\"host\":\"$host\","
    "\"user_agent\":\"$http_user_agent\"}';")
BUNDLE_LOG_FORMAT = re.compile(r"log_format\s+gitea_stack_json\s[^;]*;")
GO_DURATION = re.compile(r"^(\d+(\.\d+)?(ns|us|µs|ms|s|m|h))+$")


def rendered(name: str = "example", **overrides) -> dict[str, str]:
    settings = parse_settings({**BASE, **overrides}, "prod") if overrides else variant(name)
    return {path: content for path, (content, _) in render(settings).items()}


# --- Loki ------------------------------------------------------------------------------------------

class StrictLoader(yaml.SafeLoader):
    """Refuses a key twice in one mapping, as Loki's strict YAML decoding does."""

    def construct_mapping(self, node, deep=False):
        keys = [self.construct_object(key, deep=deep) for key, _ in node.value]
        if len(keys) != len(set(keys)):
            raise yaml.constructor.ConstructorError(None, None, f"duplicate keys in {keys}", node.start_mark)
        return super().construct_mapping(node, deep=deep)


def loki_config(**overrides) -> dict:
    return yaml.load(rendered(**overrides)["loki/config.yml"], Loader=StrictLoader)


def test_the_strict_loader_refuses_duplicate_keys():
    with pytest.raises(yaml.constructor.ConstructorError):
        yaml.load("a: 1\nb: {c: 1, c: 2}\n", Loader=StrictLoader)


def value_has_type(value, kind: str) -> bool:
    if kind == "duration":
        return isinstance(value, str) and bool(GO_DURATION.match(value)) or value == 0
    if kind == "boolean":
        return isinstance(value, bool)
    if kind == "int":
        return (isinstance(value, int) and not isinstance(value, bool)) or (
            isinstance(value, str) and re.fullmatch(r"\d+(B|KB|MB|GB|TB|KiB|MiB|GiB)?", value) is not None)
    if kind == "float":
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if kind == "string":
        return isinstance(value, str)
    if kind == "daytime":
        return isinstance(value, str) and re.fullmatch(r"\d{4}-\d{2}-\d{2}", value) is not None
    if kind.startswith("list of"):
        return isinstance(value, list)
    if kind.startswith("map of"):
        return isinstance(value, dict)
    return True  # a type this config does not use


def loki_block(name: str) -> dict:
    return LOKI_REFERENCE["blocks"][name]


def with_inlined(node: dict) -> dict:
    """A reference node with the keys of its squashed blocks (`[<tls_config>]`) merged in."""
    merged = {key: spec for key, spec in node.items() if key != "<inline>"}
    for name in node.get("<inline>", {}).get("inline", []):
        merged.update(with_inlined(loki_block(name)))
    return merged


def check_loki(config: dict, node: dict, path: str, errors: list[str]) -> None:
    node = with_inlined(node)
    for key, value in config.items():
        where = f"{path}.{key}" if path else key
        spec = node.get(key) or node.get("<any>")
        if spec is None:
            errors.append(f"{where}: no such key in Loki's configuration reference")
        elif "children" in spec:
            if not isinstance(value, dict):
                errors.append(f"{where}: a block, got {value!r}")
            else:
                check_loki(value, spec["children"], where, errors)
        elif "ref" in spec:
            if not isinstance(value, dict):
                errors.append(f"{where}: a {spec['ref']} block, got {value!r}")
            else:
                check_loki(value, loki_block(spec["ref"]), where, errors)
        elif "list_of" in spec:
            if not isinstance(value, list):
                errors.append(f"{where}: a list of {spec['list_of']}, got {value!r}")
            for index, item in enumerate(value if isinstance(value, list) else []):
                check_loki(item, loki_block(spec["list_of"]), f"{where}[{index}]", errors)
        elif not value_has_type(value, spec["type"]):
            errors.append(f"{where}: {value!r} is not a <{spec['type']}>")


def test_the_loki_reference_is_the_pinned_line():
    source = LOKI_REFERENCE["source"]
    assert source["repository"] == "https://github.com/grafana/loki"
    assert source["ref"] in ("v3.7.8", "release-3.7.x")
    assert source["path"] == "docs/sources/shared/configuration.md"
    # The reference is complete enough to be a check at all.
    assert {"compactor", "limits_config", "schema_config", "period_config", "storage_config",
            "cache_config", "server", "common"} <= set(LOKI_REFERENCE["blocks"])


@pytest.mark.parametrize("overrides", [{}, {"logsRetentionDays": 7}, {"logsRetentionDays": 400}])
def test_every_loki_key_exists_in_the_reference_with_its_type(overrides):
    errors: list[str] = []
    check_loki(loki_config(**overrides), LOKI_REFERENCE["root"], "", errors)
    assert errors == []


def test_the_checker_rejects_unknown_keys_and_wrong_types():
    errors: list[str] = []
    check_loki({"compactor": {"retention_enabled": "yes", "retention_period": "1h"},
                "limits_config": {"retention_period": "30d"}, "ruler": {"alertmanager_url": "x"},
                "no_such_block": {}}, LOKI_REFERENCE["root"], "", errors)
    assert errors == ["compactor.retention_enabled: 'yes' is not a <boolean>",
                      "compactor.retention_period: no such key in Loki's configuration reference",
                      "limits_config.retention_period: '30d' is not a <duration>",
                      "no_such_block: no such key in Loki's configuration reference"]


@pytest.mark.parametrize("days", [1, 30, 400])
def test_loki_keeps_logs_for_logs_retention_days_through_the_compactor(days):
    config = loki_config(logsRetentionDays=days)
    assert config["limits_config"]["retention_period"] == f"{days * 24}h"
    assert config["limits_config"]["max_query_length"] == f"{days * 24 + 1}h"
    compactor = config["compactor"]
    assert compactor["retention_enabled"] is True
    assert compactor["delete_request_store"] == "filesystem"
    assert compactor["working_directory"].startswith("/loki/")
    assert GO_DURATION.match(compactor["retention_delete_delay"])


def test_loki_is_one_process_on_the_data_volume_with_schema_v13():
    config = loki_config()
    assert config["target"] == "all" and config["auth_enabled"] is False
    assert config["server"]["http_listen_port"] == 3100
    assert config["analytics"]["reporting_enabled"] is False
    assert config["common"]["replication_factor"] == 1
    assert config["common"]["ring"]["kvstore"]["store"] == "inmemory"
    [period] = config["schema_config"]["configs"]
    assert (period["store"], period["object_store"], period["schema"], period["index"]["period"]) == (
        "tsdb", "filesystem", "v13", "24h")
    paths = [config["common"]["path_prefix"], config["common"]["storage"]["filesystem"]["chunks_directory"],
             config["storage_config"]["tsdb_shipper"]["active_index_directory"],
             config["storage_config"]["tsdb_shipper"]["cache_location"], config["ingester"]["wal"]["dir"],
             config["compactor"]["working_directory"]]
    assert all(path == "/loki" or path.startswith("/loki/") for path in paths)
    limits = config["limits_config"]
    assert limits["reject_old_samples"] is True
    # Caches small enough for a 4 GiB host (Loki's default embedded cache is 100 MB each).
    assert config["query_range"]["results_cache"]["cache"]["embedded_cache"]["max_size_mb"] <= 64
    assert config["chunk_store_config"]["chunk_cache_config"]["embedded_cache"]["max_size_mb"] <= 64
    assert "ruler" not in config


# --- Alloy: a parser for the syntax subset the config uses ------------------------------------------

@dataclass(frozen=True)
class Ref:
    """A reference to another component's export: loki.process.containers.receiver."""
    path: str


@dataclass
class Block:
    name: str
    label: str | None
    attributes: dict[str, object] = field(default_factory=dict)
    blocks: list[Block] = field(default_factory=list)
    line: int = 0


TOKEN = re.compile(r"""
    (?P<space>[ \t\r]+) | (?P<newline>\n) | (?P<comment>//[^\n]*|/\*.*?\*/) |
    (?P<string>"(?:[^"\\\n]|\\.)*") | (?P<raw>`[^`]*`) |
    (?P<number>-?\d+(?:\.\d+)?(?:[eE][+-]?\d+)?) |
    (?P<ident>[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*) |
    (?P<punct>[{}\[\]=,])
""", re.VERBOSE | re.DOTALL)
ESCAPES = {"n": "\n", "t": "\t", "r": "\r", "\\": "\\", '"': '"'}


def tokenize(text: str) -> list[tuple[str, object, int]]:
    tokens, position, line = [], 0, 1
    while position < len(text):
        match = TOKEN.match(text, position)
        if match is None:
            raise SyntaxError(f"line {line}: unexpected {text[position:position + 20]!r}")
        kind, value = match.lastgroup, match.group()
        if kind == "string":
            body = value[1:-1]
            if re.search(r"\\[^ntr\\\"]", body):
                raise SyntaxError(f"line {line}: unsupported escape in {value}")
            tokens.append(("string", re.sub(r"\\(.)", lambda m: ESCAPES[m[1]], body), line))
        elif kind == "raw":
            tokens.append(("string", value[1:-1], line))
        elif kind == "number":
            tokens.append(("number", float(value) if re.search(r"[.eE]", value) else int(value), line))
        elif kind == "ident":
            tokens.append(("ident", value, line))
        elif kind == "punct":
            tokens.append((value, value, line))
        line += value.count("\n")
        position = match.end()
    tokens.append(("eof", None, line))
    return tokens


class Parser:
    def __init__(self, text: str):
        self.tokens, self.index = tokenize(text), 0

    def peek(self, offset: int = 0) -> tuple[str, object, int]:
        return self.tokens[self.index + offset]

    def take(self, kind: str) -> object:
        token = self.peek()
        if token[0] != kind:
            raise SyntaxError(f"line {token[2]}: expected {kind}, got {token[1]!r}")
        self.index += 1
        return token[1]

    def body(self, end: str) -> tuple[dict[str, object], list[Block]]:
        attributes: dict[str, object] = {}
        blocks: list[Block] = []
        while self.peek()[0] != end:
            kind, name, line = self.peek()
            if kind != "ident":
                raise SyntaxError(f"line {line}: expected a name, got {name!r}")
            self.index += 1
            if self.peek()[0] == "=":
                self.index += 1
                if "." in name:
                    raise SyntaxError(f"line {line}: attribute names have no dots: {name}")
                if name in attributes:
                    raise SyntaxError(f"line {line}: attribute {name} set twice")
                attributes[name] = self.expression()
            else:
                label = self.take("string") if self.peek()[0] == "string" else None
                self.take("{")
                inner_attributes, inner_blocks = self.body("}")
                self.take("}")
                blocks.append(Block(name, label, inner_attributes, inner_blocks, line))
        return attributes, blocks

    def expression(self) -> object:
        kind, value, line = self.peek()
        self.index += 1
        if kind in ("string", "number"):
            return value
        if kind == "ident":
            if value in ("true", "false"):
                return value == "true"
            if value == "null":
                return None
            return Ref(value)
        if kind == "[":
            items = []
            while self.peek()[0] != "]":
                items.append(self.expression())
                if self.peek()[0] != ",":
                    break
                self.index += 1
            self.take("]")
            return items
        if kind == "{":
            entries = {}
            while self.peek()[0] != "}":
                key_kind, key, key_line = self.peek()
                if key_kind not in ("ident", "string"):
                    raise SyntaxError(f"line {key_line}: expected an object key, got {key!r}")
                self.index += 1
                self.take("=")
                entries[key] = self.expression()
                if self.peek()[0] != ",":
                    break
                self.index += 1
            self.take("}")
            return entries
        raise SyntaxError(f"line {line}: unexpected {value!r} in an expression")


def parse_alloy(text: str) -> list[Block]:
    parser = Parser(text)
    attributes, blocks = parser.body("eof")
    if attributes:
        raise SyntaxError(f"top-level attributes are not allowed: {sorted(attributes)}")
    return blocks


def test_the_parser_reads_what_alloy_reads_and_rejects_what_it_rejects():
    [block] = parse_alloy('// c\nloki.write "x" {\n  endpoint { url = "http://a\\"b" }\n'
                          '  external_labels = {stack = `raw\\d`, "a b" = 1.5}\n'
                          '  x = [loki.process.y.receiver, true, null, -2]\n}\n')
    assert (block.name, block.label, block.line) == ("loki.write", "x", 2)
    assert block.blocks[0].attributes == {"url": 'http://a"b'}
    assert block.attributes["external_labels"] == {"stack": "raw\\d", "a b": 1.5}
    assert block.attributes["x"] == [Ref("loki.process.y.receiver"), True, None, -2]
    for broken in ('a "x" { b = }', 'a "x" { b = 1 b = 2 }', 'a "x" { b = 1', 'a = 1', 'a "x" { "\\q" }',
                   'a "x" { b = f(1) }'):
        with pytest.raises(SyntaxError):
            parse_alloy(broken)


# --- Alloy: the rendered config against the v1.19 reference ------------------------------------------

def alloy_config(**overrides) -> list[Block]:
    return parse_alloy(rendered(**overrides)["alloy/config.alloy"])


COMPONENTS = ALLOY_REFERENCE["components"]
CODE_TAGS = set(ALLOY_REFERENCE["code_tags"]["names"])


def component_id(block: Block) -> str:
    return f"{block.name}.{block.label}"


def check_alloy_block(block: Block, arguments: dict, allowed_blocks: list[str], page: dict, where: str,
                      errors: list[str]) -> None:
    for name in block.attributes:
        if name not in arguments:
            errors.append(f"{where}: no argument {name!r} (reference: {sorted(arguments)})")
        elif name not in CODE_TAGS:
            errors.append(f"{where}: argument {name!r} is documented but not an alloy struct tag")
    for name, spec in arguments.items():
        if spec["required"] and name not in block.attributes:
            errors.append(f"{where}: required argument {name!r} is missing")
        if (spec["type"] == "duration" and name in block.attributes
                and not GO_DURATION.match(str(block.attributes[name]))):
            errors.append(f"{where}: {name} = {block.attributes[name]!r} is not a duration")
    for inner in block.blocks:
        inner_where = f"{where} > {inner.name}"
        if inner.label is not None:
            errors.append(f"{inner_where}: a nested block has no label")
        if inner.name not in allowed_blocks:
            errors.append(f"{inner_where}: no block {inner.name!r} here (reference: {sorted(allowed_blocks)})")
            continue
        if not all(part in CODE_TAGS for part in inner.name.split(".")):
            errors.append(f"{inner_where}: block {inner.name!r} is documented but not an alloy struct tag")
        spec = page["blocks"][inner.name]
        check_alloy_block(inner, spec["arguments"], spec["blocks"], page, inner_where, errors)


def check_alloy(blocks: list[Block]) -> list[str]:
    errors: list[str] = []
    defined: dict[str, Block] = {}
    for block in blocks:
        page = COMPONENTS.get(block.name)
        if page is None:
            errors.append(f"line {block.line}: {block.name} is not a known component or configuration block")
            continue
        if page["kind"] == "component":
            if block.label is None:
                errors.append(f"line {block.line}: component {block.name} needs a label")
                continue
            if component_id(block) in defined:
                errors.append(f"line {block.line}: {component_id(block)} is defined twice")
            defined[component_id(block)] = block
        elif block.label is not None:
            errors.append(f"line {block.line}: configuration block {block.name} takes no label")
        check_alloy_block(block, page["arguments"], page["top_blocks"], page,
                          f"line {block.line} {block.name}", errors)
    for reference, where in references(blocks):
        owner = next((ident for ident in defined if reference.path.startswith(ident + ".")), None)
        if owner is None:
            errors.append(f"{where}: {reference.path} refers to no component of this file")
            continue
        export = reference.path[len(owner) + 1:]
        if export not in COMPONENTS[defined[owner].name]["exports"]:
            errors.append(f"{where}: {defined[owner].name} exports no {export!r}")
    return errors


def references(blocks: list[Block], where: str = "") -> list[tuple[Ref, str]]:
    found = []

    def values(value, here):
        if isinstance(value, Ref):
            found.append((value, here))
        elif isinstance(value, list):
            for item in value:
                values(item, here)
        elif isinstance(value, dict):
            for item in value.values():
                values(item, here)

    for block in blocks:
        here = f"{where} > {block.name}" if where else f"line {block.line} {block.name}"
        for name, value in block.attributes.items():
            values(value, f"{here}.{name}")
        found.extend(references(block.blocks, here))
    return found


def test_the_alloy_reference_is_the_pinned_line():
    source = ALLOY_REFERENCE["source"]
    assert source["repository"] == "https://github.com/grafana/alloy"
    assert source["ref"].startswith("v1.19.")
    assert {"loki.source.file", "loki.source.journal", "loki.process", "loki.write", "loki.relabel",
            "local.file_match"} <= set(COMPONENTS)
    # stage.match nests every stage, stage.metrics the metric.* blocks.
    process = COMPONENTS["loki.process"]["blocks"]
    assert set(process["stage.match"]["blocks"]) >= {"stage.json", "stage.metrics", "stage.regex"}
    assert set(process["stage.metrics"]["blocks"]) == {"metric.counter", "metric.gauge", "metric.histogram"}


@pytest.mark.parametrize("name", ["example", "another-domain"])
def test_every_alloy_component_argument_and_block_is_in_the_reference(name):
    assert check_alloy(parse_alloy(rendered(name)["alloy/config.alloy"])) == []


def test_the_alloy_checker_finds_what_alloy_would_reject():
    blocks = parse_alloy("""
        loki.source.file "a" { targets = [] forward_to = [loki.process.missing.receiver] tail = true }
        loki.process "b" { forward_to = [loki.write.c.targets] stage.json { expresions = {} } stage.nope {} }
        loki.write "c" { endpoint { } }
        loki.write "c" { }
        discovery.nothing "d" { }
        logging "e" { }
        loki.relabel "f" { forward_to = [] rule { max_age = "1d" } }
        loki.source.journal "g" { forward_to = [] max_age = "1d" }
    """)
    assert check_alloy(blocks) == [
        ("line 2 loki.source.file: no argument 'tail' (reference: ['encoding', 'forward_to', "
         "'legacy_positions_file', 'on_positions_file_error', 'tail_from_end', 'targets'])"),
        ("line 3 loki.process > stage.json: no argument 'expresions' (reference: ['drop_malformed', "
         "'expressions', 'regex', 'source'])"),
        (f"line 3 loki.process > stage.nope: no block 'stage.nope' here (reference: "
         f"{sorted(COMPONENTS['loki.process']['top_blocks'])})"),
        "line 4 loki.write > endpoint: required argument 'url' is missing",
        "line 5: loki.write.c is defined twice",
        "line 6: discovery.nothing is not a known component or configuration block",
        "line 7: configuration block logging takes no label",
        ("line 8 loki.relabel > rule: no argument 'max_age' (reference: ['action', 'modulus', 'regex', "
         "'replacement', 'separator', 'source_labels', 'target_label'])"),
        "line 9 loki.source.journal: max_age = '1d' is not a duration",
        "line 2 loki.source.file.forward_to: loki.process.missing.receiver refers to no component of this file",
        "line 3 loki.process.forward_to: loki.write exports no 'targets'",
    ]


def find(blocks: list[Block], name: str, label: str | None = None) -> Block:
    [block] = [block for block in blocks if block.name == name and (label is None or block.label == label)]
    return block


def stages(block: Block, name: str) -> list[Block]:
    return [inner for inner in block.blocks if inner.name == name]


def metric_blocks(blocks: list[Block]) -> list[Block]:
    found = []
    for block in blocks:
        if block.name.startswith("metric."):
            found.append(block)
        found.extend(metric_blocks(block.blocks))
    return found


def test_the_log_derived_metrics_have_the_contract_names():
    # stage.metrics names a metric prefix + name, and an empty prefix means "loki_process_custom_"
    # (internal/component/loki/process/stages/metric.go): every metric sets its prefix.
    metrics = metric_blocks(alloy_config())
    assert all(metric.attributes.get("prefix") for metric in metrics)
    assert {metric.attributes["prefix"] + metric.attributes["name"] for metric in metrics} == CONTRACT_METRICS
    [histogram] = [metric for metric in metrics if metric.name == "metric.histogram"]
    assert histogram.attributes["buckets"] == CONTRACT_BUCKETS
    assert histogram.attributes["source"] == "request_time"
    # Series of a metric that saw no line for max_idle_duration disappear; a counter that vanishes
    # between two failed logins would hide increases from increase(), so keep them for weeks.
    assert all(GO_DURATION.match(metric.attributes["max_idle_duration"]) for metric in metrics)
    assert all(metric.attributes["max_idle_duration"].endswith("h") for metric in metrics)


def test_container_logs_are_read_from_the_json_files_with_the_compose_service_as_label():
    blocks = alloy_config()
    assert not [block for block in blocks if block.name.startswith("discovery.docker")
                or block.name == "loki.source.docker"], "no Docker API: Alloy gets no Docker socket"
    match = find(blocks, "local.file_match", "containers")
    assert match.attributes["path_targets"] == [{"__path__": "/var/lib/docker/containers/*/*-json.log"}]
    source = find(blocks, "loki.source.file", "containers")
    assert source.attributes["targets"] == Ref("local.file_match.containers.targets")
    process = find(blocks, "loki.process", "containers")
    [json_stage] = stages(process, "stage.json")
    expressions = json_stage.attributes["expressions"]
    assert expressions["service"] == 'attrs."com.docker.compose.service"'
    assert {"log", "time"} <= set(expressions)
    assert stages(process, "stage.timestamp")[0].attributes == {"source": "time", "format": "RFC3339Nano"}
    assert stages(process, "stage.output")[0].attributes == {"source": "log"}
    assert stages(process, "stage.static_labels")[0].attributes == {"values": {"source": "container"}}
    assert "filename" in stages(process, "stage.label_drop")[0].attributes["values"]


def test_the_nginx_status_label_exists_only_for_the_counter():
    process = find(alloy_config(), "loki.process", "containers")
    [nginx] = [block for block in stages(process, "stage.match")
               if block.attributes["selector"] == '{service="nginx"}']
    order = [(block.name, block) for block in nginx.blocks]
    names = [name for name, _ in order]
    labels_at = next(i for i, (name, block) in enumerate(order)
                     if name == "stage.labels" and "status" in block.attributes["values"])
    counter_at = next(i for i, (name, block) in enumerate(order) if name == "stage.metrics"
                      and block.blocks[0].name == "metric.counter")
    drop_at = next(i for i, (name, block) in enumerate(order)
                   if name == "stage.label_drop" and block.attributes["values"] == ["status"])
    histogram_at = next(i for i, (name, block) in enumerate(order) if name == "stage.metrics"
                        and block.blocks[0].name == "metric.histogram")
    assert names[0] == "stage.json" and labels_at < counter_at < drop_at < histogram_at == len(names) - 1


def test_the_journal_is_read_from_its_path_with_a_unit_label_for_the_chosen_units():
    blocks = alloy_config()
    journal = find(blocks, "loki.source.journal")
    assert journal.attributes["path"] == "/var/log/journal"
    assert journal.attributes["labels"] == {"source": "journal"}
    assert journal.attributes["relabel_rules"] == Ref("loki.relabel.journal.rules")
    rules = find(blocks, "loki.relabel", "journal").blocks
    assert rules[0].attributes == {"source_labels": ["__journal__systemd_unit"], "target_label": "unit"}
    [keep] = [rule for rule in rules if rule.attributes.get("action") == "keep"]
    kept = re.compile(keep.attributes["regex"])  # Prometheus relabelling anchors the expression
    for unit in ("ssh.service", "cloud-init.service", "cloud-init-local.service", "cloud-final.service",
                 "gitea-stack-backup.service", "gitea-stack-certbot-renew.service", "docker.service",
                 "containerd.service", "kernel"):
        assert kept.fullmatch(unit), unit
    for unit in ("snapd.service", "gitea-stack-backup.timer", "ssh.socket", "systemd-networkd.service",
                 "init.scope", "user@1000.service", "session-3.scope", ""):
        assert not kept.fullmatch(unit), unit
    # systemd's own lines about a unit of the list count as that unit's.
    [scope] = [rule for rule in rules if rule.attributes.get("source_labels") ==
               ["__journal__systemd_unit", "__journal_unit"]]
    assert re.fullmatch(scope.attributes["regex"], "init.scope;gitea-stack-backup.service")


def test_loki_write_pushes_to_loki_with_the_stack_label():
    for name, stack in (("example", "prod"),):
        write = find(parse_alloy(rendered(name)["alloy/config.alloy"]), "loki.write", "loki")
        assert write.blocks[0].attributes == {"url": "http://loki:3100/loki/api/v1/push"}
        assert write.attributes["external_labels"] == {"stack": stack}


# --- SSH: the failed-login expression against OpenSSH's messages -------------------------------------

def ssh_expression() -> re.Pattern:
    process = find(alloy_config(), "loki.process", "journal")
    [ssh] = [block for block in stages(process, "stage.match")
             if block.attributes["selector"] == '{unit="ssh.service"}']
    [regex] = stages(ssh, "stage.regex")
    # RE2 and Python's re agree on this subset: (?P<name>...), (?:...), character classes, .*
    assert not re.search(r"\\[pPdDwWsSbB]|\(\?[=!<]", regex.attributes["expression"])
    return re.compile(regex.attributes["expression"])


# Lines as OpenSSH 9.6p1 formats them (packet.c sshpkt_vfatal, ssh_packet_disconnect; auth.c auth_log,
# auth_maxtries_exceeded, getpwnamallow; the preamble of auth2.c and monitor.c, "[preauth]" of
# monitor.c's log forwarding).
COUNTED = [
    "Connection closed by authenticating user admin 192.0.2.7 port 50022 [preauth]",
    "Connection closed by invalid user oracle 192.0.2.7 port 50022 [preauth]",
    "Connection closed by authenticatinguser admin 192.0.2.7 port 50022 [preauth]",
    "Disconnected from invalid user oracle 192.0.2.7 port 50022 [preauth]",
    "Disconnected from authenticating user admin 2001:db8::7 port 50022 [preauth]",
    "Connection reset by authenticating user admin 192.0.2.7 port 50022 [preauth]",
    "Disconnecting invalid user oracle 192.0.2.7 port 50022: Too many authentication failures [preauth]",
    "Disconnecting authenticating user admin 192.0.2.7 port 50022: Too many authentication failures [preauth]",
]
NOT_COUNTED = [
    "Invalid user oracle from 192.0.2.7 port 50022",  # followed by one of the counted lines
    "Failed publickey for admin from 192.0.2.7 port 50022 ssh2: ED25519 SHA256:abc",  # may succeed next
    "Accepted publickey for admin from 192.0.2.7 port 50022 ssh2: ED25519 SHA256:abc",
    "Connection closed by 192.0.2.7 port 50022 [preauth]",  # a scan: no user named
    "Disconnected from user admin 192.0.2.7 port 50022",  # a logout after a login
    "Received disconnect from 192.0.2.7 port 50022:11: Bye Bye [preauth]",
    "Timeout before authentication for 192.0.2.7 port 50022",
    "pam_unix(sshd:session): session opened for user admin(uid=1000) by admin(uid=0)",
]


@pytest.mark.parametrize("line", COUNTED)
def test_a_failed_admin_login_line_is_counted(line):
    assert ssh_expression().search(line).group("failed_login")


@pytest.mark.parametrize("line", NOT_COUNTED)
def test_other_sshd_lines_are_not_counted(line):
    assert ssh_expression().search(line) is None


def test_a_real_sshd_logs_failed_logins_the_way_the_expression_counts_them(tmp_path):
    """Debian 12's OpenSSH (9.2p1: the same messages as 9.6p1) on loopback, a client that names an
    unknown user and one that offers a key the server does not accept for a real user."""
    require_root("sshd needs root for its privilege separation")
    sshd, ssh, keygen = (require_tool("sshd", "openssh-server"), require_tool("ssh", "openssh-client"),
                         require_tool("ssh-keygen", "openssh-client"))
    Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)
    subprocess.run([keygen, "-q", "-t", "ed25519", "-N", "", "-f", str(tmp_path / "host")], check=True)
    subprocess.run([keygen, "-q", "-t", "ed25519", "-N", "", "-f", str(tmp_path / "client")], check=True)
    port = free_port()
    config = tmp_path / "sshd_config"
    config.write_text(f"Port {port}\nListenAddress 127.0.0.1\nHostKey {tmp_path / 'host'}\n"
                      f"PasswordAuthentication no\nKbdInteractiveAuthentication no\nUsePAM no\n"
                      f"AuthorizedKeysFile {tmp_path / 'none'}\nLogLevel INFO\nPidFile none\n")
    log = tmp_path / "sshd.log"
    server = subprocess.Popen([sshd, "-D", "-f", str(config), "-E", str(log)])
    try:
        wait_for_port(port)
        for user in ("nosuchadmin", "root"):
            subprocess.run([ssh, "-F", "/dev/null", "-p", str(port), "-i", str(tmp_path / "client"),
                            "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=no",
                            "-o", f"UserKnownHostsFile={tmp_path / 'known_hosts'}", "-o", "IdentitiesOnly=yes",
                            f"{user}@127.0.0.1", "true"], check=False, capture_output=True, timeout=30)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and log.read_text().count("[preauth]") < 2:
            time.sleep(0.2)
    finally:
        stop_process(server)
    # sshd -E prefixes nothing; journald would store the same text as MESSAGE.
    lines = log.read_text().splitlines()
    counted = [line for line in lines if ssh_expression().search(line)]
    assert any("Invalid user nosuchadmin from 127.0.0.1" in line for line in lines), lines
    assert len(counted) == 2, lines
    assert "invalid user nosuchadmin" in counted[0] and "authenticating user root" in counted[1], counted


# --- Real inputs: Docker's json-file log and nginx's JSON access line --------------------------------

@pytest.fixture(scope="module")
def dockerd(tmp_path_factory):
    """A private dockerd (Debian's docker.io): its own data root, exec root and socket, no networking
    of its own (no bridge, no iptables), so it touches nothing of the machine's."""
    require_root("dockerd runs as root")
    binary, cli = require_tool("dockerd", "docker.io"), require_tool("docker", "docker.io")
    base = tmp_path_factory.mktemp("dockerd")
    (base / "dockerd.json").write_text(json.dumps({"iptables": False, "ip6tables": False, "bridge": "none",
                                                  "log-level": "warn"}))
    sock = Path("/tmp") / f"gitea-stack-logtest-{base.name}.sock"  # short: unix socket paths are limited
    process = subprocess.Popen([binary, "--config-file", str(base / "dockerd.json"), "--data-root",
                                str(base / "data"), "--exec-root", str(base / "exec"), "--pidfile",
                                str(base / "dockerd.pid"), "--host", f"unix://{sock}"],
                               stdout=(base / "dockerd.log").open("w"), stderr=subprocess.STDOUT)

    def docker(*args: str, **kwargs) -> subprocess.CompletedProcess:
        return subprocess.run([cli, "--host", f"unix://{sock}", *args], check=True, capture_output=True,
                              text=True, timeout=120, **kwargs)

    try:
        deadline = time.monotonic() + 60
        while True:
            if process.poll() is not None:
                pytest.fail(f"dockerd exited:\n{(base / 'dockerd.log').read_text()}")
            if sock.exists() and subprocess.run([cli, "--host", f"unix://{sock}", "version"],
                                                check=False, capture_output=True).returncode == 0:
                break
            if time.monotonic() > deadline:
                pytest.fail(f"dockerd did not answer:\n{(base / 'dockerd.log').read_text()}")
            time.sleep(0.5)
        # An image without a registry: /bin/echo and the libraries it links.
        rootfs = base / "rootfs.tar"
        with tarfile.open(rootfs, "w") as archive:
            for path in ("/bin/echo", *linked_libraries("/bin/echo")):
                archive.add(Path(path).resolve(), arcname=path.lstrip("/"))
        docker("import", str(rootfs), "gitea-stack-logtest/echo:1")
        yield docker, base / "data"
    finally:
        stop_process(process, timeout=40)
        sock.unlink(missing_ok=True)


def linked_libraries(binary: str) -> list[str]:
    output = subprocess.run(["ldd", binary], check=True, capture_output=True, text=True).stdout
    return re.findall(r"(/\S+) \(0x", output)


def container_log_line(dockerd, text: str) -> dict:
    docker, data_root = dockerd
    # What compose does for every service: the label, and the json-file option naming it.
    container = docker("run", "--detach", "--network", "none", "--log-driver", "json-file",
                       "--log-opt", "labels=com.docker.compose.service",
                       "--label", "com.docker.compose.service=nginx",
                       "gitea-stack-logtest/echo:1", "/bin/echo", text).stdout.strip()
    docker("wait", container)
    log_file = data_root / "containers" / container / f"{container}-json.log"
    try:
        [line] = log_file.read_text().splitlines()
        return json.loads(line)
    finally:
        docker("rm", "--force", container)


def test_a_real_json_file_log_line_has_the_fields_the_alloy_config_reads(dockerd):
    access = json.dumps({"time": "2026-12-02T10:00:00+00:00", "status": 502, "request_time": 0.75})
    entry = container_log_line(dockerd, access)
    assert set(entry) == {"log", "stream", "attrs", "time"}
    assert entry["attrs"] == {"com.docker.compose.service": "nginx"}
    # The Alloy config's own expressions, evaluated on the real line.
    process = find(alloy_config(), "loki.process", "containers")
    expressions = stages(process, "stage.json")[0].attributes["expressions"]
    extracted = {key: jmespath.search(expression or key, entry) for key, expression in expressions.items()}
    assert extracted["service"] == "nginx" and extracted["stream"] == "stdout"
    assert extracted["log"] == access + "\n"
    # stage.timestamp's RFC3339Nano: Docker writes nanoseconds and Z.
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{1,9})?Z", extracted["time"])
    # The nginx stage then parses the log text.
    [nginx] = [block for block in stages(process, "stage.match") if "nginx" in block.attributes["selector"]]
    nginx_expressions = stages(nginx, "stage.json")[0].attributes["expressions"]
    parsed = json.loads(extracted["log"])
    assert {key: jmespath.search(expression or key, parsed) for key, expression in nginx_expressions.items()} == {
        "status": 502, "request_time": 0.75}


def nginx_log_format() -> str:
    """The bundle's `log_format gitea_stack_json` once templates/nginx/http.conf.j2 has it; until then
    the one proposed above."""
    found = BUNDLE_LOG_FORMAT.search(rendered()["nginx/http.conf"])
    return found.group() if found else NGINX_LOG_FORMAT


def test_real_nginx_writes_the_access_line_the_nginx_stage_parses(tmp_path):
    nginx = require_tool("nginx", "nginx")
    port = free_port()
    log = tmp_path / "access.log"
    (tmp_path / "nginx.conf").write_text(f"""
        daemon off; pid {tmp_path / 'nginx.pid'}; error_log {tmp_path / 'error.log'};
        events {{}}
        http {{
            {nginx_log_format()}
            access_log {log} gitea_stack_json;
            client_body_temp_path {tmp_path}; proxy_temp_path {tmp_path}; fastcgi_temp_path {tmp_path};
            uwsgi_temp_path {tmp_path}; scgi_temp_path {tmp_path};
            server {{ listen 127.0.0.1:{port}; location / {{ return 404; }} location /ok {{ return 200 "ok"; }} }}
        }}
    """)
    process = subprocess.Popen([nginx, "-c", str(tmp_path / "nginx.conf"), "-p", str(tmp_path)])
    try:
        wait_for_port(port)
        for path in ("/ok", '/x"y?q=\\1'):
            request = urllib.request.Request(f"http://127.0.0.1:{port}{path.replace(chr(34), '%22')}",
                                             headers={"User-Agent": 'probe "quoted" \\ agent'})
            try:
                urllib.request.urlopen(request, timeout=10).read()
            except urllib.error.HTTPError:
                pass
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and len(log.read_text().splitlines()) < 2:
            time.sleep(0.1)
    finally:
        stop_process(process)
    first, second = (json.loads(line) for line in log.read_text().splitlines())
    assert tuple(first) == NGINX_FIELDS
    assert first["status"] == 200 and second["status"] == 404
    assert isinstance(first["request_time"], (int, float)) and isinstance(first["bytes_sent"], int)
    assert first["method"] == "GET" and first["uri"] == "/ok"
    assert second["user_agent"] == 'probe "quoted" \\ agent'
    assert first["upstream_response_time"] == ""  # no upstream here; a string, so "" is valid JSON
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d[+-]\d\d:\d\d", first["time"])


def test_nothing_in_the_log_plane_needs_the_docker_socket():
    text = rendered()["alloy/config.alloy"]
    code = "\n".join(line.split("//")[0] for line in text.splitlines())
    assert "docker.sock" not in code and "unix://" not in code
