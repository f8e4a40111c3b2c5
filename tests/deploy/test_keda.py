"""The KEDA objects of docker/k8s/{rabbitmq,kafka}: valid against a schema written from KEDA's
CRD fields (tests/deploy/schemas/keda.schema.json), aimed at the worker Deployment, and naming
exactly the queue, topic and consumer group pixfleet uses - read from brokers/names.py and from
the transports' own subscriptions, not retyped here."""

from __future__ import annotations

import copy
import json
from typing import Any
from urllib.parse import unquote, urlsplit

import jsonschema
import pytest

from brokers import names
from brokers.amqp.subscription import AmqpSubscription
from brokers.amqp.transport import AmqpTransport
from brokers.kafka.settings import KafkaSettings
from brokers.kafka.subscription import KafkaSubscription
from brokers.kafka.transport import KafkaTransport
from tests.deploy.manifests import K8S, OVERLAYS, SCHEMAS, Doc, containers, find, rendered


def _schema() -> dict[str, Any]:
    schema: dict[str, Any] = json.loads((SCHEMAS / "keda.schema.json").read_text())
    return schema


def _keda(docs: list[Doc]) -> list[Doc]:
    return [d for d in docs if str(d["apiVersion"]).startswith("keda.sh/")]


def _worker(docs: list[Doc]) -> Doc:
    (worker,) = [d for d in docs if d["kind"] == "Deployment" and "worker" in d["metadata"]["name"]]
    return worker


def _group(docs: list[Doc]) -> str:
    (container,) = containers(_worker(docs))
    argv: list[str] = container["command"]
    return argv[argv.index("--group") + 1]


def _broker_url(docs: list[Doc]) -> str:
    return str(find(docs, "ConfigMap", "pixfleet-config")["data"]["PIXFLEET_BROKER"])


def _trigger(docs: list[Doc], kind: str) -> dict[str, Any]:
    scaled = find(docs, "ScaledObject")
    (trigger,) = scaled["spec"]["triggers"]
    assert trigger["type"] == kind
    return dict(trigger)


# -- structure -------------------------------------------------------------------------------


def test_the_schema_is_a_valid_json_schema() -> None:
    jsonschema.Draft202012Validator.check_schema(_schema())


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_keda_objects_validate_against_the_schema(overlay: str) -> None:
    validator = jsonschema.Draft202012Validator(_schema())
    objects = _keda(rendered(K8S / overlay))
    assert objects
    for doc in objects:
        errors = [f"{list(e.absolute_path)}: {e.message}" for e in validator.iter_errors(doc)]
        assert not errors, f"{doc['kind']} {doc['metadata']['name']}: {errors}"


@pytest.mark.parametrize(
    ("where", "key"),
    [
        (("spec",), "minReplicas"),  # the HPA's spelling, not KEDA's minReplicaCount
        (("spec", "triggers", 0, "metadata"), "queue"),  # rabbitmq wants queueName
    ],
)
def test_the_schema_catches_what_the_api_server_would_silently_drop(
    where: tuple[str | int, ...], key: str
) -> None:
    doc = copy.deepcopy(find(rendered(K8S / "rabbitmq"), "ScaledObject"))
    node: Any = doc
    for step in where:
        node = node[step]
    node[key] = "1"
    assert list(jsonschema.Draft202012Validator(_schema()).iter_errors(doc))


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_one_scaled_object_targets_the_worker_deployment(overlay: str) -> None:
    docs = rendered(K8S / overlay)
    scaled = find(docs, "ScaledObject")  # one: two would fight over the same HPA
    assert scaled["spec"]["scaleTargetRef"]["name"] == _worker(docs)["metadata"]["name"]
    assert scaled["metadata"]["namespace"] == _worker(docs)["metadata"]["namespace"]
    assert "replicas" not in _worker(docs)["spec"], "KEDA owns the replica count"
    spec = scaled["spec"]
    assert 1 <= spec["minReplicaCount"] <= spec["maxReplicaCount"]


# -- RabbitMQ: the group queue in the broker's vhost -----------------------------------------


def test_rabbitmq_trigger_names_the_group_queue_pixfleet_consumes() -> None:
    docs = rendered(K8S / "rabbitmq")
    group = _group(docs)
    metadata = _trigger(docs, "rabbitmq")["metadata"]
    assert metadata["queueName"] == names.amqp_group_queue(group) == f"pixfleet.group.{group}"
    subscription = AmqpTransport.from_url(_broker_url(docs)).consume(group)
    assert isinstance(subscription, AmqpSubscription)
    assert metadata["queueName"] == subscription.queue


def test_rabbitmq_trigger_counts_ready_messages_in_the_brokers_vhost() -> None:
    docs = rendered(K8S / "rabbitmq")
    metadata = _trigger(docs, "rabbitmq")["metadata"]
    vhost = unquote(urlsplit(_broker_url(docs)).path.lstrip("/")) or "/"
    assert metadata["vhostName"] == vhost
    assert metadata["mode"] == "QueueLength"
    assert metadata["protocol"] == "amqp"  # a passive declare: ready messages only


def test_rabbitmq_trigger_authenticates_through_a_placeholder_secret() -> None:
    docs = rendered(K8S / "rabbitmq")
    trigger = _trigger(docs, "rabbitmq")
    assert "host" not in trigger["metadata"], "credentials belong in a Secret"
    auth = find(docs, "TriggerAuthentication", trigger["authenticationRef"]["name"])
    (ref,) = auth["spec"]["secretTargetRef"]
    assert ref["parameter"] == "host"
    host = find(docs, "Secret", ref["name"])["stringData"][ref["key"]]
    parts = urlsplit(host)
    broker = urlsplit(_broker_url(docs))
    assert parts.scheme == broker.scheme and parts.hostname == broker.hostname
    assert parts.port == broker.port and parts.password == "CHANGE-ME"


# -- Kafka: the task topic and the group id, with the URL's namespace ------------------------


def test_kafka_trigger_names_the_task_topic_and_the_group_id_pixfleet_uses() -> None:
    docs = rendered(K8S / "kafka")
    group = _group(docs)
    url = _broker_url(docs)
    settings = KafkaSettings.from_url(url)
    metadata = _trigger(docs, "kafka")["metadata"]
    assert metadata["topic"] == settings.name(names.KAFKA_TASK_TOPIC)
    assert metadata["consumerGroup"] == settings.name(group)
    subscription = KafkaTransport.from_url(url).consume(group)
    assert isinstance(subscription, KafkaSubscription)
    assert metadata["consumerGroup"] == subscription.group_id
    assert metadata["topic"] == subscription.topics[0]


def test_kafka_trigger_reads_the_brokers_pixfleet_talks_to() -> None:
    docs = rendered(K8S / "kafka")
    settings = KafkaSettings.from_url(_broker_url(docs))
    metadata = _trigger(docs, "kafka")["metadata"]
    assert metadata["bootstrapServers"] == settings.bootstrap
    # A new pixfleet group starts at the earliest offset; KEDA must count its lag the same way.
    member = settings.member_options(metadata["consumerGroup"], prefetch=1)
    assert metadata["offsetResetPolicy"] == member["auto_offset_reset"] == "earliest"


def test_kafka_scaling_stops_at_the_task_topics_partition_count() -> None:
    docs = rendered(K8S / "kafka")
    settings = KafkaSettings.from_url(_broker_url(docs))
    scaled = find(docs, "ScaledObject")
    assert scaled["spec"]["maxReplicaCount"] <= settings.partitions
    assert _trigger(docs, "kafka")["metadata"]["allowIdleConsumers"] == "false"
