"""The Kubernetes and KServe manifests (deploy/k8s, deploy/kserve), checked offline.

- Core Kubernetes objects validate against the Kubernetes OpenAPI schemas that
  kubernetes-validate bundles (strict: an unknown field fails), for the oldest
  and the newest Kubernetes release it carries.
- KServe objects are custom resources, outside those schemas: they validate
  against the partial JSON schemas in deploy/kserve/schemas (written from
  KServe's documented CRD fields), and their containers against the
  Kubernetes Container schema.
- Then what no schema sees: probes aim at ports the container has, the
  server listens where the ports say, the grace period outlasts preStop plus
  the server's drain, the HPA, PDB and Service find the Deployment's pods,
  the HPA's custom metric is the one the adapter rule serves and ferroserve
  exports (src/telemetry, README's metrics table), and every argument is a flag ferroserve has (from README.md's
  Flags table, so no binary is needed).

Each check returns a list of problems; the tests also feed the checks broken
copies of the manifests, so a check that can no longer fail is caught.
"""

import copy
import json
import re

import jsonschema
import kubernetes_validate
import pytest
import yaml

from conftest import REPO_ROOT

K8S_DIR = REPO_ROOT / "deploy" / "k8s"
KSERVE_DIR = REPO_ROOT / "deploy" / "kserve"
SCHEMA_DIR = KSERVE_DIR / "schemas"
README = REPO_ROOT / "README.md"
DOCKERFILE = REPO_ROOT / "Dockerfile"
TELEMETRY_DIR = REPO_ROOT / "src" / "telemetry"

# The oldest and the newest Kubernetes release whose schemas kubernetes-validate
# 1.37.0 bundles; every API used here is GA in both.
KUBERNETES_VERSIONS = ("1.25", "1.37")
# KServe routes to this container port when the runtime declares none.
KSERVE_HTTP_PORT = 8080
READY_PATH = "/v2/health/ready"
LIVE_PATH = "/v2/health/live"


# --------------------------------------------------------------------------- loading


def load_documents(directory):
    """(file name, object) for every YAML document under a directory, in order."""
    docs = []
    for path in sorted(directory.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc:
                docs.append((path.name, doc))
    return docs


K8S_DOCS = load_documents(K8S_DIR)
KSERVE_DOCS = load_documents(KSERVE_DIR)


def only(docs, kind):
    found = [doc for _, doc in docs if doc.get("kind") == kind]
    assert len(found) == 1, f"expected one {kind}, found {len(found)}"
    return found[0]


def readme_flags():
    """ferroserve's flags from README.md's Flags table: name -> (default, boolean)."""
    text = README.read_text()
    section = text.split("\n## Flags\n", 1)[1].split("\n## ", 1)[0]
    flags = {}
    for line in section.splitlines():
        if not line.startswith("| `--"):
            continue
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        names = re.findall(r"`(--[a-z0-9-]+)`", cells[0])
        defaults = re.findall(r"`([^`]*)`", cells[2])
        boolean = cells[2] == "off"
        for i, name in enumerate(names):
            # `--http-address` / `--http-port` share a row: `0.0.0.0` / `8000`.
            default = defaults[i] if i < len(defaults) else None
            flags[name] = (default, boolean)
    assert "--model-repository" in flags, "README.md's Flags table was not found"
    return flags


FLAGS = readme_flags()


def parse_args(args):
    """ferroserve's command line as {flag: value (True for switches)}, and its problems."""
    values, problems = {}, []
    i = 0
    while i < len(args):
        arg = args[i]
        name, eq, value = arg.partition("=")
        i += 1
        if not name.startswith("--"):
            problems.append(f"argument {arg!r} is not a flag")
            continue
        if name not in FLAGS:
            problems.append(f"{name} is not a ferroserve flag (README.md, Flags)")
            continue
        if FLAGS[name][1]:
            if eq:
                problems.append(f"{name} is a switch and takes no value")
            values[name] = True
            continue
        if not eq:
            if i >= len(args) or args[i].startswith("--"):
                problems.append(f"{name} needs a value")
                continue
            value = args[i]
            i += 1
        values[name] = value
    return values, problems


def flag(values, name):
    """The value ferroserve runs with: given on the command line, else README's default."""
    return values.get(name, FLAGS[name][0])


def dockerfile_uid():
    match = re.search(r"^USER\s+(\d+)\s*$", DOCKERFILE.read_text(), re.M)
    assert match, "the Dockerfile names no numeric USER"
    return int(match.group(1))


def probe_port(probe):
    handler = probe.get("httpGet") or probe.get("tcpSocket") or probe.get("grpc") or {}
    return handler.get("port")


def prestop_seconds(container):
    """How long the preStop hook holds SIGTERM back: `sleep N` or the sleep action."""
    prestop = container.get("lifecycle", {}).get("preStop", {})
    if "sleep" in prestop:
        return int(prestop["sleep"]["seconds"])
    command = prestop.get("exec", {}).get("command", [])
    if len(command) == 2 and command[0].rsplit("/", 1)[-1] == "sleep":
        return int(command[1])
    return 0


def selects(selector, labels):
    """Whether a matchLabels selector picks pods with these labels."""
    match = selector.get("matchLabels", selector)
    return bool(match) and all(labels.get(k) == v for k, v in match.items())


# --------------------------------------------------------------------------- checks


def server_problems(container, ports_by_flag):
    """Checks shared by every ferroserve container: flags, ports, probes, security."""
    values, problems = parse_args(container.get("args", []))
    if "--exit-timeout-secs" not in values:
        problems.append("--exit-timeout-secs must be set explicitly")
    for flag_name, port in ports_by_flag.items():
        if port is not None and int(flag(values, flag_name)) != port:
            problems.append(f"server listens on {flag(values, flag_name)} ({flag_name}), port says {port}")
    for kind, path in (("startupProbe", READY_PATH), ("readinessProbe", READY_PATH), ("livenessProbe", LIVE_PATH)):
        probe = container.get(kind)
        if probe is None:
            continue
        got = probe.get("httpGet", {}).get("path")
        if got != path:
            problems.append(f"{kind} asks {got}, expected {path}")
    if "readinessProbe" not in container or "livenessProbe" not in container:
        problems.append("readinessProbe and livenessProbe are both needed")
    security = container.get("securityContext", {})
    if security.get("readOnlyRootFilesystem") is not True:
        problems.append("readOnlyRootFilesystem must be true")
    if security.get("allowPrivilegeEscalation") is not False:
        problems.append("allowPrivilegeEscalation must be false")
    resources = container.get("resources", {})
    for part in ("requests", "limits"):
        for resource in ("cpu", "memory"):
            if resource not in resources.get(part, {}):
                problems.append(f"resources.{part}.{resource} is not set")
    return values, problems


def deployment_problems(deployment, pvc_name):
    template = deployment["spec"]["template"]
    pod = template["spec"]
    (container,) = pod["containers"]
    ports = {p["name"]: p["containerPort"] for p in container.get("ports", [])}
    values, problems = server_problems(
        container,
        {"--http-port": ports.get("http"), "--grpc-port": ports.get("grpc"), "--metrics-port": ports.get("metrics")},
    )
    for kind in ("startupProbe", "readinessProbe", "livenessProbe"):
        if kind in container:
            port = probe_port(container[kind])
            if port not in ports and port not in ports.values():
                problems.append(f"{kind} aims at port {port!r}, which the container does not have")
    if "startupProbe" not in container:
        problems.append("a startupProbe is needed: models load before the pod is ready")
    # Drain: preStop, then SIGTERM and at most --exit-timeout-secs, all inside the grace period.
    prestop = prestop_seconds(container)
    if prestop <= 0:
        problems.append("a preStop sleep is needed so endpoints drop the pod before SIGTERM")
    grace = pod.get("terminationGracePeriodSeconds", 30)
    exit_timeout = int(flag(values, "--exit-timeout-secs"))
    if grace <= prestop + exit_timeout:
        problems.append(
            f"terminationGracePeriodSeconds {grace} <= preStop {prestop} + --exit-timeout-secs {exit_timeout}"
        )
    # Models: the repository flag names the read-only mount of the PVC.
    mounts = {m["mountPath"]: m for m in container.get("volumeMounts", [])}
    mount = mounts.get(flag(values, "--model-repository"))
    volumes = {v["name"]: v for v in pod.get("volumes", [])}
    if mount is None:
        problems.append(f"--model-repository {flag(values, '--model-repository')} is not a volume mount")
    else:
        if not mount.get("readOnly"):
            problems.append("the model repository must be mounted read-only")
        claim = volumes.get(mount["name"], {}).get("persistentVolumeClaim", {}).get("claimName")
        if claim != pvc_name:
            problems.append(f"the model repository is {claim!r}, not the PVC {pvc_name!r}")
    if flag(values, "--model-control-mode") != "poll":
        problems.append("--model-control-mode poll: copying files onto the volume deploys them")
    # Non-root as the image's user; Prometheus scrapes the metrics port.
    security = {**pod.get("securityContext", {}), **container.get("securityContext", {})}
    if security.get("runAsNonRoot") is not True or security.get("runAsUser") != dockerfile_uid():
        problems.append(f"must run as non-root UID {dockerfile_uid()} (the Dockerfile's USER)")
    annotations = template["metadata"].get("annotations", {})
    if annotations.get("prometheus.io/scrape") != "true":
        problems.append("prometheus.io/scrape must be \"true\"")
    if annotations.get("prometheus.io/port") != str(ports.get("metrics")):
        problems.append(f"prometheus.io/port {annotations.get('prometheus.io/port')} is not the metrics port")
    if not selects(deployment["spec"]["selector"], template["metadata"]["labels"]):
        problems.append("the Deployment's selector does not match its pod labels")
    problems += security_problems(container, pod, values, annotations)
    return problems


# Flags naming a file of secret material, and the Secret key it must be.
SECRET_FILES = ("--tls-cert", "--tls-key", "--tls-client-ca", "--auth-keys")


def security_problems(container, pod, values, annotations):
    """TLS and keys come from Secret volumes mounted whole (a subPath mount
    never sees the kubelet's updates, so rotation would need a restart), the
    probes speak HTTPS to a TLS port and Prometheus is told to."""
    problems = []
    volumes = {v["name"]: v for v in pod.get("volumes", [])}
    for name in SECRET_FILES:
        if name not in values:
            continue
        path = values[name]
        mount = next((m for m in container.get("volumeMounts", []) if path.startswith(m["mountPath"].rstrip("/") + "/")), None)
        if mount is None:
            problems.append(f"{name} {path} is on no volume mount")
            continue
        if "secret" not in volumes.get(mount["name"], {}):
            problems.append(f"{name} {path} is not on a Secret volume")
        if not mount.get("readOnly"):
            problems.append(f"{name}: the Secret volume {mount['name']} must be mounted read-only")
        if "subPath" in mount:
            problems.append(f"{name}: a subPath mount of {mount['name']} never sees the Secret's updates")
    if "--tls-cert" in values:
        for kind in ("startupProbe", "readinessProbe", "livenessProbe"):
            if kind in container and container[kind].get("httpGet", {}).get("scheme") != "HTTPS":
                problems.append(f"{kind} must use scheme HTTPS: every port serves TLS")
        if "--metrics-plaintext" not in values and annotations.get("prometheus.io/scheme") != "https":
            problems.append("prometheus.io/scheme must be https: the metrics port serves TLS")
    return problems


def service_problems(service, deployment):
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    problems = []
    if not selects(service["spec"]["selector"], pod_labels):
        problems.append("the Service selects no ferroserve pod")
    for port in service["spec"]["ports"]:
        target = port.get("targetPort", port["port"])
        if target not in ports and target not in ports.values():
            problems.append(f"Service port {port['name']} targets {target!r}, which the container does not have")
        if port["name"] == "grpc" and port.get("appProtocol") != "grpc":
            problems.append("the grpc port needs appProtocol: grpc")
    exposed = sorted(p["name"] for p in service["spec"]["ports"])
    if exposed != sorted(ports):
        problems.append(f"the Service exposes {exposed}, the pod {sorted(ports)}")
    return problems


def pdb_problems(pdb, deployment, hpa):
    problems = []
    if not selects(pdb["spec"]["selector"], deployment["spec"]["template"]["metadata"]["labels"]):
        problems.append("the PodDisruptionBudget's selector does not match the pod labels")
    floor = hpa["spec"].get("minReplicas", 1)
    if "maxUnavailable" in pdb["spec"] and floor - int(pdb["spec"]["maxUnavailable"]) < 1:
        problems.append(f"maxUnavailable {pdb['spec']['maxUnavailable']} may leave none of {floor} replicas")
    if "minAvailable" in pdb["spec"] and int(pdb["spec"]["minAvailable"]) >= floor:
        problems.append(f"minAvailable {pdb['spec']['minAvailable']} blocks every drain at {floor} replicas")
    return problems


def hpa_problems(hpa, deployment, adapter_config):
    spec = hpa["spec"]
    target = spec["scaleTargetRef"]
    problems = []
    expected = {"apiVersion": deployment["apiVersion"], "kind": "Deployment", "name": deployment["metadata"]["name"]}
    if {k: target.get(k) for k in expected} != expected:
        problems.append(f"the HPA targets {target}, not {expected}")
    if not 2 <= spec.get("minReplicas", 1) <= spec["maxReplicas"]:
        problems.append("minReplicas must be at least 2 and at most maxReplicas")
    kinds = {(m["type"], (m.get("resource") or m.get("pods") or {}).get("name")) for m in spec["metrics"]}
    if ("Resource", "cpu") not in kinds:
        problems.append("the HPA must scale on CPU utilisation")
    pod_metrics = [m["pods"]["metric"]["name"] for m in spec["metrics"] if m["type"] == "Pods"]
    if pod_metrics != ["ferroserve_server_inflight_requests"]:
        problems.append(f"the HPA's Pods metric is {pod_metrics}, expected ferroserve_server_inflight_requests")
    served = {rule["name"]["as"] for rule in yaml.safe_load(adapter_config)["rules"]}
    for name in pod_metrics:
        if name not in served:
            problems.append(f"no prometheus-adapter rule serves {name} (it serves {sorted(served)})")
        if f'"{name}"' not in "".join(p.read_text() for p in TELEMETRY_DIR.glob("*.rs")):
            problems.append(f"ferroserve does not export {name} (src/telemetry)")
        if f"| `{name}` |" not in README.read_text():
            problems.append(f"{name} is not in README.md's metrics table")
    return problems


def runtime_problems(runtime):
    spec = runtime["spec"]
    (container,) = spec["containers"]
    declared = [p["containerPort"] for p in container.get("ports", [])]
    values, problems = server_problems(
        container, {"--http-port": KSERVE_HTTP_PORT if not declared else None, "--metrics-port": None}
    )
    if container["name"] != "kserve-container":
        problems.append("KServe expects the runtime's container to be named kserve-container")
    if flag(values, "--model-repository") != "/mnt/models":
        problems.append("KServe puts the model at /mnt/models: --model-repository /mnt/models")
    if not values.get("--strict-readiness"):
        problems.append("--strict-readiness: a revision whose model fails to load must never become ready")
    # Knative routes one port; with none declared it is KServe's 8080, where REST listens.
    serving = declared or [KSERVE_HTTP_PORT]
    for kind in ("readinessProbe", "livenessProbe"):
        if probe_port(container.get(kind, {})) not in serving:
            problems.append(f"{kind} aims at {probe_port(container.get(kind, {}))!r}, not the serving port {serving}")
    if "lifecycle" in container:
        problems.append("Knative refuses lifecycle hooks on the serving container")
    if container.get("securityContext", {}).get("runAsUser") != dockerfile_uid():
        problems.append(f"runAsUser must be {dockerfile_uid()} (the Dockerfile's USER)")
    if spec.get("annotations", {}).get("prometheus.kserve.io/port") != flag(values, "--metrics-port"):
        problems.append("prometheus.kserve.io/port is not --metrics-port")
    if {"v2", "grpc-v2"} - set(spec.get("protocolVersions", [])):
        problems.append("ferroserve speaks v2 and grpc-v2: list both in protocolVersions")
    return problems


def isvc_problems(isvc, runtime):
    predictor = isvc["spec"]["predictor"]
    model = predictor["model"]
    (container,) = runtime["spec"]["containers"]
    values, _ = parse_args(container["args"])
    problems = []
    if model.get("runtime") != runtime["metadata"]["name"]:
        problems.append(f"the InferenceService names runtime {model.get('runtime')!r}")
    formats = {(f["name"], f.get("version")) for f in runtime["spec"]["supportedModelFormats"]}
    wanted = (model["modelFormat"]["name"], model["modelFormat"].get("version"))
    if wanted not in formats and (wanted[0], None) not in formats:
        problems.append(f"the runtime does not support model format {wanted}")
    # KServe takes a model without protocolVersion as v1, which ferroserve does not speak.
    if model.get("protocolVersion") not in runtime["spec"]["protocolVersions"]:
        problems.append(f"protocolVersion {model.get('protocolVersion')!r} is not one the runtime declares")
    if not 0 < predictor.get("canaryTrafficPercent", 0) < 100:
        problems.append("the example shows a canary: 0 < canaryTrafficPercent < 100")
    ports = model.get("ports", [])
    if len(ports) > 1:
        problems.append("Knative routes exactly one container port")
    for port in ports:
        expected = {"h2c": flag(values, "--grpc-port"), "http1": flag(values, "--http-port")}.get(port.get("name"))
        if expected is None or int(expected) != port["containerPort"]:
            problems.append(f"port {port} is neither h2c on --grpc-port nor http1 on --http-port")
    return problems


# --------------------------------------------------------------------------- tests


def validate_kubernetes(obj, version):
    kubernetes_validate.validate(obj, version, strict=True)


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
@pytest.mark.parametrize(
    "name,doc", K8S_DOCS, ids=[f"{name}:{doc['kind']}" for name, doc in K8S_DOCS]
)
def test_kubernetes_manifest_validates(name, doc, version):
    validate_kubernetes(doc, version)
    assert "namespace" not in doc["metadata"], f"{name}: manifests are namespace-agnostic"


def test_every_object_is_there():
    kinds = sorted(doc["kind"] for _, doc in K8S_DOCS)
    assert kinds == [
        "ConfigMap", "Deployment", "HorizontalPodAutoscaler", "PersistentVolumeClaim", "PodDisruptionBudget", "Service",
    ]  # fmt: skip
    assert sorted(doc["kind"] for _, doc in KSERVE_DOCS) == ["InferenceService", "ServingRuntime"]


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_schema_validation_can_fail(version):
    deployment = copy.deepcopy(only(K8S_DOCS, "Deployment"))
    deployment["spec"]["template"]["spec"]["containers"][0]["ports"][0]["containerPort"] = "eight thousand"
    with pytest.raises(kubernetes_validate.ValidationError):
        validate_kubernetes(deployment, version)
    hpa = copy.deepcopy(only(K8S_DOCS, "HorizontalPodAutoscaler"))
    hpa["spec"]["metrics"][1]["pods"]["targetValue"] = 16  # autoscaling/v2beta1 spelling
    with pytest.raises(kubernetes_validate.ValidationError):
        validate_kubernetes(hpa, version)


SCHEMAS = {
    "ServingRuntime": SCHEMA_DIR / "servingruntime.schema.json",
    "InferenceService": SCHEMA_DIR / "inferenceservice.schema.json",
}


def validate_kserve(doc):
    schema = json.loads(SCHEMAS[doc["kind"]].read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    jsonschema.Draft202012Validator(schema).validate(doc)


@pytest.mark.parametrize("name,doc", KSERVE_DOCS, ids=[name for name, _ in KSERVE_DOCS])
def test_kserve_manifest_validates(name, doc):
    validate_kserve(doc)
    assert "namespace" not in doc["metadata"], f"{name}: manifests are namespace-agnostic"


def test_kserve_schemas_can_fail():
    runtime = copy.deepcopy(only(KSERVE_DOCS, "ServingRuntime"))
    runtime["spec"]["protocolVersions"] = ["v2", "grpc"]
    with pytest.raises(jsonschema.ValidationError):
        validate_kserve(runtime)
    runtime = copy.deepcopy(only(KSERVE_DOCS, "ServingRuntime"))
    runtime["spec"]["protocolVersion"] = runtime["spec"].pop("protocolVersions")
    with pytest.raises(jsonschema.ValidationError):
        validate_kserve(runtime)
    isvc = copy.deepcopy(only(KSERVE_DOCS, "InferenceService"))
    isvc["spec"]["predictor"]["canaryTrafficPercent"] = 110
    with pytest.raises(jsonschema.ValidationError):
        validate_kserve(isvc)
    del isvc["spec"]["predictor"]["model"]["modelFormat"]
    with pytest.raises(jsonschema.ValidationError):
        validate_kserve(isvc)


# Fields of KServe's ModelSpec that are not Kubernetes Container fields.
MODEL_ONLY_FIELDS = ("modelFormat", "runtime", "runtimeVersion", "protocolVersion", "storageUri", "storage")


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_kserve_containers_are_kubernetes_containers(version):
    runtime = only(KSERVE_DOCS, "ServingRuntime")
    model = only(KSERVE_DOCS, "InferenceService")["spec"]["predictor"]["model"]
    model_container = {k: v for k, v in model.items() if k not in MODEL_ONLY_FIELDS}
    containers = runtime["spec"]["containers"] + [{"name": "kserve-container-overrides", **model_container}]
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "ferroserve"}, "spec": {"containers": containers}}
    validate_kubernetes(pod, version)


@pytest.fixture
def k8s():
    """Fresh copies of the objects the consistency checks read."""
    docs = copy.deepcopy(K8S_DOCS)
    return {kind: only(docs, kind) for kind in {doc["kind"] for _, doc in docs}}


@pytest.fixture
def kserve():
    docs = copy.deepcopy(KSERVE_DOCS)
    return {kind: only(docs, kind) for kind in ("ServingRuntime", "InferenceService")}


def adapter_config(k8s):
    return k8s["ConfigMap"]["data"]["config.yaml"]


def test_deployment_is_consistent(k8s):
    pvc = k8s["PersistentVolumeClaim"]["metadata"]["name"]
    assert deployment_problems(k8s["Deployment"], pvc) == []


@pytest.mark.parametrize(
    "breakage",
    [
        "grace", "prestop", "probe_port", "probe_path", "unknown_flag", "switch_value",
        "missing_value", "port_flag", "mount", "uid", "scrape_port", "probe_scheme", "scrape_scheme",
        "secret_subpath", "secret_volume",
    ],
)  # fmt: skip
def test_deployment_check_catches(k8s, breakage):
    deployment = k8s["Deployment"]
    pod = deployment["spec"]["template"]["spec"]
    container = pod["containers"][0]
    args = container["args"]
    if breakage == "grace":
        pod["terminationGracePeriodSeconds"] = 35  # 5 s preStop + 30 s drain, no margin
    elif breakage == "prestop":
        del container["lifecycle"]
    elif breakage == "probe_port":
        container["readinessProbe"]["httpGet"]["port"] = "web"
    elif breakage == "probe_path":
        container["livenessProbe"]["httpGet"]["path"] = "/healthz"
    elif breakage == "unknown_flag":
        args += ["--model-store", "/models"]
    elif breakage == "switch_value":
        args += ["--strict-readiness=true"]
    elif breakage == "missing_value":
        args.insert(0, "--max-inflight")
    elif breakage == "port_flag":
        args += ["--grpc-port", "9000"]
    elif breakage == "mount":
        container["volumeMounts"][0]["mountPath"] = "/models-elsewhere"
    elif breakage == "uid":
        pod["securityContext"]["runAsUser"] = 1000
    elif breakage == "scrape_port":
        deployment["spec"]["template"]["metadata"]["annotations"]["prometheus.io/port"] = "8000"
    elif breakage == "probe_scheme":
        del container["readinessProbe"]["httpGet"]["scheme"]
    elif breakage == "scrape_scheme":
        del deployment["spec"]["template"]["metadata"]["annotations"]["prometheus.io/scheme"]
    elif breakage == "secret_subpath":
        tls = next(m for m in container["volumeMounts"] if m["name"] == "tls")
        tls["mountPath"], tls["subPath"] = "/etc/ferroserve/tls/tls.crt", "tls.crt"
    elif breakage == "secret_volume":
        volume = next(v for v in pod["volumes"] if v["name"] == "auth-keys")
        volume["emptyDir"] = {}
        del volume["secret"]
    pvc = k8s["PersistentVolumeClaim"]["metadata"]["name"]
    assert deployment_problems(deployment, pvc) != []


def test_service_pdb_hpa_are_consistent(k8s):
    assert service_problems(k8s["Service"], k8s["Deployment"]) == []
    assert pdb_problems(k8s["PodDisruptionBudget"], k8s["Deployment"], k8s["HorizontalPodAutoscaler"]) == []
    assert hpa_problems(k8s["HorizontalPodAutoscaler"], k8s["Deployment"], adapter_config(k8s)) == []


def test_service_pdb_hpa_checks_catch(k8s):
    deployment, hpa = k8s["Deployment"], k8s["HorizontalPodAutoscaler"]
    service = copy.deepcopy(k8s["Service"])
    service["spec"]["ports"][1]["targetPort"] = "grpc-web"
    assert service_problems(service, deployment) != []
    pdb = copy.deepcopy(k8s["PodDisruptionBudget"])
    pdb["spec"]["selector"]["matchLabels"]["app.kubernetes.io/name"] = "triton"
    assert pdb_problems(pdb, deployment, hpa) != []
    broken = copy.deepcopy(hpa)
    broken["spec"]["scaleTargetRef"]["name"] = "ferroserve-old"
    assert hpa_problems(broken, deployment, adapter_config(k8s)) != []
    broken = copy.deepcopy(hpa)
    broken["spec"]["metrics"][1]["pods"]["metric"]["name"] = "ferroserve_inflight_request"
    assert hpa_problems(broken, deployment, adapter_config(k8s)) != []
    broken = copy.deepcopy(hpa)
    broken["spec"]["minReplicas"] = 1
    assert hpa_problems(broken, deployment, adapter_config(k8s)) != []


def test_kserve_is_consistent(kserve):
    assert runtime_problems(kserve["ServingRuntime"]) == []
    assert isvc_problems(kserve["InferenceService"], kserve["ServingRuntime"]) == []


def test_kserve_checks_catch(kserve):
    runtime, isvc = kserve["ServingRuntime"], kserve["InferenceService"]
    broken = copy.deepcopy(runtime)
    broken["spec"]["containers"][0]["args"] = ["--model-repository", "/mnt/models/mlp", "--exit-timeout-secs", "30"]
    assert runtime_problems(broken) != []
    broken = copy.deepcopy(runtime)
    broken["spec"]["containers"][0]["readinessProbe"]["httpGet"]["port"] = 8000
    assert runtime_problems(broken) != []
    broken = copy.deepcopy(runtime)
    broken["spec"]["containers"][0]["lifecycle"] = {"preStop": {"exec": {"command": ["sleep", "5"]}}}
    assert runtime_problems(broken) != []
    broken = copy.deepcopy(isvc)
    del broken["spec"]["predictor"]["model"]["protocolVersion"]
    assert isvc_problems(broken, runtime) != []
    broken = copy.deepcopy(isvc)
    broken["spec"]["predictor"]["model"]["ports"] = [{"name": "h2c", "containerPort": 8001, "protocol": "TCP"}]
    assert isvc_problems(broken, runtime) != []
    broken["spec"]["predictor"]["model"]["ports"][0]["containerPort"] = 9000
    assert isvc_problems(broken, runtime) == []


def test_probe_paths_are_documented():
    text = README.read_text()
    assert READY_PATH in text and LIVE_PATH in text


# --------------------------------------------------------------------------- models from a bucket

OBJECT_STORAGE_DOCS = load_documents(K8S_DIR / "object-storage")


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_object_storage_example_validates(version):
    assert [doc["kind"] for _, doc in OBJECT_STORAGE_DOCS] == ["Deployment"]
    for _, doc in OBJECT_STORAGE_DOCS:
        validate_kubernetes(doc, version)


def object_storage_problems(deployment, main_deployment):
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    ports = {p["name"]: p["containerPort"] for p in container.get("ports", [])}
    values, problems = server_problems(
        container,
        {"--http-port": ports.get("http"), "--grpc-port": ports.get("grpc"), "--metrics-port": ports.get("metrics")},
    )
    repository = flag(values, "--model-repository")
    if not repository.startswith(("s3://", "gs://", "az://")):
        problems.append(f"--model-repository {repository} is not a bucket URL")
    mounts = {m["mountPath"]: m for m in container.get("volumeMounts", [])}
    cache = mounts.get(flag(values, "--repository-cache-dir"))
    volumes = {v["name"]: v for v in pod.get("volumes", [])}
    if cache is None or cache.get("readOnly") or "emptyDir" not in volumes.get(cache["name"], {}):
        problems.append("--repository-cache-dir must be a writable emptyDir mount (the root filesystem is read-only)")
    if not pod.get("serviceAccountName"):
        problems.append("a ServiceAccount carries the workload identity that reads the bucket")
    if flag(values, "--model-control-mode") != "poll":
        problems.append("--model-control-mode poll: uploading to the bucket deploys")
    if deployment["spec"]["template"]["metadata"]["labels"] != main_deployment["spec"]["template"]["metadata"]["labels"]:
        problems.append("the pods must carry the labels the Service, PDB and HPA select")
    return problems


def test_object_storage_example_reads_a_bucket_into_a_writable_cache(k8s):
    deployment = only(copy.deepcopy(OBJECT_STORAGE_DOCS), "Deployment")
    assert object_storage_problems(deployment, k8s["Deployment"]) == []


def test_object_storage_checks_catch(k8s):
    deployment = only(copy.deepcopy(OBJECT_STORAGE_DOCS), "Deployment")
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    args = container["args"]
    args[args.index("--model-repository") + 1] = "/models"
    container["volumeMounts"][0]["readOnly"] = True
    problems = object_storage_problems(deployment, k8s["Deployment"])
    assert any("not a bucket URL" in p for p in problems), problems
    assert any("writable emptyDir" in p for p in problems), problems


def test_kserve_object_storage_example_validates():
    (doc,) = [doc for _, doc in load_documents(KSERVE_DIR / "object-storage")]
    validate_kserve(doc)
    predictor = doc["spec"]["predictor"]
    assert predictor["model"]["storageUri"].startswith("s3://")
    assert predictor["model"]["runtime"] == only(KSERVE_DOCS, "ServingRuntime")["metadata"]["name"]
    assert predictor["serviceAccountName"], "the storage initializer reads the bucket as this ServiceAccount"
