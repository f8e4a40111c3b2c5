"""docker/k8s/: every manifest valid against Kubernetes' own schemas (kubernetes-validate,
strict), the overlays rendered as `kubectl apply -k` would, and consistent with the code."""

from __future__ import annotations

import copy
import importlib
import re
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from brokers.amqp.settings import AmqpSettings
from brokers.kafka.settings import KafkaSettings
from pixfleet.blobs.s3_settings import S3Settings
from tests.deploy.manifests import (
    K8S,
    K8S_BASE,
    OVERLAYS,
    Doc,
    cli_command,
    console_scripts,
    containers,
    dockerfile_instructions,
    env_of,
    find,
    k8s_files,
    kustomization,
    load_documents,
    options_of,
    pyproject,
    rendered,
    unknown_options,
    worker_stop_seconds,
)

#: Oldest Kubernetes these manifests are meant for (PodDisruptionBudget policy/v1, probes on
#: named ports, resourceFieldRef) and the newest schema kubernetes-validate bundles.
OLDEST = "1.29.0"
SHUTDOWN_MARGIN = 10


def _validator() -> ModuleType:
    return importlib.import_module("kubernetes_validate.utils")  # ships no type information


def _versions() -> list[str]:
    return [OLDEST, str(_validator().latest_version())]


def _is_core(doc: Doc) -> bool:
    """Kinds Kubernetes itself defines (KEDA's and Kustomize's are checked elsewhere)."""
    return not str(doc["apiVersion"]).startswith(("keda.sh/", "kustomize.config.k8s.io/"))


def _manifests() -> list[tuple[Path, Doc]]:
    return [
        (path, doc)
        for path in k8s_files()
        if path.name != "kustomization.yaml"
        for doc in load_documents(path)
    ]


def _deployments(docs: list[Doc]) -> dict[str, Doc]:
    return {d["metadata"]["name"]: d for d in docs if d["kind"] == "Deployment"}


def _container(deployment: Doc) -> Doc:
    (only,) = containers(deployment)
    return only


def _option(argv: list[str], name: str) -> str:
    return argv[argv.index(name) + 1]


def _base() -> list[Doc]:
    return rendered(K8S_BASE)


def _worker(docs: list[Doc]) -> Doc:
    (worker,) = [d for n, d in _deployments(docs).items() if "worker" in n]
    return worker


def _ingress_deployment(docs: list[Doc]) -> Doc:
    return find(docs, "Deployment", "pixfleet-ingress")


# -- schemas ---------------------------------------------------------------------------------


@pytest.mark.parametrize("version", _versions())
def test_every_manifest_validates_strictly_against_kubernetes(version: str) -> None:
    validator = _validator()
    checked = 0
    for _path, doc in _manifests():
        if _is_core(doc):
            validator.validate(doc, version, True)  # raises with the path of the first error
            checked += 1
    assert checked >= 9


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_each_rendered_overlay_validates_too(overlay: str) -> None:
    validator = _validator()
    for doc in rendered(K8S / overlay):
        if _is_core(doc):
            validator.validate(doc, OLDEST, True)


def test_strict_validation_catches_a_misspelt_field() -> None:
    worker = copy.deepcopy(_worker(_base()))
    worker["spec"]["template"]["spec"]["terminationGracePeriodSecond"] = 45
    with pytest.raises(Exception, match="terminationGracePeriodSecond"):
        _validator().validate(worker, OLDEST, True)


def test_only_known_kinds_outside_kubernetes() -> None:
    others = {(d["apiVersion"], d["kind"]) for _, d in _manifests() if not _is_core(d)}
    assert others == {
        ("keda.sh/v1alpha1", "ScaledObject"),
        ("keda.sh/v1alpha1", "TriggerAuthentication"),
    }


# -- kustomizations --------------------------------------------------------------------------


def test_every_manifest_file_belongs_to_a_kustomization() -> None:
    listed: set[Path] = set()
    for directory in (K8S_BASE, *(K8S / o for o in OVERLAYS)):
        for entry in kustomization(directory)["resources"]:
            path = (directory / entry).resolve()
            assert path.exists(), f"{directory.name}: {entry} does not exist"
            listed.add(path)
    files = {p.resolve() for p in k8s_files() if p.name != "kustomization.yaml"}
    assert files <= listed, f"not in any kustomization: {sorted(files - listed)}"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_each_overlay_is_the_base_plus_its_scaler(overlay: str) -> None:
    docs = rendered(K8S / overlay)
    base_kinds = sorted((d["kind"], d["metadata"]["name"]) for d in _base())
    kinds = sorted((d["kind"], d["metadata"]["name"]) for d in docs)
    assert set(base_kinds) < set(kinds)
    assert len(kinds) == len(set(kinds)), "a resource is defined twice"
    assert [d for d in docs if d["kind"] == "ScaledObject"]
    assert {d["metadata"].get("namespace") for d in docs if d["kind"] != "Namespace"} == {
        find(docs, "Namespace")["metadata"]["name"]
    }


# -- the containers --------------------------------------------------------------------------


def test_commands_are_console_scripts_with_options_the_clis_have() -> None:
    for deployment in _deployments(_base()).values():
        argv = _container(deployment)["command"]
        assert argv[0] in console_scripts()
        assert not unknown_options(argv), argv


def test_ingress_probes_healthz_and_readyz_on_the_port_it_serves() -> None:
    deployment = _ingress_deployment(_base())
    container = _container(deployment)
    (port,) = container["ports"]
    assert int(_option(container["command"], "--port")) == port["containerPort"]
    assert _option(container["command"], "--host") == "0.0.0.0"
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": port["name"]}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": port["name"]}
    assert container["startupProbe"]["httpGet"]["port"] == port["name"]


def test_worker_probes_its_named_metrics_port_9000() -> None:
    container = _container(_worker(_base()))
    (port,) = container["ports"]
    assert port == {"name": "metrics", "containerPort": 9000, "protocol": "TCP"}
    assert _option(container["command"], "--metrics-port") == "9000"
    for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
        assert container[probe]["httpGet"] == {"path": "/healthz", "port": "metrics"}, probe


def test_worker_grace_period_covers_the_drain_timeout() -> None:
    spec = _worker(_base())["spec"]["template"]["spec"]
    drain = worker_stop_seconds()
    assert spec["terminationGracePeriodSeconds"] >= drain + SHUTDOWN_MARGIN


def test_ingress_grace_period_covers_pre_stop_and_drain() -> None:
    spec = _ingress_deployment(_base())["spec"]["template"]["spec"]
    container = _container(_ingress_deployment(_base()))
    sleep = container["lifecycle"]["preStop"]["exec"]["command"]
    assert sleep[0] == "sleep"
    drain = float(options_of(cli_command(container["command"]))["--drain-timeout"].default)
    needed = float(sleep[1]) + drain + SHUTDOWN_MARGIN
    assert spec["terminationGracePeriodSeconds"] >= needed


def test_worker_concurrency_is_its_cpu_limit() -> None:
    container = _container(_worker(_base()))
    (env,) = [e for e in container["env"] if e["name"] == "PIXFLEET_CONCURRENCY"]
    field = env["valueFrom"]["resourceFieldRef"]
    assert field == {"containerName": container["name"], "resource": "limits.cpu", "divisor": "1"}
    assert _option(container["command"], "--concurrency") == "$(PIXFLEET_CONCURRENCY)"
    resources = container["resources"]
    assert resources["requests"] == resources["limits"], "Guaranteed QoS for workers"


def test_every_container_has_requests_and_limits() -> None:
    for name, deployment in _deployments(_base()).items():
        resources = _container(deployment)["resources"]
        for kind in ("requests", "limits"):
            assert set(resources[kind]) == {"cpu", "memory"}, f"{name} {kind}"


def test_pods_run_as_the_images_unprivileged_user_on_a_read_only_root() -> None:
    (user,) = [args for word, args in dockerfile_instructions() if word == "USER"]
    uid = int(user.split(":")[0])
    for name, deployment in _deployments(_base()).items():
        pod = deployment["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True, name
        assert pod["securityContext"]["runAsUser"] == uid, name
        assert pod["automountServiceAccountToken"] is False, name
        context = _container(deployment)["securityContext"]
        assert context == {
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "capabilities": {"drop": ["ALL"]},
        }, name
        mounts = {m["mountPath"] for m in _container(deployment)["volumeMounts"]}
        assert {"/tmp", "/var/lib/pixfleet"} <= mounts, name


def test_images_are_pinned_to_the_package_version() -> None:
    version = pyproject()["project"]["version"]
    images = kustomization(K8S_BASE)["images"]
    assert [i["newTag"] for i in images] == [version]
    for deployment in _deployments(_base()).values():
        name, _, tag = _container(deployment)["image"].rpartition(":")
        assert tag == version and name.endswith("pixfleet")


def test_every_deployment_has_a_disruption_budget_selecting_its_pods() -> None:
    docs = _base()
    budgets = [d for d in docs if d["kind"] == "PodDisruptionBudget"]
    for name, deployment in _deployments(docs).items():
        labels = deployment["spec"]["template"]["metadata"]["labels"]
        matching = [
            b for b in budgets if b["spec"]["selector"]["matchLabels"].items() <= labels.items()
        ]
        assert len(matching) == 1, name
        assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()


# -- service, ingress ------------------------------------------------------------------------


def test_service_and_ingress_reach_the_ingress_pods() -> None:
    docs = _base()
    deployment = _ingress_deployment(docs)
    service = find(docs, "Service")
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= labels.items()
    (port,) = service["spec"]["ports"]
    assert port["targetPort"] == _container(deployment)["ports"][0]["name"]
    ingress = find(docs, "Ingress")
    assert ingress["spec"]["ingressClassName"] == "nginx"
    (rule,) = ingress["spec"]["rules"]
    (path,) = rule["http"]["paths"]
    assert path["backend"]["service"] == {
        "name": service["metadata"]["name"],
        "port": {"name": port["name"]},
    }


def _size(text: str) -> int:
    match = re.fullmatch(r"(\d+)([kmg]?)", text.lower())
    assert match, f"not a size: {text!r}"
    number, unit = match.groups()
    return int(number) * {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3}[unit]


def test_ingress_annotations_stream_uploads_and_event_streams() -> None:
    notes = find(_base(), "Ingress")["metadata"]["annotations"]
    prefix = "nginx.ingress.kubernetes.io/"
    serve = options_of(cli_command(["uploader", "serve"]))
    assert _size(notes[prefix + "proxy-body-size"]) >= serve["--max-request-bytes"].default
    assert notes[prefix + "proxy-buffering"] == "off"  # SSE
    assert notes[prefix + "proxy-request-buffering"] == "off"  # uploads stream through
    assert int(notes[prefix + "proxy-read-timeout"]) >= serve["--request-timeout"].default
    assert int(notes[prefix + "proxy-send-timeout"]) >= serve["--request-timeout"].default


# -- configuration ---------------------------------------------------------------------------


def test_secrets_hold_placeholders_only() -> None:
    for path, doc in _manifests():
        if doc["kind"] != "Secret":
            continue
        for key, value in doc["stringData"].items():
            if re.search(r"PASSWORD|SECRET|ACCESS_KEY|host", key):
                assert "CHANGE-ME" in value, f"{path.name}: {key} is not a placeholder"
        assert "data" not in doc, "base64 data would hide what it holds"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_configured_urls_parse_with_pixfleets_own_parsers(
    overlay: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    docs = rendered(K8S / overlay)
    for deployment in _deployments(docs).values():
        env: dict[str, Any] = env_of(docs, _container(deployment))
        for key, value in env.items():
            monkeypatch.setenv(key, value)
        S3Settings.from_url(env["PIXFLEET_BLOBS"], env=env)
        broker = env["PIXFLEET_BROKER"]
        if overlay == "kafka":
            KafkaSettings.from_url(broker)
        else:
            settings = AmqpSettings.from_url(broker)
            assert settings.url.startswith(f"amqp://{env['PIXFLEET_AMQP_USER']}:")
