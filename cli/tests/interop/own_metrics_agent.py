#!/usr/bin/env python3
"""An OpAMP agent that reports its own metrics where the server tells it to.

OpAMP over plain HTTP with the protobuf messages of the PyPI package
`opentelemetry-opamp-client` (its client ignores connection settings, so the
agent speaks the protocol itself); its own metrics go out with the
OpenTelemetry SDK's OTLP/HTTP metric exporter (PyPI `opentelemetry-sdk`,
`opentelemetry-exporter-otlp-proto-http`) to the `own_metrics` destination
the server offered (ConnectionSettingsOffers.own_metrics).

Install:

    python3 -m venv /tmp/venv
    /tmp/venv/bin/pip install "opentelemetry-opamp-client==0.5b0" \
        opentelemetry-sdk opentelemetry-exporter-otlp-proto-http

Usage:

    own_metrics_agent.py --endpoint http://127.0.0.1:4320/v1/opamp \
        --attr env=prod --duration 60 [--failing] [--export-interval 0.5]

The metrics are named as the OpenTelemetry Collector names its own
(otelcol_process_cpu_seconds, otelcol_process_memory_rss,
otelcol_receiver_accepted_spans, otelcol_exporter_sent_spans,
otelcol_exporter_send_failed_spans, otelcol_exporter_queue_size and
_capacity), plus one the server does not keep (otelcol_other_metric).
With --failing the exporter "otlp" fails every item and its queue is full.

stdout: one JSON line once the offer has arrived and the exporter started:
    {"instance_uid": "<uuid>", "metrics_endpoint": "<url>"}
stderr: progress logs. Runs until --duration passes or SIGTERM.
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import time
import uuid

import requests
from opentelemetry._opamp.proto import anyvalue_pb2, opamp_pb2
from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
from opentelemetry.metrics import CallbackOptions, Observation
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader
from opentelemetry.sdk.resources import Resource

log = logging.getLogger("own_metrics_agent")

CAPABILITIES = (
    opamp_pb2.AgentCapabilities_ReportsStatus
    | opamp_pb2.AgentCapabilities_ReportsOwnMetrics
    | opamp_pb2.AgentCapabilities_ReportsHeartbeat
)


def key_value(key: str, value: str) -> anyvalue_pb2.KeyValue:
    return anyvalue_pb2.KeyValue(key=key, value=anyvalue_pb2.AnyValue(string_value=value))


class Agent:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.uid = uuid.uuid4()
        self.seq = 0
        self.provider: MeterProvider | None = None
        self.started = time.monotonic()

    def message(self) -> opamp_pb2.AgentToServer:
        msg = opamp_pb2.AgentToServer(
            instance_uid=self.uid.bytes,
            sequence_num=self.seq,
            capabilities=CAPABILITIES,
        )
        if self.seq == 0:
            attrs = [key_value(*a.split("=", 1)) for a in self.args.attr]
            msg.agent_description.CopyFrom(
                opamp_pb2.AgentDescription(
                    identifying_attributes=[
                        key_value("service.name", self.args.service_name),
                        key_value("service.instance.id", str(self.uid)),
                    ],
                    non_identifying_attributes=attrs,
                )
            )
        self.seq += 1
        return msg

    def poll(self) -> opamp_pb2.ServerToAgent:
        body = self.message().SerializeToString()
        r = requests.post(
            self.args.endpoint,
            data=body,
            headers={"Content-Type": "application/x-protobuf"},
            timeout=10,
        )
        r.raise_for_status()
        reply = opamp_pb2.ServerToAgent()
        reply.ParseFromString(r.content)
        return reply

    def start_metrics(self, endpoint: str) -> None:
        failing = self.args.failing
        exporter = OTLPMetricExporter(endpoint=endpoint)
        reader = PeriodicExportingMetricReader(
            exporter, export_interval_millis=int(self.args.export_interval * 1000)
        )
        resource = Resource.create(
            {"service.name": self.args.service_name, "service.instance.id": str(self.uid)}
        )
        self.provider = MeterProvider(resource=resource, metric_readers=[reader])
        meter = self.provider.get_meter("otelcol")
        started = self.started

        def cpu(_: CallbackOptions):
            # Half a core busy.
            yield Observation(0.5 * (time.monotonic() - started))

        def rss(_: CallbackOptions):
            yield Observation(150_000_000)

        def queue(_: CallbackOptions):
            yield Observation(1000 if failing else 10, {"exporter": "otlp"})

        def capacity(_: CallbackOptions):
            yield Observation(1000, {"exporter": "otlp"})

        meter.create_observable_counter("otelcol_process_cpu_seconds", [cpu])
        meter.create_observable_gauge("otelcol_process_memory_rss", [rss])
        meter.create_observable_gauge("otelcol_exporter_queue_size", [queue])
        meter.create_observable_gauge("otelcol_exporter_queue_capacity", [capacity])
        self.accepted = meter.create_counter("otelcol_receiver_accepted_spans")
        self.sent = meter.create_counter("otelcol_exporter_sent_spans")
        self.failed = meter.create_counter("otelcol_exporter_send_failed_spans")
        self.other = meter.create_counter("otelcol_other_metric")

    def count_work(self) -> None:
        """A second of pipeline work: 100 spans in, out or failed."""
        if self.provider is None:
            return
        self.accepted.add(100, {"receiver": "otlp", "transport": "grpc"})
        if self.args.failing:
            self.sent.add(0, {"exporter": "otlp"})
            self.failed.add(100, {"exporter": "otlp"})
        else:
            self.sent.add(100, {"exporter": "otlp"})
            self.failed.add(0, {"exporter": "otlp"})
        self.other.add(1)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--endpoint", required=True, help="OpAMP plain-HTTP URL")
    p.add_argument("--service-name", default="otelcol-contrib")
    p.add_argument("--attr", action="append", default=[], help="non-identifying k=v")
    p.add_argument("--duration", type=float, default=60.0)
    p.add_argument("--export-interval", type=float, default=0.5, help="seconds")
    p.add_argument("--failing", action="store_true", help="the exporter fails every item")
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, stream=sys.stderr)

    stop = {"now": False}

    def on_signal(_signum, _frame):
        stop["now"] = True

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)

    agent = Agent(args)
    deadline = time.monotonic() + args.duration
    while not stop["now"] and time.monotonic() < deadline:
        try:
            reply = agent.poll()
        except requests.RequestException as e:
            log.warning("poll failed: %s", e)
            time.sleep(1)
            continue
        offer = reply.connection_settings.own_metrics.destination_endpoint
        if offer and agent.provider is None:
            log.info("own metrics offered: %s", offer)
            agent.start_metrics(offer)
            print(
                json.dumps({"instance_uid": str(agent.uid), "metrics_endpoint": offer}),
                flush=True,
            )
        agent.count_work()
        time.sleep(1)
    if agent.provider is not None:
        agent.provider.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
