"""The Kubernetes manifests (deploy/, docs/deploy.md) and the images' Dockerfiles, checked offline in seconds.

Every overlay, and every component on the cpu overlay, is rendered by ``kubectl kustomize`` and each resource is
validated strictly (no unknown fields) against the schemas of one Kubernetes version bundled in
kubernetes-validate; then the properties the deployment relies on are asserted: both roles, hardened pods with
probes, the shared ReadWriteMany registry, disruption budgets and the autoscaler pointing at real pods, GPUs where
they belong, the vLLM tensor-parallel size set once, no token in any manifest, a termination grace above the drain.
The images cannot be built here, so their Dockerfiles are checked statically: what they COPY exists and reaches the
build context, what their ``python -c`` snippets import exists with the names and arity they use, and the packages
the server and its CLI import are installed.
"""

from __future__ import annotations

import ast
import functools
import importlib.util
import json
import os
import re
import shlex
import shutil
import socket
import subprocess
import tempfile
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from app.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
K8S_VERSION = "1.33"  # schemas bundled in kubernetes-validate (pinned in pyproject.toml); no network involved
OVERLAYS = sorted(path.parent.name for path in (DEPLOY / "overlays").glob("*/kustomization.yaml"))
COMPONENTS = sorted(path.parent.name for path in (DEPLOY / "components").glob("*/kustomization.yaml"))
# What is rendered: each overlay, and each component added to the cpu overlay (a component is used that way).
TARGETS = [f"overlays/{name}" for name in OVERLAYS] + [f"components/{name}" for name in COMPONENTS]
GPU_OVERLAYS = {"gpu", "vllm"}
IMAGE_UID = 10001  # the Dockerfile's fvsteer user (checked against it below)
# Shutdown after the drain, before the process exits (app/server.py: cutting short what is left may take 5 s, then
# uvicorn's timeout_graceful_shutdown=5), and stopping a vLLM that fvsteer started (app/engine/vllm_server.py:
# SIGTERM, 30 s, then SIGKILL and 10 s).
AFTER_DRAIN_S = 5 + 5
VLLM_STOP_S = 30 + 10
Resource = dict[str, Any]


# ---------------------------------------------------------------------------------------------------- rendering
def kustomize(path: Path) -> list[Resource]:
    done = subprocess.run(["kubectl", "kustomize", str(path)], capture_output=True, text=True, timeout=60,
                          check=False)
    assert done.returncode == 0, f"kubectl kustomize {path}:\n{done.stderr}"
    return [doc for doc in yaml.safe_load_all(done.stdout) if doc]


def compose(workdir: Path, resource: Path, components: list[Path] | None = None) -> Path:
    """A kustomization in ``workdir`` of ``resource`` plus ``components`` (relative paths: kustomize wants them)."""
    spec: dict[str, Any] = {"resources": [os.path.relpath(resource, workdir)]}
    if components:
        spec["components"] = [os.path.relpath(component, workdir) for component in components]
    (workdir / "kustomization.yaml").write_text(yaml.safe_dump(spec))
    return workdir


@functools.cache
def _render(target: str) -> str:
    kind, _ = target.split("/")
    if kind == "overlays":
        return yaml.safe_dump_all(kustomize(DEPLOY / target))
    with tempfile.TemporaryDirectory() as workdir:
        return yaml.safe_dump_all(kustomize(compose(Path(workdir), DEPLOY / "overlays" / "cpu", [DEPLOY / target])))


def render(target: str) -> list[Resource]:
    return [doc for doc in yaml.safe_load_all(_render(target)) if doc]  # a fresh copy for every test


def of_kind(resources: list[Resource], kind: str) -> list[Resource]:
    return [resource for resource in resources if resource["kind"] == kind]


def named(resources: list[Resource], kind: str, name: str) -> Resource:
    found = [resource for resource in of_kind(resources, kind) if resource["metadata"]["name"] == name]
    assert len(found) == 1, f"{kind}/{name}: {len(found)} found"
    return found[0]


def fvsteer_deployments(resources: list[Resource]) -> list[Resource]:
    return [deployment for deployment in of_kind(resources, "Deployment")
            if deployment["spec"]["template"]["metadata"]["labels"].get("app.kubernetes.io/name") == "fvsteer"]


def pod(deployment: Resource) -> Resource:
    return deployment["spec"]["template"]["spec"]


def main_container(deployment: Resource) -> Resource:
    containers = pod(deployment)["containers"]
    assert len(containers) == 1, deployment["metadata"]["name"]
    return containers[0]


def all_containers(deployment: Resource) -> Iterator[Resource]:
    yield from pod(deployment).get("initContainers", [])
    yield from pod(deployment)["containers"]


def effective_env(resources: list[Resource], container: Resource) -> dict[str, Any]:
    """The container's environment as the kubelet builds it: ConfigMaps (envFrom) first, ``env`` over them. A value
    from a Secret or the downward API stays its ``valueFrom`` mapping."""
    env: dict[str, Any] = {}
    for source in container.get("envFrom", []):
        assert "configMapRef" in source, "only ConfigMaps are read whole"
        env.update(named(resources, "ConfigMap", source["configMapRef"]["name"])["data"])
    for variable in container.get("env", []):
        env[variable["name"]] = variable["value"] if "value" in variable else variable["valueFrom"]
    return env


def settings_of(env: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> Settings:
    """fvsteer's settings from a container's environment (values from Secrets: placeholders)."""
    for name in list(os.environ):
        if name.startswith("FVSTEER_"):
            monkeypatch.delenv(name)
    for name, value in env.items():
        if name.startswith("FVSTEER_"):
            monkeypatch.setenv(name, value if isinstance(value, str) else "from-a-secret")
    return Settings()


def probe_path(probe: Resource) -> str:
    return str(probe["httpGet"]["path"])


def prestop_seconds(container: Resource) -> float:
    command = container.get("lifecycle", {}).get("preStop", {}).get("exec", {}).get("command")
    if command is None:
        return 0.0
    assert command[0] == "sleep", command
    return float(command[1])


# ---------------------------------------------------------------------------------------------------- validation
def test_the_overlays_docs_deploy_md_names_exist() -> None:
    assert {"cpu", "gpu", "vllm", "external-redis"} <= set(OVERLAYS)
    assert {"external-redis", "redis-persistence", "queue-depth-hpa"} <= set(COMPONENTS)


def test_the_validator_is_offline_and_strict(monkeypatch: pytest.MonkeyPatch) -> None:
    """The schemas are files of the package, validation opens no connection, and strict mode refuses unknown
    fields."""
    assert K8S_VERSION in {".".join(version.split(".")[:2]) for version in kubernetes_validate.utils.all_versions()}
    schemas = Path(kubernetes_validate.__file__).parent / "kubernetes-json-schema" / f"v{K8S_VERSION}.0-local-strict"
    assert (schemas / "deployment-apps-v1.json").is_file()

    def no_network(*args: object, **kwargs: object) -> None:
        raise AssertionError("kubernetes-validate tried to reach the network")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.setattr(socket, "create_connection", no_network)
    deployment = of_kind(render("overlays/cpu"), "Deployment")[0]
    assert kubernetes_validate.validate(deployment, K8S_VERSION, strict=True) == K8S_VERSION
    main_container(deployment)["readinesProbe"] = {}  # a typo a lenient schema would let through
    with pytest.raises(kubernetes_validate.ValidationError, match="readinesProbe"):
        kubernetes_validate.validate(deployment, K8S_VERSION, strict=True)


@pytest.mark.parametrize("target", TARGETS)
def test_every_resource_validates_strictly(target: str) -> None:
    resources = render(target)
    assert resources
    for resource in resources:
        where = f"{target}: {resource['kind']}/{resource['metadata']['name']}"
        try:
            version = kubernetes_validate.validate(resource, K8S_VERSION, strict=True)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(f"{where}: {'.'.join(map(str, exc.path))}: {exc.message}")
        except kubernetes_validate.SchemaNotFoundError as exc:
            pytest.fail(f"{where}: {exc.message}")
        assert version == K8S_VERSION, where
        assert "namespace" not in resource["metadata"], f"{where}: the manifests are namespace-agnostic"


# ---------------------------------------------------------------------------------------------------- properties
@pytest.mark.parametrize("target", TARGETS)
def test_both_roles_run_with_their_role(target: str) -> None:
    resources = render(target)
    roles = {deployment["metadata"]["name"]: effective_env(resources, main_container(deployment)).get("FVSTEER_ROLE")
             for deployment in fvsteer_deployments(resources)}
    assert roles == {"fvsteer-api": "api", "fvsteer-worker": "worker"}
    for deployment in fvsteer_deployments(resources):
        assert main_container(deployment).get("command") is None, "the image's CMD, `fvsteer serve`, runs"


@pytest.mark.parametrize("target", TARGETS)
def test_every_pod_is_hardened_and_sized(target: str) -> None:
    resources = render(target)
    for deployment in of_kind(resources, "Deployment"):
        name = deployment["metadata"]["name"]
        spec = pod(deployment)
        assert spec["automountServiceAccountToken"] is False, name
        assert spec["enableServiceLinks"] is False, f"{name}: service links inject FVSTEER_* variables"
        security = spec["securityContext"]
        assert security["runAsNonRoot"] is True, name
        assert security["runAsUser"] != 0, name
        assert security["seccompProfile"]["type"] == "RuntimeDefault", name
        if deployment in fvsteer_deployments(resources):
            assert security["runAsUser"] == security["runAsGroup"] == IMAGE_UID, name
        for container in all_containers(deployment):
            where = f"{name}/{container['name']}"
            context = container["securityContext"]
            assert context["allowPrivilegeEscalation"] is False, where
            assert context["readOnlyRootFilesystem"] is True, where
            assert context["capabilities"]["drop"] == ["ALL"], where
            assert "add" not in context["capabilities"], where
            for bound in ("requests", "limits"):
                assert {"cpu", "memory"} <= set(container["resources"][bound]), f"{where}: {bound}"
            assert ":" in container["image"], f"{where}: a tagged image"


@pytest.mark.parametrize("target", TARGETS)
def test_every_container_has_probes_on_fvsteers_health_routes(target: str) -> None:
    resources = render(target)
    for deployment in of_kind(resources, "Deployment"):
        container = main_container(deployment)
        assert {"readinessProbe", "livenessProbe"} <= set(container), deployment["metadata"]["name"]
    for deployment in fvsteer_deployments(resources):
        container = main_container(deployment)
        where = deployment["metadata"]["name"]
        assert probe_path(container["livenessProbe"]) == "/healthz", where
        assert probe_path(container["readinessProbe"]) == "/readyz", where
        startup = container["startupProbe"]
        assert probe_path(startup) == "/readyz", where
        # Generous: a first start may dequantize a model (and with vLLM, compile it) before /readyz turns 200.
        assert startup["periodSeconds"] * startup["failureThreshold"] >= 600, where
        port = int(effective_env(resources, container)["FVSTEER_PORT"])
        ports = {port["name"]: port["containerPort"] for port in container["ports"]}
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            assert ports[container[probe]["httpGet"]["port"]] == port, f"{where}: {probe}"


@pytest.mark.parametrize("target", TARGETS)
def test_the_settings_parse_and_every_writable_path_is_a_volume(target: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """fvsteer accepts the environment it is given; the paths it writes (cache, HOME, /tmp) are volumes, since the
    root filesystem is read-only; the registry is the shared ReadWriteMany claim at FVSTEER_VECTORS_DIR."""
    resources = render(target)
    claims = {claim["metadata"]["name"]: claim for claim in of_kind(resources, "PersistentVolumeClaim")}
    fields = set(Settings.model_fields)
    for deployment in fvsteer_deployments(resources):
        container = main_container(deployment)
        where = deployment["metadata"]["name"]
        env = effective_env(resources, container)
        unknown = {name for name in env if name.startswith("FVSTEER_")} - {f"FVSTEER_{f.upper()}" for f in fields}
        assert not unknown, f"{where}: not fvsteer settings: {unknown}"
        settings = settings_of(env, monkeypatch)
        volumes = {volume["name"]: volume for volume in pod(deployment)["volumes"]}
        mounts = {Path(mount["mountPath"]): volumes[mount["name"]] for mount in container["volumeMounts"]}

        def volume_at(path: Path, mounts: dict[Path, Resource] = mounts) -> Resource | None:
            holders = [mount for mount in mounts if path == mount or mount in path.parents]
            return mounts[max(holders, key=lambda mount: len(mount.parts))] if holders else None

        registry = mounts.get(settings.vectors_dir)
        assert registry is not None and "persistentVolumeClaim" in registry, f"{where}: registry at vectors_dir"
        claim = claims[registry["persistentVolumeClaim"]["claimName"]]
        assert claim["spec"]["accessModes"] == ["ReadWriteMany"], where
        for path in (settings.cache_dir, Path(env["HOME"]), Path("/tmp"), Path(env["HF_HOME"])):
            volume = volume_at(path)
            assert volume is not None and "emptyDir" in volume, f"{where}: {path} is not on a per-pod volume"
        assert settings.host == "0.0.0.0", where


@pytest.mark.parametrize("target", TARGETS)
def test_disruption_budgets_and_services_select_existing_pods(target: str) -> None:
    resources = render(target)
    pods = {deployment["metadata"]["name"]: deployment["spec"]["template"]["metadata"]["labels"]
            for deployment in of_kind(resources, "Deployment")}

    def selected(selector: dict[str, str]) -> set[str]:
        return {name for name, labels in pods.items() if selector.items() <= labels.items()}

    covered = set()
    for budget in of_kind(resources, "PodDisruptionBudget"):
        matched = selected(budget["spec"]["selector"]["matchLabels"])
        assert len(matched) == 1, f"{budget['metadata']['name']} selects {matched}"
        assert budget["spec"].get("maxUnavailable", 0) >= 1, "a budget must never block node drains"
        covered |= matched
    assert {"fvsteer-api", "fvsteer-worker"} <= covered
    for service in of_kind(resources, "Service"):
        matched = selected(service["spec"]["selector"])
        assert len(matched) == 1, f"{service['metadata']['name']} selects {matched}"
        container = main_container(named(resources, "Deployment", matched.pop()))
        names = {port["name"] for port in container["ports"]}
        for port in service["spec"]["ports"]:
            assert port["targetPort"] in names, service["metadata"]["name"]
    for deployment in of_kind(resources, "Deployment"):
        assert deployment["spec"]["selector"]["matchLabels"].items() <= pods[deployment["metadata"]["name"]].items()


@pytest.mark.parametrize("target", TARGETS)
def test_the_autoscaler_targets_the_api_deployment(target: str) -> None:
    resources = render(target)
    (hpa,) = of_kind(resources, "HorizontalPodAutoscaler")
    target_ref = hpa["spec"]["scaleTargetRef"]
    assert (target_ref["apiVersion"], target_ref["kind"], target_ref["name"]) == ("apps/v1", "Deployment",
                                                                                  "fvsteer-api")
    api = named(resources, "Deployment", "fvsteer-api")
    assert "replicas" not in api["spec"], "the HPA owns the api's replica count"
    assert 1 <= hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"]
    for metric in hpa["spec"]["metrics"]:
        if metric["type"] == "Resource":  # a utilisation is a share of the request: there must be one
            assert metric["resource"]["name"] in main_container(api)["resources"]["requests"]
        else:  # the custom metric is the gauge app/api/metrics.py exports for the generation queue
            assert metric["type"] == "Pods"
            assert metric["pods"]["metric"]["name"] == "fvsteer_queue_depth"
            assert '"fvsteer_queue_depth"' in (ROOT / "app/api/metrics.py").read_text()


@pytest.mark.parametrize("target", TARGETS)
def test_gpus_only_in_the_gpu_overlays(target: str) -> None:
    resources = render(target)
    gpu = target.split("/")[1] in GPU_OVERLAYS and target.startswith("overlays/")
    for deployment in fvsteer_deployments(resources):
        container = main_container(deployment)
        where = deployment["metadata"]["name"]
        gpus = int(container["resources"]["limits"].get("nvidia.com/gpu", 0))
        device = effective_env(resources, container)["FVSTEER_DEVICE"]
        if gpu:
            assert gpus >= 1, where
            assert device.startswith("cuda"), where
            assert pod(deployment)["nodeSelector"] and pod(deployment)["tolerations"], where
        else:
            assert gpus == 0 and device == "cpu", where
    for deployment in of_kind(resources, "Deployment"):
        if deployment not in fvsteer_deployments(resources):
            assert "nvidia.com/gpu" not in main_container(deployment)["resources"]["limits"]


def vllm_shape(resources: list[Resource], monkeypatch: pytest.MonkeyPatch) -> tuple[int, int]:
    """(the tensor-parallel size in vLLM's arguments, the GPUs of an api replica) of the vllm overlay."""
    api = main_container(named(resources, "Deployment", "fvsteer-api"))
    settings = settings_of(effective_env(resources, api), monkeypatch)
    assert settings.backend == "vllm"
    args = settings.vllm_args
    assert args.count("--tensor-parallel-size") == 1, args
    return int(args[args.index("--tensor-parallel-size") + 1]), int(api["resources"]["limits"]["nvidia.com/gpu"])


def test_the_vllm_overlay_gives_each_api_replica_a_gpu_per_tensor_parallel_rank(
        monkeypatch: pytest.MonkeyPatch) -> None:
    resources = render("overlays/vllm")
    shape = yaml.safe_load((DEPLOY / "overlays/vllm/tensor-parallel.yaml").read_text())
    size = int(shape["data"]["tensor-parallel-size"])
    assert vllm_shape(resources, monkeypatch) == (size, size)
    assert not [r for r in of_kind(resources, "ConfigMap") if r["metadata"]["name"] == "vllm-shape"], "local only"
    worker = main_container(named(resources, "Deployment", "fvsteer-worker"))
    assert settings_of(effective_env(resources, worker), monkeypatch).backend == "hf"  # jobs: the HF model
    assert int(worker["resources"]["limits"]["nvidia.com/gpu"]) == 1
    api = named(resources, "Deployment", "fvsteer-api")
    assert any(volume.get("emptyDir", {}).get("medium") == "Memory" and mount["mountPath"] == "/dev/shm"
               for volume in pod(api)["volumes"] for mount in main_container(api)["volumeMounts"]
               if mount["name"] == volume["name"]), "tensor-parallel workers need a /dev/shm larger than 64 MiB"
    images = {container["image"].split(":")[0] for container in all_containers(api)}
    assert images == {"fvsteer-vllm"}, "the api runs the vLLM image (docker/Dockerfile.vllm)"


def test_the_tensor_parallel_size_is_set_in_one_place(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    copied = tmp_path / "deploy"
    shutil.copytree(DEPLOY, copied)
    shape = copied / "overlays/vllm/tensor-parallel.yaml"
    text = shape.read_text()
    assert text.count('tensor-parallel-size: "2"') == 1
    shape.write_text(text.replace('tensor-parallel-size: "2"', 'tensor-parallel-size: "4"'))
    assert vllm_shape(kustomize(copied / "overlays/vllm"), monkeypatch) == (4, 4)


@pytest.mark.parametrize("target", TARGETS)
def test_no_manifest_carries_a_secret(target: str) -> None:
    resources = render(target)
    assert not of_kind(resources, "Secret"), "Secrets are created by the user (docs/deploy.md), never rendered"
    for deployment in of_kind(resources, "Deployment"):
        for container in all_containers(deployment):
            env = effective_env(resources, container)
            for name, value in env.items():
                if re.search(r"TOKEN|PASSWORD|SECRET", name):
                    assert isinstance(value, dict) and "secretKeyRef" in value, f"{name} is a literal"
                if name == "FVSTEER_REDIS_URL" and isinstance(value, str):
                    assert "@" not in value, "a Redis URL with credentials belongs in a Secret"
    api = main_container(named(resources, "Deployment", "fvsteer-api"))
    token = effective_env(resources, api)["FVSTEER_ADMIN_TOKEN"]
    assert token == {"secretKeyRef": {"name": "fvsteer-admin", "key": "token"}}
    worker = main_container(named(resources, "Deployment", "fvsteer-worker"))
    assert "FVSTEER_ADMIN_TOKEN" not in effective_env(resources, worker), "a worker serves no admin route"


def test_no_kustomization_generates_a_secret() -> None:
    for path in DEPLOY.rglob("kustomization.yaml"):
        assert "secretGenerator" not in yaml.safe_load(path.read_text()), path


@pytest.mark.parametrize("target", TARGETS)
def test_termination_grace_outlasts_the_drain(target: str, monkeypatch: pytest.MonkeyPatch) -> None:
    resources = render(target)
    for deployment in fvsteer_deployments(resources):
        container = main_container(deployment)
        settings = settings_of(effective_env(resources, container), monkeypatch)
        needed = prestop_seconds(container) + settings.shutdown_grace_s + AFTER_DRAIN_S
        if settings.backend == "vllm" and settings.role != "worker" and settings.vllm_url is None:
            needed += VLLM_STOP_S
        grace = pod(deployment)["terminationGracePeriodSeconds"]
        assert grace > needed, f"{deployment['metadata']['name']}: {grace} s ≤ {needed} s"
        assert grace > settings.shutdown_grace_s


@pytest.mark.parametrize("target", TARGETS)
def test_redis_is_the_bundled_service_or_a_secret(target: str) -> None:
    resources = render(target)
    services = {service["metadata"]["name"]: service for service in of_kind(resources, "Service")}
    external = target.endswith("external-redis")
    for deployment in fvsteer_deployments(resources):
        url = effective_env(resources, main_container(deployment))["FVSTEER_REDIS_URL"]
        if external:
            assert url == {"secretKeyRef": {"name": "fvsteer-redis", "key": "url"}}
            continue
        match = re.fullmatch(r"redis://([a-z0-9-]+):(\d+)/\d+", url)
        assert match, url
        service = services[match.group(1)]
        assert int(match.group(2)) in {port["port"] for port in service["spec"]["ports"]}
    bundled = [deployment for deployment in of_kind(resources, "Deployment")
               if deployment["metadata"]["name"] == "fvsteer-redis"]
    assert (not bundled) if external else len(bundled) == 1
    for redis in bundled:
        args = main_container(redis)["args"]
        # Jobs and their records must never be evicted to make room (redis.yaml).
        assert args[args.index("--maxmemory-policy") + 1] == "noeviction"


# ---------------------------------------------------------------------------------------------------- the seed
def seed_script(deployment: Resource) -> tuple[str, dict[str, str]]:
    (seed,) = [container for container in pod(deployment)["initContainers"] if container["name"] == "seed"]
    assert seed["command"][:2] == ["sh", "-c"]
    return seed["command"][2], {variable["name"]: variable.get("value", "") for variable in seed["env"]}


def run_seed(script: str, **paths: Path) -> None:
    env = {"PATH": os.environ["PATH"], "POD_NAME": "fvsteer-api-0", **{name: str(path) for name, path in paths.items()}}
    done = subprocess.run(["sh", "-c", script], env=env, capture_output=True, text=True, timeout=30, check=False)
    assert done.returncode == 0, done.stderr


def test_the_seed_links_the_baked_model_and_seeds_a_new_registry_once(tmp_path: Path) -> None:
    resources = render("overlays/cpu")
    api, worker = (named(resources, "Deployment", name) for name in ("fvsteer-api", "fvsteer-worker"))
    script, env = seed_script(api)
    assert seed_script(worker) == (script, env), "both roles seed alike: either may start first"
    dockerfile = dockerfile_env(ROOT / "Dockerfile")
    assert env["SEED_IMAGE_CACHE"] == dockerfile["FVSTEER_CACHE_DIR"]
    assert env["SEED_IMAGE_VECTORS"] == dockerfile["FVSTEER_VECTORS_DIR"]

    image_cache, image_vectors = tmp_path / "image-cache", tmp_path / "image-vectors"
    (image_cache / "models/smollm2-abc").mkdir(parents=True)
    (image_cache / "models/smollm2-abc/config.json").write_text("{}")
    (image_vectors / "smollm2").mkdir(parents=True)
    (image_vectors / "smollm2/antonym.safetensors").write_bytes(b"vector")
    (image_vectors / "README.md").write_text("registry")
    cache, registry = tmp_path / "cache", tmp_path / "registry"
    registry.mkdir()
    paths = {"SEED_IMAGE_CACHE": image_cache, "SEED_IMAGE_VECTORS": image_vectors, "SEED_REGISTRY": registry,
             "FVSTEER_CACHE_DIR": cache}

    run_seed(script, **paths)
    link = cache / "models/smollm2-abc"
    assert link.is_symlink() and (link / "config.json").read_text() == "{}"
    assert (registry / "smollm2/antonym.safetensors").read_bytes() == b"vector"
    assert (registry / "README.md").read_text() == "registry"
    assert not list(registry.rglob("*.tmp")), "no staging file is left behind"

    (registry / "smollm2/antonym.safetensors").unlink()  # an admin deletes a starter vector
    (cache / "models/other").mkdir()  # a model the server dequantized itself
    run_seed(script, **paths)  # the pod restarts
    assert not (registry / "smollm2/antonym.safetensors").exists(), "a deleted vector stays deleted"
    assert link.is_symlink() and (cache / "models/other").is_dir()


# ---------------------------------------------------------------------------------------------------- Dockerfiles
DOCKERFILES = [ROOT / "Dockerfile", ROOT / "docker/Dockerfile.vllm"]
FIRST_PARTY = {"app": ROOT, "fvsteer_cli": ROOT, "fvsteer_client": ROOT / "sdk", "fvsteer_vllm": ROOT / "vllm_plugin"}


def instructions(dockerfile: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined as Docker joins them; comments dropped."""
    out: list[tuple[str, str]] = []
    pending = ""
    for line in dockerfile.read_text().splitlines():
        if not pending and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if line.endswith("\\"):
            pending += line[:-1]
            continue
        text = pending + line
        pending = ""
        keyword, _, rest = text.strip().partition(" ")
        out.append((keyword.upper(), rest.strip()))
    assert not pending, f"{dockerfile}: a continuation runs off the end"
    return out


def dockerfile_env(dockerfile: Path) -> dict[str, str]:
    env: dict[str, str] = {}
    for keyword, rest in instructions(dockerfile):
        if keyword == "ENV":
            for word in shlex.split(rest):
                name, _, value = word.partition("=")
                env[name] = value
    return env


def copies(dockerfile: Path) -> list[tuple[list[str], str]]:
    out = []
    for keyword, rest in instructions(dockerfile):
        if keyword == "COPY":
            words = [word for word in shlex.split(rest) if not word.startswith("--")]
            assert not any(word.startswith("--from") for word in shlex.split(rest)), "no multi-stage COPY here"
            out.append((words[:-1], words[-1]))
    return out


def dockerignored(path: str) -> bool:
    """Whether .dockerignore keeps ``path`` (relative, '/'-separated) out of the build context (last match wins)."""
    ignored = False
    for raw in (ROOT / ".dockerignore").read_text().splitlines():
        pattern = raw.strip()
        if not pattern or pattern.startswith("#"):
            continue
        negate = pattern.startswith("!")
        pattern = pattern.lstrip("!").strip("/")
        regex = re.escape(pattern).replace(r"\*\*/", "(.*/)?").replace(r"\*\*", ".*").replace(r"\*", "[^/]*")
        regex = regex.replace(r"\?", "[^/]")
        parts = path.strip("/").split("/")
        if any(re.fullmatch(regex, "/".join(parts[:end])) for end in range(1, len(parts) + 1)):
            ignored = not negate
    return ignored


def python_snippets(dockerfile: Path) -> list[tuple[str, str]]:
    """(interpreter, code) of every ``<python> -c CODE`` in a RUN."""
    out = []
    for keyword, rest in instructions(dockerfile):
        if keyword != "RUN":
            continue
        words = shlex.split(rest)
        for index, word in enumerate(words[:-2]):
            if word.endswith("python") and words[index + 1] == "-c":
                out.append((word, words[index + 2]))
    return out


def module_source(module: str) -> Path | None:
    top = module.split(".")[0]
    base = FIRST_PARTY[top] / Path(*module.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def top_level_definitions(source: Path) -> dict[str, ast.AST]:
    tree = ast.parse(source.read_text())
    names: dict[str, ast.AST] = {}
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names[node.name] = node
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names.update({(alias.asname or alias.name).split(".")[0]: node for alias in node.names})
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            names.update({target.id: node for target in targets if isinstance(target, ast.Name)})
    return names


def check_call(function: ast.FunctionDef, call: ast.Call) -> None:
    """The call binds to the function's parameters (counts and keyword names; no *args or **kwargs in the call)."""
    arguments = function.args
    positional = [arg.arg for arg in arguments.posonlyargs + arguments.args]
    required = positional[:len(positional) - len(arguments.defaults)]
    keywords = {keyword.arg for keyword in call.keywords}
    assert None not in keywords and not any(isinstance(arg, ast.Starred) for arg in call.args)
    assert len(call.args) <= len(positional) or arguments.vararg, f"{function.name}: too many arguments"
    bound = set(positional[:len(call.args)]) | keywords
    assert set(required) <= bound, f"{function.name}: missing {set(required) - bound}"
    names = set(positional) | {arg.arg for arg in arguments.kwonlyargs}
    assert keywords <= names or arguments.kwarg, f"{function.name}: unknown {keywords - names}"
    kw_required = {arg.arg for arg, default in zip(arguments.kwonlyargs, arguments.kw_defaults, strict=True)
                   if default is None}
    assert kw_required <= keywords, f"{function.name}: missing {kw_required - keywords}"


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda path: path.name)
def test_what_a_dockerfile_copies_exists_in_the_build_context(dockerfile: Path) -> None:
    sources = [source for found, _ in copies(dockerfile) for source in found]
    assert sources
    for source in sources:
        assert (ROOT / source).exists(), f"{dockerfile.name}: COPY {source}: no such path"
        assert not dockerignored(source), f"{dockerfile.name}: COPY {source}: excluded by .dockerignore"


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda path: path.name)
def test_what_a_dockerfiles_python_imports_exists(dockerfile: Path) -> None:
    snippets = python_snippets(dockerfile)
    assert snippets
    for interpreter, code in snippets:
        tree = ast.parse(code)
        functions: dict[str, ast.FunctionDef] = {}
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom):
                modules = [(node.module or "", [alias.name for alias in node.names])]
            elif isinstance(node, ast.Import):
                modules = [(alias.name, []) for alias in node.names]
            else:
                continue
            for module, names in modules:
                if module.split(".")[0] in FIRST_PARTY:
                    source = module_source(module)
                    assert source is not None, f"{dockerfile.name}: no module {module}"
                    defined = top_level_definitions(source)
                    for name in names:
                        assert name in defined, f"{dockerfile.name}: {module} has no {name}"
                        definition = defined[name]
                        if isinstance(definition, ast.FunctionDef):
                            functions[name] = definition
                elif interpreter == "python":  # the image's own Python: what .venv has, the image has
                    assert importlib.util.find_spec(module) is not None, f"{dockerfile.name}: no module {module}"
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in functions:
                check_call(functions[node.func.id], node)


def test_the_image_installs_every_package_the_server_and_its_cli_import() -> None:
    """pyproject's packages (app, fvsteer_cli: the `fvsteer` command of CMD) are copied beside pyproject.toml before
    `pip install`; the local distributions they import (the SDK; the vLLM plugin, imported by the vllm backend at
    import time) are copied and installed too."""
    dockerfile = ROOT / "Dockerfile"
    copied = {source.rstrip("/"): destination.rstrip("/") for found, destination in copies(dockerfile)
              for source in found}
    installed = {word for keyword, rest in instructions(dockerfile) if keyword == "RUN"
                 for command in rest.split("&&") if "pip install" in command for word in command.split()}
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    patterns = pyproject["tool"]["setuptools"]["packages"]["find"]["include"]
    packages = [path.parent.name for path in ROOT.glob("*/__init__.py")
                if any(re.fullmatch(pattern.replace("*", ".*"), path.parent.name) for pattern in patterns)]
    assert {"app", "fvsteer_cli"} <= set(packages)
    for package in packages:
        assert copied.get(package) == f"/tmp/src/{package}", f"{package}/ is not copied beside pyproject.toml"
    assert copied.get("pyproject.toml") == "/tmp/src"
    assert "/tmp/src" in installed

    used = set()
    for package in packages:
        for path in (ROOT / package).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.Import):
                    used |= {alias.name.split(".")[0] for alias in node.names}
                elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                    used.add(node.module.split(".")[0])
    local = {name: FIRST_PARTY[name] for name in used if FIRST_PARTY.get(name, ROOT) != ROOT}
    assert set(local) == {"fvsteer_client", "fvsteer_vllm"}
    for name, distribution in local.items():
        source = distribution.relative_to(ROOT).as_posix()
        destination = copied.get(source)
        assert destination is not None, f"{name} ({source}/) is not copied into the image"
        assert destination in installed, f"{name} ({source}/) is not installed"

    (command,) = [json.loads(rest) for keyword, rest in instructions(dockerfile) if keyword == "CMD"]
    module = pyproject["project"]["scripts"][command[0]].split(":")[0]
    assert module.split(".")[0] in packages


def test_the_image_user_is_the_pods_user() -> None:
    users = [rest for keyword, rest in instructions(ROOT / "Dockerfile") if keyword == "USER"]
    assert users[-1] == f"{IMAGE_UID}:{IMAGE_UID}"
    vllm_users = [rest for keyword, rest in instructions(ROOT / "docker/Dockerfile.vllm") if keyword == "USER"]
    assert vllm_users[-1] == f"{IMAGE_UID}:{IMAGE_UID}", "the vLLM image drops root again"
    env = dockerfile_env(ROOT / "docker/Dockerfile.vllm")
    resources = render("overlays/vllm")
    api = main_container(named(resources, "Deployment", "fvsteer-api"))
    assert effective_env(resources, api)["FVSTEER_VLLM_PYTHON"] == env["FVSTEER_VLLM_PYTHON"]
