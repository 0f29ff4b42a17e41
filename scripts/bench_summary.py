#!/usr/bin/env python3
"""Summarises a scripts/bench.sh run: every swarm report side by side, then each target of
ARCHITECTURE.md with the baseline, Flotilla and the ratio. Usage: bench_summary.py DIR"""

import json
import pathlib
import sys


def load(directory):
    reports = {}
    for path in sorted(pathlib.Path(directory).glob("*/report.json")):
        reports[path.parent.name] = json.loads(path.read_text())
    return reports


def fmt(value, unit="", digits=1):
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.{digits}f}{unit}"
    return f"{value:,}{unit}"


def kib(report):
    per = report.get("memory_bytes_per_connection")
    return None if per is None else per / 1024


def cpu(report):
    return report.get("cpu_ms_per_connection")


def per_core_second(report):
    ms = cpu(report)
    return None if not ms else 1000 / ms


def ratio(flotilla, baseline):
    if flotilla is None or baseline in (None, 0):
        return "-"
    return f"{flotilla / baseline:.2f}x"


def runs_table(reports):
    rows = [
        "| run | agents | all connected | connects/s | connect p99 | msgs/s | steady p50 | steady p99 "
        "| push p99 / all | errors | KiB/conn | CPU ms/conn |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, r in reports.items():
        push = r.get("config_push")
        push_s = (
            f"{push['applied_after']['p99_ms']:,.0f} ms / {fmt(push['all_reported_s'], ' s', 2)}"
            if push
            else "-"
        )
        rows.append(
            f"| {name} | {r['agents']:,} | {fmt(r['connect']['all_connected_s'], ' s', 2)} "
            f"| {fmt(r['connect']['per_s'], '', 0)} | {fmt(r['connect']['time']['p99_ms'], ' ms', 2)} "
            f"| {fmt(r['messages_per_s'], '', 0)} | {fmt(r['latency']['steady']['p50_ms'], ' ms', 2)} "
            f"| {fmt(r['latency']['steady']['p99_ms'], ' ms', 2)} | {push_s} | {r['errors_total']:,} "
            f"| {fmt(kib(r))} | {fmt(cpu(r), '', 3)} |"
        )
    return "\n".join(rows)


def get(reports, name, *path):
    value = reports.get(name)
    for key in path:
        if value is None:
            return None
        value = value[key] if not callable(key) else key(value)
    return value


def targets_table(reports):
    rows = [
        "| target | baseline (echo) | standalone | cluster | standalone / baseline |",
        "|---|---|---|---|---|",
    ]

    def row(label, base, standalone, cluster, unit="", digits=1):
        rows.append(
            f"| {label} | {fmt(base, unit, digits)} | {fmt(standalone, unit, digits)} "
            f"| {fmt(cluster, unit, digits)} | {ratio(standalone, base)} |"
        )

    row(
        "idle mTLS connection <= 25 KB (KiB per connection)",
        get(reports, "echo-connect-storm", kib),
        get(reports, "standalone-connect-storm", kib),
        get(reports, "cluster-steady", kib),
    )
    row(
        "one gateway holds >= 50,000 agents (agents held)",
        get(reports, "echo-connect-storm", "memory_connections"),
        get(reports, "standalone-connect-storm", "memory_connections"),
        None,
    )
    row(
        "mTLS handshakes >= 2,500/s per core (agents connected/s, both ends on 2 cores)",
        get(reports, "echo-connect-storm", "connect", "per_s"),
        get(reports, "standalone-connect-storm", "connect", "per_s"),
        get(reports, "cluster-steady", "connect", "per_s"),
        digits=0,
    )
    row(
        "mTLS handshakes per core (server CPU: handshake, upgrade, first report)",
        get(reports, "echo-connect-storm", per_core_second),
        get(reports, "standalone-connect-storm", per_core_second),
        get(reports, "cluster-steady", per_core_second),
        "/s",
        0,
    )
    row(
        "report -> reply p99 <= 50 ms (steady p99)",
        get(reports, "echo-steady", "latency", "steady", "p99_ms"),
        get(reports, "standalone-steady", "latency", "steady", "p99_ms"),
        get(reports, "cluster-steady", "latency", "steady", "p99_ms"),
        " ms",
        2,
    )
    row(
        "config push: all APPLIED <= 5 s (push -> APPLIED p99)",
        None,
        get(reports, "standalone-rollout", "config_push", "applied_after", "p99_ms"),
        get(reports, "cluster-rollout", "config_push", "applied_after", "p99_ms"),
        " ms",
        0,
    )
    row(
        "config push: every agent reported",
        None,
        get(reports, "standalone-rollout", "config_push", "all_reported_s"),
        get(reports, "cluster-rollout", "config_push", "all_reported_s"),
        " s",
        2,
    )
    row(
        "gateway loss: all agents back and answered",
        None,
        None,
        get(reports, "cluster-gateway-loss", "recovery", "converged_s"),
        " s",
        2,
    )
    return "\n".join(rows)


def main():
    directory = sys.argv[1]
    reports = load(directory)
    if not reports:
        sys.exit(f"no */report.json under {directory}")
    machine = pathlib.Path(directory, "machine.txt")
    print("## Machine\n")
    print("```\n" + (machine.read_text().strip() if machine.exists() else "?") + "\n```\n")
    print("## Targets\n")
    print(targets_table(reports) + "\n")
    print("## Every run\n")
    print(runs_table(reports))


if __name__ == "__main__":
    main()
