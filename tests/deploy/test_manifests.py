"""deploy/: every Kubernetes manifest validates offline, and names, ports, env keys and
queues agree with haul's settings and constants, so a renamed setting breaks a test, not a pod."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from worker.constants import ALL_QUEUES
from worker.settings import CONFIG_ENV, WEB_TOKEN_ENV, Settings, load_settings

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "kubernetes"
SCHEMAS = K8S / "schemas"
K8S_VERSION = "1.30.0"
#: kinds kubernetes-validate does not know: checked against the schemas shipped in deploy/
CRD_KINDS = {
    ("keda.sh/v1alpha1", "ScaledObject"),
    ("keda.sh/v1alpha1", "TriggerAuthentication"),
    ("monitoring.coreos.com/v1", "ServiceMonitor"),
    ("monitoring.coreos.com/v1", "PrometheusRule"),
}
#: every series a haul process exports (worker: section 11; web: haul web's /metrics)
SERIES = {
    "haul_transfer_bytes_total", "haul_files_total", "haul_task_seconds_count",
    "haul_task_seconds_bucket", "haul_task_seconds_sum", "haul_retries_total",
    "haul_checksum_mismatches_total", "haul_input_changes_total", "haul_cache_hits_total",
    "haul_cache_misses_total", "haul_tasks_running", "haul_worker_healthy",
    "haul_queue_messages", "haul_web_lag_events",
}  # fmt: skip


def _docs() -> Iterator[tuple[str, dict[str, Any]]]:
    for path in sorted(K8S.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc:
                yield path.name, doc


DOCS = list(_docs())


def _kind(kind: str, name: str | None = None) -> list[dict[str, Any]]:
    return [
        d for _, d in DOCS if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)
    ]


def _one(kind: str, name: str) -> dict[str, Any]:
    found = _kind(kind, name)
    assert len(found) == 1, f"{kind}/{name}: {len(found)} found"
    return found[0]


def _container(deployment: str) -> dict[str, Any]:
    containers = _one("Deployment", deployment)["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    return containers[0]


def _configmap_settings(tmp_path: Path) -> Settings:
    toml = _one("ConfigMap", "haul-config")["data"]["haul.toml"]
    path = tmp_path / "haul.toml"
    path.write_text(toml)
    return load_settings(environ={}, config_file=path)


@pytest.mark.parametrize(
    ("file", "doc"), DOCS, ids=[f"{f}:{d['kind']}/{d['metadata']['name']}" for f, d in DOCS]
)
def test_every_manifest_validates_against_its_schema(file: str, doc: dict[str, Any]) -> None:
    """Built-in kinds against Kubernetes' own schemas (kubernetes-validate, offline, strict:
    an unknown field is an error); KEDA and Prometheus Operator kinds against deploy's schemas."""
    key = (doc["apiVersion"], doc["kind"])
    if key in CRD_KINDS:
        schema = json.loads((SCHEMAS / f"{key[0].replace('/', '_')}_{key[1]}.json").read_text())
        jsonschema.validate(doc, schema)
    else:
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


def test_a_bad_manifest_is_caught() -> None:
    """The validation can fail: a misspelled field and a wrong type are both errors."""
    worker = json.loads(json.dumps(_one("Deployment", "haul-worker")))
    worker["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["httpGett"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(worker, K8S_VERSION, strict=True)
    scaled = json.loads(json.dumps(_one("ScaledObject", "haul-worker")))
    scaled["spec"]["maxReplicaCount"] = "ten"
    schema = json.loads((SCHEMAS / "keda.sh_v1alpha1_ScaledObject.json").read_text())
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(scaled, schema)


def test_the_configmap_is_a_valid_haul_toml_that_binds_where_the_pods_listen(
    tmp_path: Path,
) -> None:
    """haul.toml in the ConfigMap loads with haul's own settings; its metrics_bind and web_bind
    ports are the containers' ports, and the grace period outlasts shutdown_grace_s."""
    s = _configmap_settings(tmp_path)
    worker = _container("haul-worker")
    ports = {p["name"]: p["containerPort"] for p in worker["ports"]}
    assert int(s.metrics_bind.rpartition(":")[2]) == ports["metrics"]
    assert s.metrics_bind.startswith("0.0.0.0:")  # the kubelet and Prometheus are not loopback
    web = _container("haul-web")
    web_ports = {p["name"]: p["containerPort"] for p in web["ports"]}
    assert int(s.web_bind.rpartition(":")[2]) == web_ports["http"] == 8750
    grace = _one("Deployment", "haul-worker")["spec"]["template"]["spec"]
    assert grace["terminationGracePeriodSeconds"] > s.shutdown_grace_s + 10
    assert s.task_events


def test_worker_probes_and_scrapes_use_healthz_and_metrics() -> None:
    """Liveness and readiness ask /healthz on the metrics port (not celery inspect ping);
    Prometheus finds /metrics by annotation and through the ServiceMonitor's Service."""
    worker = _container("haul-worker")
    for probe in ("livenessProbe", "readinessProbe"):
        assert worker[probe]["httpGet"] == {"path": "/healthz", "port": "metrics"}
    assert worker["args"][:2] == ["haul", "worker"]
    notes = _one("Deployment", "haul-worker")["spec"]["template"]["metadata"]["annotations"]
    assert notes["prometheus.io/port"] == str(
        next(p["containerPort"] for p in worker["ports"] if p["name"] == "metrics")
    )
    for monitor in _kind("ServiceMonitor"):
        labels = monitor["spec"]["selector"]["matchLabels"]
        services = [
            s for s in _kind("Service")
            if labels.items() <= s["metadata"]["labels"].items()
        ]  # fmt: skip
        assert services, monitor["metadata"]["name"]
        for endpoint in monitor["spec"]["endpoints"]:
            assert endpoint["port"] in {p["name"] for s in services for p in s["spec"]["ports"]}
    for service in _kind("Service"):
        selected = [
            d for d in _kind("Deployment")
            if service["spec"]["selector"].items()
            <= d["spec"]["template"]["metadata"]["labels"].items()
        ]  # fmt: skip
        assert len(selected) == 1, service["metadata"]["name"]
        names = {p["name"] for c in selected[0]["spec"]["template"]["spec"]["containers"]
                 for p in c["ports"]}  # fmt: skip
        for port in service["spec"]["ports"]:
            assert port["targetPort"] in names


def test_env_keys_are_haul_settings_and_secrets_exist_in_the_example() -> None:
    """Every HAUL_* variable a container sets names a real setting; every Secret key the
    manifests reference is in secret.example.yaml."""
    fields = set(Settings.model_fields)
    secret_keys = set(_one("Secret", "haul-credentials")["stringData"])
    for deployment in _kind("Deployment"):
        for container in deployment["spec"]["template"]["spec"]["containers"]:
            for env in container.get("env", []):
                name = env["name"]
                if name.startswith("HAUL_") and name not in (CONFIG_ENV, WEB_TOKEN_ENV):
                    assert name[5:].split("__")[0].lower() in fields, name
                ref = env.get("valueFrom", {}).get("secretKeyRef")
                if ref:
                    assert ref["name"] == "haul-credentials" and ref["key"] in secret_keys, ref
    web_env = {e["name"] for e in _container("haul-web")["env"]}
    assert WEB_TOKEN_ENV in web_env  # web_bind 0.0.0.0 is refused without a token


def test_keda_scales_the_worker_on_every_haul_queue() -> None:
    """The Redis and RabbitMQ ScaledObjects each watch all of haul's queues, by their names."""
    worker = _one("Deployment", "haul-worker")["metadata"]["name"]
    scaled = _kind("ScaledObject")
    assert {s["metadata"]["name"] for s in scaled} == {"haul-worker", "haul-worker-rabbitmq"}
    for obj in scaled:
        assert obj["spec"]["scaleTargetRef"]["name"] == worker
        triggers = obj["spec"]["triggers"]
        key = "listName" if triggers[0]["type"] == "redis" else "queueName"
        assert sorted(t["metadata"][key] for t in triggers) == sorted(ALL_QUEUES)
        for t in triggers:
            if "authenticationRef" in t:
                _one("TriggerAuthentication", t["authenticationRef"]["name"])


def test_alerts_cover_what_matters_with_real_series() -> None:
    """No worker healthy, queue growing, checksum mismatches, projector lag; every haul_*
    name in an expression is a series haul exports."""
    rules = [r for g in _one("PrometheusRule", "haul")["spec"]["groups"] for r in g["rules"]]
    alerts = {r["alert"]: str(r["expr"]) for r in rules}
    assert {"HaulNoWorkerHealthy", "HaulQueueGrowing", "HaulChecksumMismatches",
            "HaulProjectorLag"} <= set(alerts)  # fmt: skip
    for name, expr in alerts.items():
        used = set(re.findall(r"\bhaul_[a-z_]+", expr))
        assert used and used <= SERIES, (name, used - SERIES)
    assert "haul_worker_healthy" in alerts["HaulNoWorkerHealthy"]
    assert "haul_checksum_mismatches_total" in alerts["HaulChecksumMismatches"]
    assert "haul_web_lag_events" in alerts["HaulProjectorLag"]
    assert "haul_queue_messages" in alerts["HaulQueueGrowing"]


def test_systemd_units_and_procfile_run_worker_and_web() -> None:
    """Both processes everywhere: a unit each, and a Procfile line each."""
    units = {p.name: p.read_text() for p in (ROOT / "deploy" / "systemd").glob("*.service")}
    assert re.search(r"^ExecStart=\S*/haul worker$", units["haul-worker.service"], re.M)
    assert re.search(r"^ExecStart=\S*/haul web$", units["haul-web.service"], re.M)
    procfile = dict(
        line.split(":", 1) for line in (ROOT / "Procfile").read_text().splitlines() if line
    )
    assert {k: v.strip() for k, v in procfile.items()} == {
        "worker": "haul worker",
        "web": "haul web",
    }
    for text in units.values():
        assert f"Environment={CONFIG_ENV}=" in text
