"""docker/compose.yaml: valid against the Compose specification, and consistent with the code
and with the other deployment files (no Docker engine needed)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from importlib.resources import files
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from brokers.amqp.settings import AmqpSettings
from brokers.kafka.settings import KafkaSettings
from pixfleet.blobs.s3_settings import S3Settings
from tests.deploy.manifests import (
    COMPOSE_FILE,
    DOCKER,
    NGINX_CONF,
    REPO,
    Doc,
    cli_command,
    command_of,
    compose,
    compose_raw,
    console_scripts,
    duration,
    interpolate,
    options_of,
    pyproject,
    services,
    unknown_options,
    worker_stop_seconds,
)

#: Seconds a stop needs beyond the drain itself (cancel, give tasks back, close connections).
SHUTDOWN_MARGIN = 10.0
#: The variables `make compose-up BROKER=kafka` sets (read from the Makefile below).
MAKEFILE = REPO / "Makefile"


def _compose_schema() -> dict[str, Any]:
    vendored = files("check_jsonschema") / "builtin_schemas" / "vendor" / "compose-spec.json"
    schema: dict[str, Any] = json.loads(vendored.read_text(encoding="utf-8"))
    return schema


def _pixfleet_services() -> dict[str, Doc]:
    return {n: s for n, s in services().items() if s.get("image", "").startswith("pixfleet:")}


def _ingresses() -> dict[str, Doc]:
    return {n: s for n, s in services().items() if command_of(s)[:2] == ["uploader", "serve"]}


def _option(argv: list[str], name: str) -> str:
    return argv[argv.index(name) + 1]


def _kafka_env_from_makefile() -> dict[str, str]:
    text = MAKEFILE.read_text(encoding="utf-8")
    found = dict(re.findall(r"\b(COMPOSE_PROFILES|PIXFLEET_COMPOSE_BROKER)=([^\s)]+)", text))
    assert set(found) == {"COMPOSE_PROFILES", "PIXFLEET_COMPOSE_BROKER"}, found
    return found


# -- the specification -----------------------------------------------------------------------


def test_compose_file_validates_with_check_jsonschema_against_the_compose_spec() -> None:
    cli = Path(sys.executable).with_name("check-jsonschema")
    argv = [str(cli), "--builtin-schema", "vendor.compose-spec", str(COMPOSE_FILE)]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stdout + done.stderr


def test_the_schema_check_catches_a_misspelt_key() -> None:
    """The vendored schema is strict enough to matter: a typo in a service is an error."""
    validator = jsonschema.Draft202012Validator(_compose_schema())
    assert not list(validator.iter_errors(compose_raw()))
    broken = compose_raw()
    broken["services"]["worker"]["stop_grace_periods"] = "45s"
    assert list(validator.iter_errors(broken))


def test_every_variable_has_a_default_so_a_bare_compose_up_works() -> None:
    """`${NAME:?...}` would stop `make compose-up` on a fresh machine; defaults are local-only."""
    text = COMPOSE_FILE.read_text(encoding="utf-8")
    for match in re.finditer(r"\$\{([^}]*)\}", text):
        assert ":-" in match.group(1), f"${{{match.group(1)}}} has no default"
    assert compose()  # expands without error
    assert interpolate("${A:-x}/$${B}", {"A": ""}) == "x/${B}"


# -- health, stop periods --------------------------------------------------------------------


def test_every_long_running_service_has_a_healthcheck() -> None:
    for name, service in services().items():
        if service.get("restart") == "no":
            continue  # one-shot (below)
        check = service.get("healthcheck")
        assert check, f"{name} has no healthcheck"
        assert check["test"][0] in ("CMD", "CMD-SHELL"), f"{name}: {check['test']}"
        assert duration(check["timeout"]) < duration(check["interval"]) + 1, name


def test_one_shot_services_are_awaited_by_a_long_running_one() -> None:
    """`up --wait` treats an exited container as a failure unless a running service depends on
    it with service_completed_successfully (docker/compose#10596)."""
    all_services = services()
    one_shots = {n for n, s in all_services.items() if s.get("restart") == "no"}
    assert one_shots == {"minio-init"}
    for name in one_shots:
        waiters = [
            other
            for other, s in all_services.items()
            if s.get("depends_on", {}).get(name, {}).get("condition")
            == "service_completed_successfully"
        ]
        assert waiters, f"nothing waits for {name}"


def test_the_ingress_is_checked_on_readyz_and_everything_else_on_healthz() -> None:
    for name, service in _pixfleet_services().items():
        test = service["healthcheck"]["test"]
        assert test[:2] == ["CMD", "pixfleet-healthcheck"], name
        port = _option(command_of(service), "--port" if name in _ingresses() else "--metrics-port")
        path = "/readyz" if name in _ingresses() else "/healthz"
        assert test[2] == f"http://127.0.0.1:{port}{path}", name


def test_worker_stop_grace_period_covers_the_drain_timeout() -> None:
    drain = worker_stop_seconds()
    grace = duration(services()["worker"]["stop_grace_period"])
    assert grace >= drain + SHUTDOWN_MARGIN, f"{grace} s < drain {drain} s + {SHUTDOWN_MARGIN}"


def test_ingress_stop_grace_period_covers_its_drain_timeout() -> None:
    for name, service in _ingresses().items():
        argv = command_of(service)
        option = options_of(cli_command(argv))["--drain-timeout"]
        drain = float(
            _option(argv, "--drain-timeout") if "--drain-timeout" in argv else option.default
        )
        assert duration(service["stop_grace_period"]) >= drain + SHUTDOWN_MARGIN, name


def test_nginx_stop_grace_period_covers_its_worker_shutdown_timeout() -> None:
    match = re.search(r"^\s*worker_shutdown_timeout\s+(\S+);", NGINX_CONF.read_text(), re.M)
    assert match
    grace = duration(services()["nginx"]["stop_grace_period"])
    assert grace >= duration(match.group(1)) + 5


# -- the topology ----------------------------------------------------------------------------


def test_nginx_balances_over_every_ingress_replica_on_its_port() -> None:
    ingresses = _ingresses()
    assert len(ingresses) >= 2
    upstream = (DOCKER / "nginx-upstream.compose.conf").read_text(encoding="utf-8")
    servers = set(re.findall(r"^\s*server\s+(\S+)\s", upstream, re.M))
    expected = {f"{name}:{_option(command_of(s), '--port')}" for name, s in ingresses.items()}
    assert servers == expected
    for service in ingresses.values():
        assert _option(command_of(service), "--host") == "0.0.0.0"
    assert "upstream pixfleet_ingress" in upstream and "zone " in upstream  # `resolve` needs it


def test_nginx_mounts_its_config_and_both_includes_under_the_names_it_includes() -> None:
    nginx = services()["nginx"]
    mounts = dict(v.rsplit(":", 1)[0].split(":", 1) for v in nginx["volumes"])
    for source in mounts:
        assert (COMPOSE_FILE.parent / source).is_file(), source
    targets = {Path(t).name for t in mounts.values()}
    included = set(re.findall(r"^\s*include\s+(\S+);", NGINX_CONF.read_text(), re.M))
    assert included <= targets and mounts["./nginx.conf"] == "/etc/nginx/nginx.conf"


def test_workers_are_replicated_with_concurrency_equal_to_their_cpu_limit() -> None:
    worker = services()["worker"]
    argv = command_of(worker)
    assert argv[:2] == ["worker", "run"] and _option(argv, "--group") == "thumbs"
    assert worker["deploy"]["replicas"] >= 2
    cpus = float(worker["deploy"]["resources"]["limits"]["cpus"])
    assert int(_option(argv, "--concurrency")) == cpus


def test_pixfleet_services_run_console_scripts_with_options_the_clis_have() -> None:
    scripts = console_scripts()
    for name, service in _pixfleet_services().items():
        assert command_of(service)[0] in scripts, name
        assert not unknown_options(command_of(service)), name
        assert service["build"]["dockerfile"] == "docker/Dockerfile"
        assert (COMPOSE_FILE.parent / service["build"]["context"]).resolve() == REPO


def test_images_are_pinned_and_ours_carries_the_package_version() -> None:
    version = pyproject()["project"]["version"]
    for name, service in services().items():
        image = service["image"]
        repository, _, tag = image.rpartition(":")
        assert repository and tag and tag != "latest", f"{name}: {image}"
        if repository == "pixfleet":
            assert tag == version, f"{name}: {image}; pyproject says {version}"


# -- configuration: the URLs parse, the credentials match ------------------------------------


def test_blob_store_url_parses_and_names_the_bucket_minio_init_creates() -> None:
    all_services = services()
    for name, service in _pixfleet_services().items():
        env = service["environment"]
        settings = S3Settings.from_url(env["PIXFLEET_BLOBS"], env=env)
        assert settings.endpoint == "http://minio:9000" and settings.path_style, name
        assert settings.credentials is not None, name
        minio = all_services["minio"]["environment"]
        assert settings.credentials.access_key_id == minio["MINIO_ROOT_USER"]
        assert settings.credentials.secret_access_key == minio["MINIO_ROOT_PASSWORD"]
    made = command_of(all_services["minio-init"])
    assert made[0] == "mb" and made[-1] == f"local/{settings.bucket}"


def test_rabbitmq_url_parses_with_the_users_credentials_and_vhost(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    rabbit = services()["rabbitmq"]["environment"]
    for name, service in _pixfleet_services().items():
        env = service["environment"]
        for key, value in env.items():
            monkeypatch.setenv(key, value)
        settings = AmqpSettings.from_url(env["PIXFLEET_BROKER"])
        user, password = rabbit["RABBITMQ_DEFAULT_USER"], rabbit["RABBITMQ_DEFAULT_PASS"]
        assert settings.url.startswith(f"amqp://{user}:{password}@rabbitmq:5672/"), name
        assert settings.url.split("?")[0].endswith("/" + rabbit["RABBITMQ_DEFAULT_VHOST"]), name


def test_make_compose_up_broker_kafka_points_every_service_at_the_kafka_profile() -> None:
    env = _kafka_env_from_makefile()
    kafka = services(env)["kafka"]
    assert kafka["profiles"] == [env["COMPOSE_PROFILES"]]
    advertised = kafka["environment"]["KAFKA_ADVERTISED_LISTENERS"].split("//", 1)[1]
    for name, service in _pixfleet_services().items():
        settings = KafkaSettings.from_url(services(env)[name]["environment"]["PIXFLEET_BROKER"])
        assert settings.bootstrap == advertised, name
        assert service["depends_on"]["kafka"] == {
            "condition": "service_healthy",
            "required": False,
        }, name
    assert kafka["environment"]["KAFKA_PROCESS_ROLES"] == "broker,controller"  # KRaft
