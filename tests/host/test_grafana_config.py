"""Grafana's configuration in the bundle, validated offline: Grafana cannot be installed or run on
these machines, so every name the bundle gives it is checked against upstream's own names, kept under
tests/host/reference/grafana/ with their provenance (which file, which version), and every PromQL
expression of the dashboards is parsed by the real promtool. What this cannot prove (that Grafana 13.2
starts with it, that the sign-in round trip through Gitea works) is said in docs/monitoring.md."""

from __future__ import annotations

import configparser
import json
import re
import subprocess
from pathlib import Path

import jmespath
import pytest
import yaml

from tests.harness.bundles import VARIANTS, render, variant
from tests.harness.tools import require_tool

REFERENCE = Path(__file__).parent / "reference" / "grafana"
INI_KEYS = json.loads((REFERENCE / "grafana-ini-keys.json").read_text())
PROVISIONING_KEYS = json.loads((REFERENCE / "provisioning-keys.json").read_text())
DASHBOARD_MODEL = json.loads((REFERENCE / "dashboard-model.json").read_text())

# Where the compose service mounts the bundle's files (the dashboard provider reads this directory).
DASHBOARDS_DIR = "/etc/grafana/dashboards"
# The observability contract (shared notes of issue 12): secret files, data source endpoints, labels.
SECRETS_DIR = "/run/gitea-stack"
GRAFANA_SECRET_FILES = {"grafana-admin-password", "grafana-oauth-client-id", "grafana-oauth-client-secret"}
DATASOURCES = {"prometheus": ("prometheus", "http://prometheus:9090"), "loki": ("loki", "http://loki:3100"),
               "alertmanager": ("alertmanager", "http://alertmanager:9093")}
LOKI_LABELS = {"stack", "source", "service", "unit"}
PROMETHEUS_JOBS = {"prometheus", "alertmanager", "node", "postgres", "cadvisor", "gitea", "alloy", "loki",
                   "probe-https", "probe-git-ssh"}
# Metrics the host scripts write (textfile collector) and the ones Alloy derives from logs: exact names.
CONTRACT_METRICS = {
    "gitea_stack_backup_last_run_timestamp_seconds", "gitea_stack_backup_last_run_success",
    "gitea_stack_backup_last_success_timestamp_seconds", "gitea_stack_backup_interval_seconds",
    "gitea_stack_restore_drill_last_run_timestamp_seconds", "gitea_stack_restore_drill_last_run_success",
    "gitea_stack_update_last_run_timestamp_seconds", "gitea_stack_update_last_run_success",
    "gitea_stack_health_check_success", "gitea_stack_health_check_last_run_timestamp_seconds",
    "nginx_http_requests_total", "nginx_http_request_duration_seconds_bucket",
    "nginx_http_request_duration_seconds_sum", "nginx_http_request_duration_seconds_count",
    "admin_ssh_failed_logins_total",
}
# Metrics of the exporters, by prefix: node_exporter, cAdvisor, postgres_exporter, blackbox_exporter,
# Gitea's own gauges (gitea_*) and Go process metrics of the scraped binaries; `up` from Prometheus.
EXPORTER_PREFIXES = ("node_", "container_", "pg_", "probe_", "gitea_", "process_", "go_")
GRAFANA_BUILTINS = {"__rate_interval", "__interval", "__range", "__all"}
# What a dashboard variable stands for when promtool parses an expression.
SUBSTITUTES = {"$__rate_interval": "5m", "$__interval": "1m", "$__range": "1h"}
PROMQL_KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "and", "or", "unless", "bool",
                   "offset", "inf", "nan"}


def bundle(name: str = "example") -> dict[str, str]:
    return {path: content for path, (content, _) in render(variant(name)).items()}


def grafana_ini(name: str = "example") -> configparser.ConfigParser:
    parser = configparser.ConfigParser(interpolation=None, strict=True, delimiters=("=",), comment_prefixes=("#", ";"))
    parser.optionxform = str  # Grafana's keys are case-sensitive
    parser.read_string(bundle(name)["grafana/grafana.ini"])
    return parser


def dashboards(name: str = "example") -> dict[str, dict]:
    return {path: json.loads(content) for path, content in bundle(name).items()
            if path.startswith("grafana/dashboards/")}


def panels(dashboard: dict) -> list[dict]:
    """Every panel, rows' nested panels included."""
    found = []
    for panel in dashboard["panels"]:
        found.append(panel)
        found.extend(panel.get("panels", []))
    return found


def targets(kind: str) -> list[tuple[str, str, str]]:
    """(dashboard file, panel title, expression) of every query against data source `kind`."""
    return [(path, panel["title"], target["expr"]) for path, dashboard in dashboards().items()
            for panel in panels(dashboard) for target in panel.get("targets", [])
            if target.get("datasource", panel.get("datasource", {})).get("uid") == kind]


# ------------------------------------------------------------------------------------------ grafana.ini

@pytest.mark.parametrize("name", VARIANTS)
def test_every_grafana_ini_key_exists_upstream(name):
    allowed = {section: set(keys) for section, keys in INI_KEYS["sections"].items()}
    for section, entry in INI_KEYS["newer"].items():
        allowed.setdefault(section, set()).update(entry["keys"])
    ini = grafana_ini(name)
    assert ini.defaults() == {}, "keys before the first section"
    unknown = [f"[{section}] {key}" for section in ini.sections() for key in ini[section]
               if key not in allowed.get(section, set())]
    assert not unknown, f"not in Grafana's configuration: {unknown}"


def test_grafana_is_served_under_grafana_behind_nginx():
    for name in VARIANTS:
        server, domain = grafana_ini(name)["server"], variant(name).domain
        assert server["root_url"] == f"https://{domain}/grafana/"
        assert server["serve_from_sub_path"] == "true" and server["http_port"] == "3000"
        assert server["domain"] == domain
    ini = grafana_ini()
    assert ini["paths"]["data"] == "/var/lib/grafana"
    assert ini["database"]["type"] == "sqlite3" and "/" not in ini["database"]["path"]


def test_no_anonymous_access_no_sign_up_no_phoning_home():
    ini = grafana_ini()
    assert ini["auth.anonymous"]["enabled"] == "false"
    assert ini["users"]["allow_sign_up"] == "false" and ini["users"]["allow_org_create"] == "false"
    assert ini["users"]["auto_assign_org_role"] == "Viewer"
    assert ini["auth"]["disable_login_form"] == "true"
    assert ini["security"]["cookie_secure"] == "true"
    assert ini["analytics"]["reporting_enabled"] == "false" and ini["analytics"]["check_for_updates"] == "false"
    assert ini["news"]["news_feed_enabled"] == "false" and ini["plugins"]["preinstall_disabled"] == "true"
    assert ini["unified_alerting"]["enabled"] == "false", "alerting is Prometheus' and Alertmanager's job"
    assert ini["metrics"]["enabled"] == "true" and ini["log"]["mode"] == "console"


def test_secrets_come_from_files_in_grafana_expansion_syntax():
    # pkg/setting/expanders.go: `$__file{PATH}` is replaced by the file's content, trimmed.
    ini = grafana_ini()
    secret_keys = {("security", "admin_password"): "grafana-admin-password",
                   ("auth.generic_oauth", "client_id"): "grafana-oauth-client-id",
                   ("auth.generic_oauth", "client_secret"): "grafana-oauth-client-secret"}
    for (section, key), file in secret_keys.items():
        assert ini[section][key] == f"$__file{{{SECRETS_DIR}/{file}}}"
    referenced = set(re.findall(r"\$__file\{" + re.escape(SECRETS_DIR) + r"/([^}]+)\}", bundle()["grafana/grafana.ini"]))
    assert referenced == GRAFANA_SECRET_FILES
    assert ini["security"]["admin_user"] == "admin"


def test_sign_in_goes_through_gitea_and_maps_its_administrators():
    for name in VARIANTS:
        oauth, domain = grafana_ini(name)["auth.generic_oauth"], variant(name).domain
        assert oauth["enabled"] == "true" and oauth["name"] == "Gitea"
        # The browser goes to the public URL, Grafana's server to Gitea over the internal network.
        assert oauth["auth_url"] == f"https://{domain}/login/oauth/authorize"
        assert oauth["token_url"] == "http://gitea:3000/login/oauth/access_token"
        assert oauth["api_url"] == "http://gitea:3000/api/v1/user"
    oauth = grafana_ini()["auth.generic_oauth"]
    # No `openid`: Grafana would evaluate the role against the ID token first, which has no is_admin.
    assert oauth["scopes"].split() == ["read:user"]
    assert oauth["use_pkce"] == "true"
    assert (oauth["login_attribute_path"], oauth["email_attribute_path"]) == ("login", "email")
    assert oauth["role_attribute_path"] == "is_admin && 'GrafanaAdmin' || 'Viewer'"
    assert oauth["allow_assign_grafana_admin"] == "true" and oauth["role_attribute_strict"] == "true"
    assert oauth["skip_org_role_sync"] == "false"


@pytest.mark.parametrize(("user", "role"), [({"login": "root", "is_admin": True}, "GrafanaAdmin"),
                                            ({"login": "dev", "is_admin": False}, "Viewer")])
def test_role_expression_on_gitea_user_documents(user, role):
    # Grafana evaluates role_attribute_path with go-jmespath; python's jmespath (boto3's dependency)
    # implements the same specification. The documents are shaped like Gitea's GET /api/v1/user.
    expression = grafana_ini()["auth.generic_oauth"]["role_attribute_path"]
    assert jmespath.search(expression, {"id": 1, "full_name": "", "email": "a@example.com", **user}) == role


# ------------------------------------------------------------------------------------------ provisioning

def test_datasources_use_only_upstream_keys_and_the_contract_endpoints():
    keys = PROVISIONING_KEYS["datasources"]
    config = yaml.safe_load(bundle()["grafana/provisioning/datasources/datasources.yml"])
    assert set(config) <= set(keys["top"]) and config["apiVersion"] == 1
    for entry in config.get("deleteDatasources") or []:
        assert set(entry) <= set(keys["deleteDatasource"]), entry
    by_uid = {}
    for source in config["datasources"]:
        assert set(source) <= set(keys["datasource"]), set(source) - set(keys["datasource"])
        assert source["editable"] is False and source["access"] == "proxy"
        by_uid[source["uid"]] = source
    assert {uid: (source["type"], source["url"]) for uid, source in by_uid.items()} == DATASOURCES
    assert [uid for uid, source in by_uid.items() if source.get("isDefault")] == ["prometheus"]
    assert by_uid["alertmanager"]["jsonData"]["implementation"] == "prometheus"


def test_dashboard_provider_uses_only_upstream_keys_and_is_read_only():
    keys = PROVISIONING_KEYS["dashboards"]
    config = yaml.safe_load(bundle()["grafana/provisioning/dashboards/dashboards.yml"])
    assert set(config) <= set(keys["top"]) and config["apiVersion"] == 1
    (provider,) = config["providers"]
    assert set(provider) <= set(keys["provider"]) and set(provider["options"]) <= set(keys["fileOptions"])
    assert provider["type"] == "file" and provider["options"]["path"] == DASHBOARDS_DIR
    assert provider["folder"] == "gitea-stack"
    assert provider["allowUiUpdates"] is False and provider["disableDeletion"] is True


# ------------------------------------------------------------------------------------------ dashboards

EXPECTED_DASHBOARDS = {"host", "postgres", "gitea", "probes", "backups", "logs"}


def test_the_dashboards_are_there_with_fixed_unique_uids():
    found = dashboards()
    assert {Path(path).stem for path in found} == EXPECTED_DASHBOARDS
    uids = [dashboard["uid"] for dashboard in found.values()]
    assert len(set(uids)) == len(uids) and all(re.fullmatch(r"[a-z0-9-]{1,40}", uid) for uid in uids)
    for path, dashboard in found.items():
        assert dashboard["title"].startswith("gitea-stack / "), path
        assert "id" not in dashboard, f"{path}: a provisioned dashboard has no database id"


def test_dashboards_follow_grafana_13_classic_model():
    fields = {name: set(keys) for name, keys in DASHBOARD_MODEL["fields"].items()}
    for path, dashboard in dashboards().items():
        assert dashboard["schemaVersion"] == DASHBOARD_MODEL["schemaVersion"], path
        assert set(dashboard) <= fields["Dashboard"], (path, set(dashboard) - fields["Dashboard"])
        ids = [panel["id"] for panel in panels(dashboard)]
        assert len(set(ids)) == len(ids), path
        for panel in panels(dashboard):
            model = fields["RowPanel"] if panel["type"] == "row" else fields["Panel"]
            assert set(panel) <= model, (path, panel["title"], set(panel) - model)
            assert panel["type"] in DASHBOARD_MODEL["panelTypes"], (path, panel["type"])
            grid = panel["gridPos"]
            assert set(grid) <= fields["GridPos"] and 0 <= grid["x"] and grid["x"] + grid["w"] <= 24, (path, grid)
            if panel["type"] != "row":
                defaults = panel["fieldConfig"]["defaults"]
                assert set(defaults) <= fields["FieldConfig"], (path, set(defaults) - fields["FieldConfig"])
        for variable in dashboard["templating"]["list"]:
            assert set(variable) <= fields["VariableModel"], (path, set(variable) - fields["VariableModel"])
            assert variable["type"] in DASHBOARD_MODEL["variableTypes"]
        for link in dashboard["links"]:
            assert set(link) <= fields["DashboardLink"], path


def test_every_dashboard_has_the_stack_variable():
    for path, dashboard in dashboards().items():
        variables = {variable["name"]: variable for variable in dashboard["templating"]["list"]}
        stack = variables["stack"]
        assert stack["datasource"]["uid"] == "prometheus" and stack["query"] == "label_values(up, stack)", path
        # All = `.*`, which also matches series without the label (a lone stack's local series).
        assert stack["includeAll"] is True and stack["allValue"] == ".*"


def test_every_panel_queries_a_provisioned_data_source_of_its_type():
    provisioned = {source["uid"]: source["type"] for source in
                   yaml.safe_load(bundle()["grafana/provisioning/datasources/datasources.yml"])["datasources"]}
    for path, dashboard in dashboards().items():
        for panel in panels(dashboard):
            if panel["type"] == "row":
                continue
            source = panel["datasource"]
            assert provisioned.get(source["uid"]) == source["type"], (path, panel["title"], source)
            assert panel["targets"], (path, panel["title"])
            for target in panel["targets"]:
                assert target["datasource"] == source, (path, panel["title"])
        for variable in dashboard["templating"]["list"]:
            assert provisioned.get(variable["datasource"]["uid"]) == variable["datasource"]["type"], path


def test_queries_use_only_variables_the_dashboard_defines():
    for path, dashboard in dashboards().items():
        defined = {variable["name"] for variable in dashboard["templating"]["list"]} | GRAFANA_BUILTINS
        for panel in panels(dashboard):
            for target in panel.get("targets", []):
                used = set(re.findall(r"\$(?!\{\d)(\w+)", target["expr"]))
                assert used <= defined, (path, panel["title"], used - defined)


def metric_names(expr: str) -> set[str]:
    """The metric names of a PromQL expression: what is left after strings, label matchers, ranges,
    grouping clauses, functions, keywords and numbers are taken out."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    text = re.sub(r"\{[^}]*\}", " ", text)
    text = re.sub(r"\[[^\]]*\]", " ", text)
    text = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", text)
    text = re.sub(r"\boffset\s+-?\w+", " ", text)
    text = re.sub(r"\b\d+(?:\.\d+)?(?:[eE][+-]?\d+)?\b", " ", text)
    names = set()
    for match in re.finditer(r"[A-Za-z_:][A-Za-z0-9_:]*", text):
        rest = text[match.end():].lstrip()
        if rest.startswith("(") or match.group() in PROMQL_KEYWORDS:
            continue
        names.add(match.group())
    return names


def test_metric_name_extraction():
    assert metric_names('sum by (le) (rate(x_bucket{a="b"}[5m])) / scalar(count(y{mode="idle"}))') == {"x_bucket", "y"}
    assert metric_names('label_replace(rate(z[1m]), "class", "${1}xx", "status", "(.)..") or vector(0)') == {"z"}
    assert metric_names("time() - a_seconds offset 5m > bool 1e3") == {"a_seconds"}
    assert metric_names("node_load15 / 2.5") == {"node_load15"}


def test_promql_uses_only_contract_and_exporter_metrics_and_jobs():
    for path, title, expr in targets("prometheus"):
        for name in metric_names(expr):
            if name.startswith(("gitea_stack_", "nginx_", "admin_ssh")):
                assert name in CONTRACT_METRICS, (path, title, name)
            else:
                assert name == "up" or name.startswith(EXPORTER_PREFIXES), (path, title, name)
        for job in re.findall(r'job=~?"([^"]+)"', expr):
            assert any(re.fullmatch(job, known) for known in PROMETHEUS_JOBS), (path, title, job)
    stack_variable = [variable for dashboard in dashboards().values() for variable in dashboard["templating"]["list"]
                      if variable["name"] == "stack"]
    assert all(metric_names(variable["query"].replace("label_values(", "").rsplit(",", 1)[0]) == {"up"}
               for variable in stack_variable)


def test_every_promql_expression_parses_with_promtool(tmp_path):
    promtool = require_tool("promtool", "prometheus")
    expressions = targets("prometheus")
    assert len(expressions) > 50
    rules = []
    for index, (_path, _title, expr) in enumerate(expressions):
        for variable, value in SUBSTITUTES.items():
            expr = expr.replace(variable, value)
        expr = re.sub(r"\$(?!\{\d)\w+", ".*", expr)  # dashboard variables are regexes in =~ matchers
        rules.append({"record": f"dashboard:expr:{index}", "expr": expr})
    rules_file = tmp_path / "dashboards.rules.yml"
    rules_file.write_text(yaml.safe_dump({"groups": [{"name": "dashboards", "rules": rules}]}, sort_keys=False))
    result = subprocess.run([promtool, "check", "rules", str(rules_file)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"{len(rules)} rules found" in result.stdout


def test_logql_selects_only_contract_labels():
    expressions = targets("loki")
    assert expressions
    for path, title, expr in expressions:
        selectors = re.findall(r"\{([^}]*)\}", expr)
        assert selectors, (path, title)
        for selector in selectors:
            labels = {matcher.split("=")[0].rstrip("!~").strip() for matcher in selector.split(",")}
            assert labels <= LOKI_LABELS, (path, title, labels - LOKI_LABELS)
            # Loki refuses a selector whose every matcher also matches the empty value.
            assert re.search(r'\b(source|service|unit)="[^"]+"', selector), (path, title, selector)
    for dashboard in dashboards().values():
        for variable in dashboard["templating"]["list"]:
            if variable["datasource"]["uid"] == "loki":
                assert re.fullmatch(r'label_values\(\{[^}]+\}, (service|unit)\)', variable["query"])
