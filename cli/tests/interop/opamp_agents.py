#!/usr/bin/env python3
"""Interop OpAMP agents driven by the PyPI package `opentelemetry-opamp-client`.

Install (pinning the pre-release keeps its dependencies, e.g. protobuf, on
stable releases; `pip install --pre ...` also works but pulls protobuf RCs):

    python3 -m venv /tmp/opamp-venv
    /tmp/opamp-venv/bin/pip install "opentelemetry-opamp-client==0.5b0"

Usage:

    opamp_agents.py --endpoint http://127.0.0.1:4320/v1/opamp \
        --count 3 --attr env=interop --poll-interval 1 --duration 30

Starts --count agents (plain HTTP transport, the only one the package has).
Each agent has identifying attributes service.name=<--service-name> and
service.instance.id=<--instance-id-prefix>-<index>, plus the non-identifying
attributes given via repeated --attr k=v. When a remote config arrives, the
agent records it, sets its effective config to the received config and
reports RemoteConfigStatus APPLIED with the received config hash.

stdout: exactly one JSON line, printed right after the agents are created:
    {"instance_uids": ["<lowercase hyphenated uuid>", ...]}
(the package generates UUIDv7 instance uids; order matches agent index).
stderr: progress logs.

Runs until --duration seconds pass or SIGTERM/SIGINT arrives, then stops
every agent with OpAMPAgent.stop(), which sends an AgentDisconnect message.

Package limitations this script works around or cannot avoid (0.5b0):
  * There is no public accessor for the instance uid; it is read from the
    client's private `_instance_uid` attribute (16 raw bytes, UUIDv7). The uid
    cannot be chosen by the caller, and server-sent
    agent_identification.new_instance_uid is ignored by the package.
  * Effective config can only be sent inside the "full state" message
    (OpAMPClient.build_full_state_message); the remote-config-status message
    carries no effective config. So on a new config we send a full state
    message, which carries description + remote_config_status + effective_config.
  * OpAMPClient.update_effective_config() applies one content_type to every
    file and JSON-re-encodes values when content_type == "application/json".
    To report the received bodies byte-for-byte with their own content types,
    we pass raw bytes with a non-JSON content type and then set each entry's
    content_type on the EffectiveConfig protobuf that the method returns (it is
    the object the client stores and later serialises).
  * The package ignores ServerToAgent.connection_settings (so the server's
    heartbeat_interval_seconds is not honoured); the poll interval is fixed by
    --poll-interval. It does honour the ReportFullState flag.
"""

from __future__ import annotations

import argparse
import atexit
import json
import logging
import signal
import sys
import threading
import time
import uuid

from opentelemetry._opamp import MessageData, OpAMPAgent, OpAMPCallbacks, OpAMPClient
from opentelemetry._opamp.proto import opamp_pb2

log = logging.getLogger("opamp_agents")

# Any content type other than "application/json" makes update_effective_config()
# store str/bytes values verbatim; the real per-file content type is set afterwards.
_VERBATIM_CONTENT_TYPE = "application/octet-stream"


class InteropCallbacks(OpAMPCallbacks):
    """Per-agent callbacks: records remote configs and acks them as APPLIED."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.lock = threading.Lock()
        self.connected = False
        self.failures = 0
        self.last_hash: bytes | None = None
        # list of {"hash": hex, "files": {name: {"content_type": str, "body": str}}}
        self.received: list[dict] = []

    def on_connect(self, agent: OpAMPAgent, client: OpAMPClient) -> None:
        # Called after every successful HTTP round trip; only log transitions.
        with self.lock:
            was_connected, self.connected = self.connected, True
        if not was_connected:
            log.info("%s: connected", self.name)

    def on_connect_failed(self, agent: OpAMPAgent, client: OpAMPClient, error: Exception) -> None:
        with self.lock:
            was_connected, self.connected = self.connected, False
            self.failures += 1
            failures = self.failures
        if was_connected or failures == 1:
            log.warning("%s: request failed: %s", self.name, error)
        else:
            log.debug("%s: request failed (%d): %s", self.name, failures, error)

    def on_error(self, agent: OpAMPAgent, client: OpAMPClient, error_response: opamp_pb2.ServerErrorResponse) -> None:
        log.warning(
            "%s: server error response type=%s message=%r",
            self.name,
            opamp_pb2.ServerErrorResponseType.Name(error_response.type),
            error_response.error_message,
        )

    def on_message(self, agent: OpAMPAgent, client: OpAMPClient, message: MessageData) -> None:
        remote_config = message.remote_config
        if remote_config is None:
            return
        config_hash = bytes(remote_config.config_hash)
        with self.lock:
            if config_hash == self.last_hash:
                # Server re-sent a config we already applied: nothing to do.
                return
            self.last_hash = config_hash

        bodies: dict[str, bytes] = {}
        content_types: dict[str, str] = {}
        for file_name, config_file in remote_config.config.config_map.items():
            bodies[file_name] = bytes(config_file.body)
            content_types[file_name] = config_file.content_type

        record = {
            "hash": config_hash.hex(),
            "files": {
                n: {"content_type": content_types[n], "body": bodies[n].decode("utf-8", "replace")}
                for n in bodies
            },
        }
        with self.lock:
            self.received.append(record)
        log.info(
            "%s: received remote config hash=%s files=%s",
            self.name,
            record["hash"],
            {n: f"{content_types[n] or '<none>'} {len(bodies[n])}B" for n in bodies},
        )

        # "Apply" the config: the effective config is exactly what we received.
        effective = client.update_effective_config(bodies, content_type=_VERBATIM_CONTENT_TYPE)
        for file_name, entry in effective.config_map.config_map.items():
            entry.content_type = content_types.get(file_name, "")

        client.update_remote_config_status(
            remote_config_hash=config_hash,
            status=opamp_pb2.RemoteConfigStatuses_APPLIED,
        )
        # Full state is the only message type the package builds that carries
        # effective_config; it also carries the remote_config_status. send()
        # only enqueues, so calling it from the worker-thread callback is safe.
        agent.send(client.build_full_state_message())
        log.info("%s: reported APPLIED + effective config for hash=%s", self.name, record["hash"])


def parse_attr(value: str) -> tuple[str, str]:
    key, sep, val = value.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected k=v, got {value!r}")
    return key, val


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--endpoint", default="http://127.0.0.1:4320/v1/opamp", help="OpAMP HTTP endpoint URL")
    parser.add_argument("--count", type=int, default=3, help="number of agents (default 3)")
    parser.add_argument("--attr", type=parse_attr, action="append", default=[], metavar="K=V",
                        help="non-identifying attribute, repeatable")
    parser.add_argument("--service-name", default="io.opentelemetry.collector",
                        help="identifying attribute service.name")
    parser.add_argument("--instance-id-prefix", default="interop-agent",
                        help="service.instance.id is <prefix>-<index>")
    parser.add_argument("--poll-interval", type=float, default=1.0, help="heartbeat/poll interval seconds (default 1)")
    parser.add_argument("--duration", type=float, default=30.0, help="seconds to run (default 30)")
    parser.add_argument("--timeout-ms", type=int, default=1000, help="per-request HTTP timeout in ms (default 1000)")
    parser.add_argument("--stop-timeout", type=float, default=5.0, help="seconds to wait for each agent thread on stop")
    parser.add_argument("--log-level", default="INFO", help="log level for this script (default INFO)")
    parser.add_argument("--lib-log-level", default="ERROR",
                        help="log level for the opamp package (default ERROR; it warns on every failed attempt)")
    args = parser.parse_args()

    if args.count < 1:
        parser.error("--count must be >= 1")
    if args.poll_interval <= 0:
        parser.error("--poll-interval must be > 0")

    logging.basicConfig(
        stream=sys.stderr,
        level=args.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    logging.getLogger("opentelemetry._opamp").setLevel(args.lib_log_level.upper())

    stop_event = threading.Event()

    def on_signal(signum, _frame):
        log.info("received %s, stopping", signal.Signals(signum).name)
        stop_event.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)

    non_identifying = dict(args.attr)
    agents: list[tuple[str, OpAMPAgent, InteropCallbacks]] = []
    uids: list[str] = []
    for i in range(args.count):
        instance_id = f"{args.instance_id_prefix}-{i}"
        client = OpAMPClient(
            endpoint=args.endpoint,
            timeout_millis=args.timeout_ms,
            agent_identifying_attributes={
                "service.name": args.service_name,
                "service.instance.id": instance_id,
            },
            agent_non_identifying_attributes=non_identifying or None,
            # default capabilities: ReportsStatus | AcceptsRemoteConfig |
            # ReportsEffectiveConfig | ReportsRemoteConfig | ReportsHeartbeat (0x3007)
        )
        # No public accessor for the uid (see module docstring).
        uid = str(uuid.UUID(bytes=client._instance_uid))  # pylint: disable=protected-access
        name = f"agent[{i}] {uid}"
        callbacks = InteropCallbacks(name)
        agent = OpAMPAgent(interval=args.poll_interval, callbacks=callbacks, client=client)
        agents.append((name, agent, callbacks))
        uids.append(uid)
        log.info("%s: service.instance.id=%s", name, instance_id)

    sys.stdout.write(json.dumps({"instance_uids": uids}) + "\n")
    sys.stdout.flush()

    for name, agent, _ in agents:
        # start() enqueues the initial full-state message (AgentDescription,
        # capabilities); periodic heartbeats begin once that job finishes.
        agent.start()
        # start() registers agent.stop with atexit; we stop explicitly below,
        # so unregister to avoid a second AgentDisconnect at interpreter exit.
        atexit.unregister(agent.stop)
    log.info("started %d agents against %s (poll %.3gs, duration %.3gs)",
             len(agents), args.endpoint, args.poll_interval, args.duration)

    deadline = time.monotonic() + args.duration
    while not stop_event.is_set():
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            log.info("duration elapsed, stopping")
            break
        stop_event.wait(min(remaining, 1.0))

    # Stop in parallel: each stop() sends AgentDisconnect synchronously
    # (bounded by --timeout-ms) and then joins the agent's threads.
    stoppers = [
        threading.Thread(target=agent.stop, kwargs={"timeout": args.stop_timeout}, name=f"stop-{i}")
        for i, (_, agent, _) in enumerate(agents)
    ]
    for t in stoppers:
        t.start()
    for t in stoppers:
        t.join()

    for name, _, cb in agents:
        with cb.lock:
            log.info("%s: stopped; configs received=%d last_hash=%s failures=%d",
                     name, len(cb.received), cb.last_hash.hex() if cb.last_hash else None, cb.failures)
    return 0


if __name__ == "__main__":
    sys.exit(main())
