"""Offline validation of deploy/: Kubernetes (kustomize + the Kubernetes schemas), compose,
Prometheus (promtool) and Grafana. No cluster and no Docker engine run here."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from admin.settings import ConsoleSettings
from bentos.dataplane.metrics import get_metrics
from bentos.settings import ServeSettings
from bentos.signing import SigningSettings
from tests.conftest import ROOT
from tests.deploy import kustomize

DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"
K8S_VERSION = "1.33.0"


def render(kustomization_dir: Path) -> list[dict[str, Any]]:
    """The kustomization rendered as `kubectl kustomize` would (tests/deploy/kustomize.py), with or without
    kubectl on this machine: the overlays are checked everywhere."""
    return kustomize.build(kustomization_dir)


def kubectl_kustomize(kustomization_dir: Path) -> list[dict[str, Any]]:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl not installed: the Python renderer is not compared with kustomize itself here")
    out = subprocess.run([kubectl, "kustomize", str(kustomization_dir)], capture_output=True, text=True,
                         timeout=60, check=True).stdout
    return [d for d in yaml.safe_load_all(out) if d]


KUSTOMIZATIONS = sorted(p.parent.relative_to(K8S).as_posix() for p in K8S.rglob("kustomization.yaml"))


@pytest.mark.parametrize("where", KUSTOMIZATIONS)
def test_the_python_renderer_writes_what_kubectl_kustomize_writes(where: str) -> None:
    def canonical(docs: list[dict[str, Any]]) -> list[str]:  # kustomize sorts documents by kind
        return sorted(json.dumps(d, sort_keys=True) for d in docs)

    assert canonical(render(K8S / where)) == canonical(kubectl_kustomize(K8S / where))


def test_the_python_renderer_refuses_what_it_does_not_implement(tmp_path: Path) -> None:
    (tmp_path / "kustomization.yaml").write_text("resources: []\nnamePrefix: dev-\n")
    with pytest.raises(kustomize.Unsupported, match="namePrefix"):
        kustomize.build(tmp_path)
    doc = {"kind": "Deployment", "metadata": {"name": "x"}, "spec": {"replicas": 1}}
    with pytest.raises(KeyError, match="/spec/paused"):
        kustomize._json6902(doc, [{"op": "replace", "path": "/spec/paused", "value": True}])


def test_a_strategic_merge_patch_merges_by_name_and_deletes_with_null() -> None:
    base = {"containers": [{"name": "a", "image": "x", "env": [{"name": "K", "value": "1"}]}], "hostNetwork": True}
    patch = {"containers": [{"name": "a", "env": [{"name": "J", "value": "2"}]}, {"name": "b", "image": "y"}],
             "hostNetwork": None}
    assert kustomize.merge(base, patch) == {"containers": [
        {"name": "b", "image": "y"},
        {"name": "a", "image": "x", "env": [{"name": "J", "value": "2"}, {"name": "K", "value": "1"}]}]}


def by_kind(docs: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    found = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind}/{name}, found {len(found)}"
    return found[0]


def container(deployment: dict[str, Any], name: str) -> dict[str, Any]:
    return next(c for c in deployment["spec"]["template"]["spec"]["containers"] if c["name"] == name)


def env_map(c: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in c.get("env", [])}


def validate_schema(docs: list[dict[str, Any]]) -> None:
    import kubernetes_validate

    for doc in docs:
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


@pytest.fixture(scope="module")
def base() -> list[dict[str, Any]]:
    return render(K8S / "base")


def test_base_renders_and_matches_the_kubernetes_schemas(base: list[dict[str, Any]]) -> None:
    kinds = sorted(f"{d['kind']}/{d['metadata']['name']}" for d in base)
    assert kinds == ["Deployment/switchyard", "Deployment/switchyard-console", "HorizontalPodAutoscaler/switchyard",
                     "PodDisruptionBudget/switchyard", "Service/switchyard", "Service/switchyard-console"]
    validate_schema(base)
    validate_schema(render(K8S / "postgres"))


def test_schema_validation_rejects_a_broken_manifest(base: list[dict[str, Any]]) -> None:
    import kubernetes_validate

    broken = json.loads(json.dumps(by_kind(base, "Deployment", "switchyard")))
    broken["spec"]["replicas"] = "three"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, K8S_VERSION, strict=True)


def test_serving_deployment_has_probes_resources_and_secrets(base: list[dict[str, Any]]) -> None:
    dep = by_kind(base, "Deployment", "switchyard")
    assert dep["spec"]["replicas"] == 3
    c = container(dep, "switchyard")
    assert c["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert c["livenessProbe"]["httpGet"]["path"] == "/livez"
    assert {"cpu", "memory"} <= c["resources"]["requests"].keys() <= c["resources"]["limits"].keys()
    env = env_map(c)
    assert env["SWITCHYARD_ADMIN_TOKEN"] == {"secretKeyRef": {"name": "switchyard", "key": "admin-token"}}
    assert env["SWITCHYARD_DB_URL"] == {"secretKeyRef": {"name": "switchyard", "key": "db-url"}}
    assert env["SWITCHYARD_SIGNING_KEY"] == {"secretKeyRef": {"name": "switchyard", "key": "signing-key"}}
    assert c["args"] == ["serve", "--timeout-keep-alive", "120"]  # idle connections outlive every client's
    annotations = dep["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true" and annotations["prometheus.io/path"] == "/metrics"
    assert c["ports"][0]["containerPort"] == int(annotations["prometheus.io/port"]) == 3000


def test_service_pdb_hpa_and_console_select_the_right_pods(base: list[dict[str, Any]]) -> None:
    pods = by_kind(base, "Deployment", "switchyard")["spec"]["template"]["metadata"]["labels"]
    for kind in ("Service", "PodDisruptionBudget"):
        doc = by_kind(base, kind, "switchyard")
        selector = doc["spec"]["selector"]
        assert (selector.get("matchLabels") or selector).items() <= pods.items()
    hpa = by_kind(base, "HorizontalPodAutoscaler", "switchyard")["spec"]
    assert hpa["scaleTargetRef"]["name"] == "switchyard" and hpa["minReplicas"] >= 2
    assert by_kind(base, "PodDisruptionBudget", "switchyard")["spec"]["minAvailable"] < hpa["minReplicas"]
    console = container(by_kind(base, "Deployment", "switchyard-console"), "console")
    assert env_map(console)["SWITCHYARD_SERVICE_URL"] == "http://switchyard:3000"
    assert "SWITCHYARD_ADMIN_TOKEN" not in env_map(console)  # a shared console signs each person in


def test_postgres_example_is_a_statefulset_with_storage() -> None:
    docs = render(K8S / "postgres")
    sts = by_kind(docs, "StatefulSet", "switchyard-postgres")
    assert sts["spec"]["volumeClaimTemplates"][0]["spec"]["resources"]["requests"]["storage"]


def test_gpu_overlay_asks_for_a_gpu_and_cuda() -> None:
    docs = render(K8S / "overlays" / "gpu")
    validate_schema(docs)
    c = container(by_kind(docs, "Deployment", "switchyard"), "switchyard")
    assert c["image"] == "registry.example.com/switchyard-gpu:latest"
    assert env_map(c)["SWITCHYARD_ADMIN_TOKEN"]  # the base survives the patch
    assert c["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert json.loads(env_map(c)["SWITCHYARD_PROVIDERS"]) == ["CUDAExecutionProvider"]
    assert by_kind(docs, "HorizontalPodAutoscaler", "switchyard")["spec"]["minReplicas"] == 2


def test_the_queue_autoscaling_overlay_scales_on_requests_in_flight_and_cpu() -> None:
    docs = render(K8S / "overlays" / "queue-autoscaling")
    validate_schema(docs)
    hpa = by_kind(docs, "HorizontalPodAutoscaler", "switchyard")["spec"]
    metrics = {m["type"]: m for m in hpa["metrics"]}
    assert metrics["Resource"]["resource"]["name"] == "cpu"
    pods = metrics["Pods"]["pods"]
    assert pods["target"]["type"] == "AverageValue" and float(pods["target"]["averageValue"]) > 0
    assert hpa["behavior"]["scaleDown"]["stabilizationWindowSeconds"] >= 60
    assert hpa["minReplicas"] >= 2 and hpa["scaleTargetRef"]["name"] == "switchyard"
    rules = yaml.safe_load(by_kind(docs, "ConfigMap", "prometheus-adapter-switchyard")["data"]["config.yaml"])
    rule = rules["rules"][0]
    assert rule["name"]["as"] == pods["metric"]["name"]
    series = rule["seriesQuery"].split("{")[0]
    assert series in {m._name for m in vars(get_metrics()).values()}  # a metric the service exports
    assert set(rule["resources"]["overrides"]) == {"namespace", "pod"}


def _setting_names() -> set[str]:
    return {f"SWITCHYARD_{n.upper()}" for n in [*ServeSettings.model_fields, *ConsoleSettings.model_fields,
                                                 *SigningSettings.model_fields]}


def test_every_switchyard_variable_in_deploy_is_a_real_setting() -> None:
    known = _setting_names()
    texts = [p.read_text() for p in [*DEPLOY.rglob("*.yaml"), *DEPLOY.rglob("*.yml"), ROOT / "bentofile.yaml"]]
    used = set(re.findall(r"\bSWITCHYARD_[A-Z_]+\b", "\n".join(texts)))
    assert used and used <= known, f"not settings: {sorted(used - known)}"


def test_compose_runs_the_whole_stack_with_mounts_that_exist() -> None:
    compose = yaml.safe_load((DEPLOY / "docker-compose.yaml").read_text())
    services = compose["services"]
    assert {"switchyard-a", "switchyard-b", "console", "postgres", "prometheus", "grafana"} <= services.keys()
    for name, svc in services.items():
        for volume in svc.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("."):
                assert (DEPLOY / source).exists(), f"{name} mounts missing {source}"
    assert "postgres:5432" in services["switchyard-a"]["environment"]["SWITCHYARD_DB_URL"]
    assert (ROOT / services["console"]["build"]["dockerfile"]).is_file()
    prom = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    targets = prom["scrape_configs"][0]["static_configs"][0]["targets"]
    assert targets == [f"{s}:3000" for s in ("switchyard-a", "switchyard-b")]


def _promtool(*args: str) -> subprocess.CompletedProcess[str]:
    tool = shutil.which("promtool")
    assert tool, "promtool missing: install Debian's 'prometheus' package (make system-deps)"
    return subprocess.run([tool, *args], capture_output=True, text=True, timeout=60)


def test_promtool_accepts_the_config_and_rules() -> None:
    out = _promtool("check", "config", str(DEPLOY / "prometheus" / "prometheus.yml"))
    assert out.returncode == 0, out.stdout + out.stderr
    rules = sorted(str(p) for p in (DEPLOY / "prometheus" / "rules").glob("*.yml"))
    out = _promtool("check", "rules", *rules)
    assert out.returncode == 0, out.stdout + out.stderr


def test_promtool_rejects_a_broken_rule(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yml"
    bad.write_text("groups:\n  - name: x\n    rules:\n      - record: a:b\n        expr: sum(rate(x[1m]\n")
    assert _promtool("check", "rules", str(bad)).returncode != 0


def _metric_names() -> set[str]:
    names = set()
    for metric in get_metrics().__dict__.values():
        names.add(metric._name)
        names |= {f"{metric._name}{s}" for s in ("_total", "_bucket", "_sum", "_count")}
    rules = yaml.safe_load((DEPLOY / "prometheus" / "rules" / "recording.yml").read_text())
    return names | {r["record"] for g in rules["groups"] for r in g["rules"]}


def test_alerts_cover_canary_slo_circuit_and_readiness() -> None:
    rules = yaml.safe_load((DEPLOY / "prometheus" / "rules" / "alerts.yml").read_text())
    exprs = {r["alert"]: r["expr"] for g in rules["groups"] for r in g["rules"]}
    assert {"SwitchyardCanaryErrorRatioAboveStable", "SwitchyardP99AboveSLO", "SwitchyardCircuitOpen",
            "SwitchyardNotReady", "SwitchyardRevisionsDisagree", "SwitchyardInputDrift"} == exprs.keys()
    known = _metric_names() | {"up"}
    for alert, expr in exprs.items():
        used = set(re.findall(r"\b(switchyard[:_][a-z0-9_:]+|up)\b", expr))
        assert used <= known, f"{alert} reads unknown series {used - known}"


def test_grafana_dashboard_has_a_panel_per_signal_on_real_metrics() -> None:
    dash = json.loads((DEPLOY / "grafana" / "dashboards" / "switchyard.json").read_text())
    text = json.dumps(dash)
    for metric in ("switchyard_requests_total", "switchyard_request_duration_seconds_bucket",
                   "switchyard_batch_size_sum", "switchyard_queue_wait_seconds_bucket", "switchyard_cache_hits_total",
                   "switchyard_fallbacks_total", "switchyard_shadow_agreement_sum", "switchyard_prediction_drift",
                   "switchyard:drift_score:max"):
        assert metric in text, f"no panel reads {metric}"
    known = _metric_names()
    exprs = [t["expr"] for p in dash["panels"] for t in p["targets"]]
    used = {m for e in exprs for m in re.findall(r"\b(switchyard[:_][a-z0-9_:]+)\b", e)}
    assert used <= known, f"unknown series {used - known}"
    provider = yaml.safe_load((DEPLOY / "grafana" / "provisioning" / "dashboards" / "switchyard.yaml").read_text())
    compose = yaml.safe_load((DEPLOY / "docker-compose.yaml").read_text())
    mounts = compose["services"]["grafana"]["volumes"]
    assert f"./grafana/dashboards:{provider['providers'][0]['options']['path']}:ro" in mounts
    datasource = yaml.safe_load((DEPLOY / "grafana" / "provisioning" / "datasources" / "prometheus.yaml").read_text())
    assert {p["datasource"]["uid"] for p in dash["panels"]} == {datasource["datasources"][0]["uid"]}


def test_pods_run_hardened_and_serving_drains_before_it_stops(base: list[dict[str, Any]]) -> None:
    for name, c_name in (("switchyard", "switchyard"), ("switchyard-console", "console")):
        pod = by_kind(base, "Deployment", name)["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
        ctx = container(by_kind(base, "Deployment", name), c_name)["securityContext"]
        assert ctx["allowPrivilegeEscalation"] is False and ctx["capabilities"]["drop"] == ["ALL"]
    console = container(by_kind(base, "Deployment", "switchyard-console"), "console")
    assert console["securityContext"]["readOnlyRootFilesystem"] is True
    assert {m["mountPath"] for m in console["volumeMounts"]} == {"/tmp"} and env_map(console)["HOME"] == "/tmp"
    serving = by_kind(base, "Deployment", "switchyard")
    c = container(serving, "switchyard")
    assert c["lifecycle"]["preStop"]["exec"]["command"][-1].startswith("sleep")
    drain = int(c["lifecycle"]["preStop"]["exec"]["command"][-1].split()[1])
    assert serving["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] > drain + 20
    assert env_map(c)["SWITCHYARD_PLAYGROUND"] == "false"


def test_the_network_policy_and_public_ingress_example_pass_the_strict_schemas() -> None:
    docs = list(yaml.safe_load_all((K8S / "networkpolicy.example.yaml").read_text()))
    assert sorted(f"{d['kind']}/{d['metadata']['name']}" for d in docs) == [
        "Ingress/switchyard-public", "NetworkPolicy/switchyard", "NetworkPolicy/switchyard-console"]
    validate_schema(docs)
    paths = [p["path"] for rule in by_kind(docs, "Ingress", "switchyard-public")["spec"]["rules"]
             for p in rule["http"]["paths"]]
    assert not any(p.startswith(("/v1/admin", "/playground")) for p in paths)
    postgres = {d["spec"]["template"]["metadata"]["labels"]["app.kubernetes.io/name"]
                for d in render(K8S / "postgres") if d["kind"] == "StatefulSet"}
    egress = by_kind(docs, "NetworkPolicy", "switchyard")["spec"]["egress"][0]["to"][0]["podSelector"]
    assert egress["matchLabels"]["app.kubernetes.io/name"] in postgres


def test_compose_has_no_default_passwords_and_keeps_admin_ports_local() -> None:
    compose = yaml.safe_load((DEPLOY / "docker-compose.yaml").read_text())
    services = compose["services"]
    assert services["postgres"]["environment"]["POSTGRES_PASSWORD"].startswith("${POSTGRES_PASSWORD:?")
    assert ":?" in services["switchyard-a"]["environment"]["SWITCHYARD_DB_URL"]
    grafana = services["grafana"]["environment"]
    assert grafana["GF_AUTH_ANONYMOUS_ENABLED"] == "false" and ":?" in grafana["GF_SECURITY_ADMIN_PASSWORD"]
    assert not any("enable-lifecycle" in arg for arg in services["prometheus"]["command"])
    for name in ("console", "prometheus", "grafana"):
        assert all(p.startswith("127.0.0.1:") for p in services[name]["ports"]), name
