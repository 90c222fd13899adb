"""deploy/: everything that can be checked without a container engine. Files parse; every file the Dockerfile,
compose file and Kubernetes manifests refer to exists; settings and policies shipped there validate; metric names
in alert rules and the dashboard exist in the code; `promtool` accepts the rules and the Prometheus config."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from gateway.policy.loader import load_policy
from gateway.settings import load_settings
from tests.harness import ROOT

pytestmark = pytest.mark.integration

DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"
METRIC = re.compile(r"\bmcp_gateway_[a-z0-9_]+")
HISTOGRAM_SUFFIXES = ("_bucket", "_count", "_sum")


def yaml_files() -> list[Path]:
    return sorted(p for p in DEPLOY.rglob("*") if p.suffix in (".yaml", ".yml"))


def docs(path: Path) -> list[Any]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d is not None]


def k8s_objects() -> Iterator[tuple[Path, dict[str, Any]]]:
    for path in sorted(K8S.glob("*.yaml")):
        for doc in docs(path):
            if isinstance(doc, dict) and "kind" in doc and doc.get("apiVersion") != "kustomize.config.k8s.io/v1beta1":
                yield path, doc


def k8s_kind(kind: str) -> dict[str, Any]:
    found = [doc for path, doc in k8s_objects() if doc["kind"] == kind and path.name != "secret.example.yaml"]
    assert len(found) == 1, f"expected one {kind}, found {len(found)}"
    return found[0]


def code_metric_names() -> set[str]:
    names: set[str] = set()
    for path in (ROOT / "gateway").rglob("*.py"):
        names.update(METRIC.findall(path.read_text()))
    return names


def used_metric_names(text: str) -> set[str]:
    return set(METRIC.findall(text))


def known(name: str, code: set[str]) -> bool:
    if name in code:
        return True
    return any(name.endswith(s) and name[: -len(s)] in code for s in HISTOGRAM_SUFFIXES)


# ---------------------------------------------------------------------- parsing and references


def test_every_yaml_and_json_file_parses() -> None:
    files = yaml_files()
    assert len(files) >= 15
    for path in files:
        assert docs(path), f"{path} is empty"
    dashboards = sorted(DEPLOY.rglob("*.json"))
    assert dashboards
    for path in dashboards:
        json.loads(path.read_text())


def test_dockerfile_is_slim_non_root_with_healthcheck_and_existing_sources() -> None:
    text = (DEPLOY / "Dockerfile").read_text()
    lines = [ln.strip() for ln in text.replace("\\\n", " ").splitlines() if ln.strip() and not ln.startswith("#")]
    froms = [ln.split()[1] for ln in lines if ln.upper().startswith("FROM ")]
    assert froms and all("slim" in f for f in froms)
    users = [ln.split()[1] for ln in lines if ln.upper().startswith("USER ")]
    assert users and users[-1].split(":")[0] not in ("root", "0")
    health = [ln for ln in lines if ln.upper().startswith("HEALTHCHECK ")]
    assert len(health) == 1 and "/healthz" in health[0]
    copies = [ln.split()[1:] for ln in lines if ln.upper().startswith("COPY ") and "--from=" not in ln]
    assert copies
    for args in copies:
        for src in args[:-1]:  # the build context is the repository root (compose: context ..)
            assert (ROOT / src).exists(), f"Dockerfile copies missing {src}"


def test_compose_has_two_gateways_and_the_services_and_every_mounted_file_exists() -> None:
    compose = docs(DEPLOY / "compose.yaml")[0]
    services: dict[str, Any] = compose["services"]
    gateways = [
        n for n, s in services.items() if s.get("ports") and "8080" in str(s["ports"]) and n.startswith("gateway")
    ]
    assert len(gateways) >= 2
    images = {n: str(s.get("image", "")) for n, s in services.items()}
    for needed in ("redis", "postgres", "prom/prometheus", "grafana/grafana"):
        assert any(needed in img for img in images.values()), f"no {needed} service"
    assert any("example-upstream" in str(s.get("entrypoint", "")) for s in services.values())
    for name, svc in services.items():
        build = svc.get("build")
        if build:
            context = (DEPLOY / build["context"]).resolve()
            assert (context / build["dockerfile"]).is_file(), name
        for entry in svc.get("volumes", []):
            src = str(entry).split(":")[0]
            if src.startswith((".", "/")):
                assert (DEPLOY / src).exists(), f"{name} mounts missing {src}"
        entry = svc.get("entrypoint") or []
        for arg in entry:
            if arg.endswith(".py"):
                assert (ROOT / arg).is_file(), f"{name} runs missing {arg}"
    for gw in gateways:
        env = services[gw]["environment"]
        # secrets by reference: from the environment of `docker compose`, never literal
        assert env["MGW_APIKEY_SECRET"].startswith("${")
        assert services[gw]["stop_grace_period"]
    prom = docs(DEPLOY / "prometheus" / "prometheus.yml")[0]
    targets = prom["scrape_configs"][0]["static_configs"][0]["targets"]
    assert {t.split(":")[0] for t in targets} == set(gateways)


def test_container_settings_and_policies_validate(tmp_path: Path) -> None:
    settings = load_settings(DEPLOY / "config" / "gateway.yaml", env={"MGW_APIKEY_SECRET": "x"})
    assert settings.listen.host == "0.0.0.0"
    assert settings.api_keys.hmac_secret.env == "MGW_APIKEY_SECRET"
    load_policy(DEPLOY / "policies")
    # the Kubernetes ConfigMaps carry a valid config and a valid policy set
    maps = {doc["metadata"]["name"]: doc for _, doc in k8s_objects() if doc["kind"] == "ConfigMap"}
    pol_dir = tmp_path / "policies"
    pol_dir.mkdir()
    for name, text in maps["mcp-gateway-policies"]["data"].items():
        (pol_dir / name).write_text(text)
    load_policy(pol_dir)
    cfg = tmp_path / "config.yaml"
    cfg.write_text(maps["mcp-gateway-config"]["data"]["config.yaml"])
    k8s_settings = load_settings(cfg, env={"MGW_APIKEY_SECRET": "x"})
    deployment = k8s_kind("Deployment")
    mounts = {
        m["name"]: m["mountPath"] for m in deployment["spec"]["template"]["spec"]["containers"][0]["volumeMounts"]
    }
    assert k8s_settings.policies_dir == mounts["policies"]
    assert k8s_settings.policy_poll_seconds > 0  # a ConfigMap edit is picked up without a restart
    grace = deployment["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    assert grace > k8s_settings.http.shutdown_grace_seconds


def test_kubernetes_manifests_hang_together() -> None:
    kust = docs(K8S / "kustomization.yaml")[0]
    for res in kust["resources"]:
        assert (K8S / res).is_file(), f"kustomization lists missing {res}"
    assert "secret.example.yaml" not in kust["resources"]
    dep = k8s_kind("Deployment")
    spec = dep["spec"]
    assert spec["replicas"] >= 2
    pod = spec["template"]["spec"]
    labels = spec["template"]["metadata"]["labels"]
    assert spec["selector"]["matchLabels"].items() <= labels.items()
    assert pod["securityContext"]["runAsNonRoot"] is True
    (container,) = pod["containers"]
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    for env in container["env"]:  # secrets by reference only
        if any(w in env["name"] for w in ("SECRET", "DSN", "REDIS_URL", "PASSWORD")):
            assert "value" not in env and "secretKeyRef" in env["valueFrom"], env["name"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    config_maps = {doc["metadata"]["name"] for _, doc in k8s_objects() if doc["kind"] == "ConfigMap"}
    for vol in volumes.values():
        if "configMap" in vol:
            assert vol["configMap"]["name"] in config_maps
    policies_mount = next(m for m in container["volumeMounts"] if m["name"] == "policies")
    assert "subPath" not in policies_mount  # subPath mounts never see ConfigMap updates
    svc = k8s_kind("Service")
    assert svc["spec"]["selector"].items() <= labels.items()
    hpa = k8s_kind("HorizontalPodAutoscaler")
    assert hpa["spec"]["scaleTargetRef"]["name"] == dep["metadata"]["name"]
    assert hpa["spec"]["minReplicas"] >= 2
    pdb = k8s_kind("PodDisruptionBudget")
    assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert pdb["spec"]["minAvailable"] < hpa["spec"]["minReplicas"]


# ---------------------------------------------------------------------- metrics in rules and dashboard


def test_alert_rules_cover_the_required_conditions_with_existing_metrics() -> None:
    text = (DEPLOY / "prometheus" / "alerts.yml").read_text()
    rules = [r for g in docs(DEPLOY / "prometheus" / "alerts.yml")[0]["groups"] for r in g["rules"]]
    exprs = " ".join(r["expr"] for r in rules)
    for metric in (
        "mcp_gateway_breaker_state",  # breaker open
        "mcp_gateway_ratelimit_fallback_active",  # limiter on fallback
        "mcp_gateway_audit_spool_bytes",  # audit spool growing
        "mcp_gateway_policy_reloads_total",  # reload failures
        "mcp_gateway_requests_total",  # error rate
        "mcp_gateway_event_loop_lag_seconds",  # sustained event-loop lag
        "mcp_gateway_request_duration_seconds",  # p99 latency by server
        "mcp_gateway_audit_queue_age_seconds",  # audit lag
        "mcp_gateway_policy_snapshot_info",  # replicas of one deployment disagree
    ):
        assert metric in exprs
    assert 'up{job=~"mcp-gateway.*"}' in exprs  # gateway down
    code = code_metric_names()
    missing = sorted(n for n in used_metric_names(text) if not known(n, code))
    assert missing == []


def test_dashboard_uses_existing_metrics() -> None:
    code = code_metric_names()
    for path in sorted((DEPLOY / "grafana").rglob("*.json")):
        dash = json.loads(path.read_text())
        exprs = [t["expr"] for p in dash["panels"] for t in p.get("targets", [])]
        assert len(exprs) >= 10
        used = set().union(*(used_metric_names(e) for e in exprs))
        missing = sorted(n for n in used if not known(n, code))
        assert missing == [], f"{path.name}: {missing}"
    provisioning = docs(DEPLOY / "grafana" / "provisioning" / "dashboards" / "mcp-gateway.yml")[0]
    compose = docs(DEPLOY / "compose.yaml")[0]
    mounts = {str(v).split(":")[1]: str(v).split(":")[0] for v in compose["services"]["grafana"]["volumes"]}
    assert mounts[provisioning["providers"][0]["options"]["path"]] == "./grafana/dashboards"


def _promtool() -> str:
    exe = shutil.which("promtool")
    if exe is None:
        pytest.fail(
            "promtool is not installed: run `make services` (deploy/scripts/install-promtool.sh installs Debian's "
            "'prometheus' package) so the alert rules can be checked"
        )
    return exe


def test_promtool_accepts_rules_and_config() -> None:
    exe = _promtool()
    rules = subprocess.run(
        [exe, "check", "rules", "alerts.yml"],
        cwd=DEPLOY / "prometheus",
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert rules.returncode == 0, rules.stdout + rules.stderr
    assert "SUCCESS" in rules.stdout
    config = subprocess.run(
        [exe, "check", "config", "prometheus.yml"],
        cwd=DEPLOY / "prometheus",
        capture_output=True,
        check=False,
        text=True,
        timeout=60,
    )
    assert config.returncode == 0, config.stdout + config.stderr


def test_promtool_rejects_a_broken_rule(tmp_path: Path) -> None:
    """The check above is real: promtool fails on a rule with a bad expression."""
    exe = _promtool()
    bad = tmp_path / "bad.yml"
    bad.write_text(
        "groups:\n  - name: x\n    rules:\n      - alert: X\n        expr: sum(rate(mcp_gateway_requests_total[5m])\n"
    )
    result = subprocess.run([exe, "check", "rules", str(bad)], capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode != 0


def _alerts() -> dict[str, dict[str, Any]]:
    return {r["alert"]: r for g in docs(DEPLOY / "prometheus" / "alerts.yml")[0]["groups"] for r in g["rules"]}


def test_every_alert_has_a_firing_and_a_quiet_promtool_case() -> None:
    tests = docs(DEPLOY / "prometheus" / "alerts.test.yml")[0]
    assert tests["rule_files"] == ["alerts.yml"]
    cases = [c for t in tests["tests"] for c in t["alert_rule_test"]]
    for alert in _alerts():
        mine = [c for c in cases if c["alertname"] == alert]
        assert any(c.get("exp_alerts") for c in mine), f"{alert}: no case where it fires"
        assert any(not c.get("exp_alerts") for c in mine), f"{alert}: no case where it stays quiet"
    assert {c["alertname"] for c in cases} <= set(_alerts()), "cases for alerts that do not exist"


def _test_rules(directory: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [_promtool(), "test", "rules", "alerts.test.yml"],
        cwd=directory,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_promtool_test_rules_passes() -> None:
    result = _test_rules(DEPLOY / "prometheus")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_promtool_cases_catch_the_shared_prometheus_false_alarm(tmp_path: Path) -> None:
    """The cases are real: the old policy-versions rule, which compared every replica Prometheus scrapes, fails
    them (two deployments sharing a Prometheus with different policies fired it)."""
    rules = (DEPLOY / "prometheus" / "alerts.yml").read_text()
    fixed = _alerts()["McpGatewayPolicyVersionsDiverge"]["expr"]
    assert "by (job, namespace)" in fixed
    old = "count(count by (version) (mcp_gateway_policy_snapshot_info == 1)) > 1"
    (tmp_path / "alerts.yml").write_text(rules.replace(fixed, old))
    shutil.copy(DEPLOY / "prometheus" / "alerts.test.yml", tmp_path / "alerts.test.yml")
    result = _test_rules(tmp_path)
    assert result.returncode != 0
    assert "McpGatewayPolicyVersionsDiverge" in result.stdout + result.stderr


def test_dashboard_has_no_hard_coded_datasource() -> None:
    """Every panel, query and variable uses the `datasource` variable, so the dashboard imports into any Grafana
    whatever its Prometheus data source is called."""
    for path in sorted((DEPLOY / "grafana" / "dashboards").glob("*.json")):
        dash = json.loads(path.read_text())
        refs: list[Any] = []

        def walk(node: Any, refs: list[Any] = refs) -> None:
            if isinstance(node, dict):
                for key, value in node.items():
                    if key == "datasource":
                        refs.append(value)
                    else:
                        walk(value)
            elif isinstance(node, list):
                for item in node:
                    walk(item)

        walk(dash)
        assert len(refs) >= len(dash["panels"]), path.name
        assert all(r == {"type": "prometheus", "uid": "${datasource}"} for r in refs), (path.name, refs)
        variables = {v["name"]: v for v in dash["templating"]["list"]}
        assert variables["datasource"]["type"] == "datasource"
        assert variables["datasource"]["query"] == "prometheus"
        assert not variables["datasource"].get("current"), "a default data source would hard-code one again"
        assert "__inputs" not in dash


def test_operations_doc_lists_every_metric_in_the_code() -> None:
    """docs/operations.md is the metrics reference: a metric added to the code must be added to its table."""
    doc = (ROOT / "docs" / "operations.md").read_text()
    documented = set(re.findall(r"^\| `(mcp_gateway_[a-z0-9_]+)` \|", doc, re.M))
    defined: set[str] = set()
    for path in (ROOT / "gateway").rglob("*.py"):
        defined.update(re.findall(r'"(mcp_gateway_[a-z0-9_]+)"', path.read_text()))
    assert sorted(defined - documented) == [], "add these to the metrics tables in docs/operations.md"
    assert sorted(documented - defined) == [], "docs/operations.md lists metrics the code no longer defines"
