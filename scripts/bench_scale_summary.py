#!/usr/bin/env python3
"""Summarises a scripts/bench_scale.sh run (scripts/bench.sh --scale): the swarms' reports merged
(their timelines line up by wall clock; reply latencies are merged from each second's latency
buckets, so percentiles are over every swarm's replies), the push as the API and the agents saw
it, API latency and memory per agent per role. Prints summary.md, writes timeline.svg.
Usage: bench_scale_summary.py DIR"""

import json
import math
import os
import pathlib
import statistics
import sys

sys.path.insert(0, str(pathlib.Path(__file__).parent))
from bench_summary import fmt  # noqa: E402


def events(d):
    out = {}
    for line in (d / "events.txt").read_text().splitlines():
        key, _, value = line.partition(" ")
        out[key] = int(value) if value.lstrip("-").isdigit() else value
    return out


def swarms(d):
    return [json.loads(p.read_text()) for p in sorted(d.glob("swarm-*/report.json"))]


def numbers(path):
    if not path.exists():
        return []
    return [float(x) for x in path.read_text().split()]


def percentile(buckets, q):
    """The q-quantile (ms) of merged latency buckets {bucket: count} (bucket b holds
    (10^((b-1)/20), 10^(b/20)] µs): the bucket's geometric middle, within 6%."""
    total = sum(buckets.values())
    if not total:
        return None
    rank = max(1, math.ceil(q * total))
    seen = 0
    for b in sorted(buckets):
        seen += buckets[b]
        if seen >= rank:
            return 10 ** ((b - 0.5) / 20) / 1000
    return None


def merged_buckets(reports, start_ms, end_ms):
    """Every swarm's reply buckets of the seconds ending in (start_ms, end_ms]."""
    out = {}
    for r in reports:
        for s in r["timeline"]:
            if start_ms < s["unix_ms"] <= end_ms:
                for b, n in s.get("reply_buckets", []):
                    out[b] = out.get(b, 0) + n
    return out


def applied_of(reports, config_hash):
    """Each swarm's applied_configs entry of the pushed config."""
    return [c for r in reports for c in r.get("applied_configs", []) if c["hash"] == config_hash]


def rss(d):
    """{phase: {role: (kib, processes)}} from rss.txt."""
    out = {}
    path = d / "rss.txt"
    for line in path.read_text().splitlines() if path.exists() else []:
        phase, role, _name, _pid, kib = line.split()
        kib_total, count = out.setdefault(phase, {}).get(role, (0, 0))
        out[phase][role] = (kib_total + int(kib or 0), count + 1)
    return out


def cpu(d):
    """{mark: (unix_ms, {role: ticks})} from cpu.txt."""
    out = {}
    path = d / "cpu.txt"
    for line in path.read_text().splitlines() if path.exists() else []:
        mark, t, role, _name, ticks = line.split()
        at, roles = out.setdefault(mark, (int(t), {}))
        roles[role] = roles.get(role, 0) + int(ticks)
    return out


def scraped(d, mark, name, role="c"):
    """The sum over the coordinators' (role "c") or gateways' ("g") metrics scraped at `mark`
    of every sample of `name` (all label sets); None if none was scraped."""
    files = sorted((d / "metrics").glob(f"{mark}-{role}[0-9]*.txt"))
    total, seen = 0.0, False
    for f in files:
        for line in f.read_text().splitlines():
            if line.startswith(name + " ") or line.startswith(name + "{"):
                total += float(line.rsplit(" ", 1)[1])
                seen = True
    return total if seen else None


def mean_between(d, start, end, name, role="c"):
    """Mean of histogram `name` over what was observed between marks `start` and `end`, in
    ms, and how many observations: (mean_ms, count), or None."""
    vals = [scraped(d, m, f"{name}_{k}", role) for m in (start, end) for k in ("sum", "count")]
    if None in vals:
        return None
    s0, c0, s1, c1 = vals
    n = c1 - c0
    return ((s1 - s0) / n * 1000 if n > 0 else None), int(n)


def cpu_shares(marks, start, end, hz=os.sysconf("SC_CLK_TCK"), cores=os.cpu_count()):
    """Each role's CPU between two marks, as a share of the machine (every core): text."""
    if start not in marks or end not in marks:
        return None
    (t0, a), (t1, b) = marks[start], marks[end]
    wall = max((t1 - t0) / 1000, 1e-3)
    parts = []
    for role in ("coordinator", "gateway", "nats", "redis", "swarm"):
        if role in a and role in b:
            share = (b[role] - a[role]) / hz / wall / cores * 100
            parts.append(f"{role} {share:.0f}%")
    return f"{', '.join(parts)} (of {cores} cores, over {wall:.0f} s)"


def ms(v, digits=0):
    return fmt(v, " ms", digits)


def seconds(v):
    return fmt(v, " s", 2)


def summary(d, ev, reports):
    """The table; a run cut short (memory limit, a bound) has the rows it got to."""
    agents = ev["agents"]
    rows = ["| measure | value |", "|---|---|"]

    def row(label, value):
        rows.append(f"| {label} | {value} |")

    def since(key, start_key):
        if key not in ev or start_key not in ev:
            return None
        return (ev[key] - ev[start_key]) / 1000

    row("agents asked / connected (API, fleet health)", f"{agents:,} / {ev.get('connected', 0):,}")
    row("processes", f"{ev['processes']} gateways, {ev['processes']} swarms, 3 coordinators")
    shape = reports[0].get("shape", {})
    sizes = reports[0].get("message_bytes", {})
    row(
        "agent reports",
        f"{shape.get('attributes', 0)} attributes, {shape.get('components', 0)} health components, "
        f"{shape.get('effective_config_bytes', 0):,} B effective config; full report "
        f"{sizes.get('full_report', 0):,} B, heartbeat {sizes.get('heartbeat', 0)} B",
    )
    ramp_swarms = [r["connect"]["all_connected_s"] for r in reports]
    ramp_max = None if None in ramp_swarms else max(ramp_swarms)
    row(
        "ramp: all connected",
        f"{seconds(since('all_connected_ms', 'swarms_started_ms'))} (API, polled every 2 s); "
        f"slowest swarm {seconds(ramp_max)}",
    )
    if "memory_limit_ms" in ev:
        row("**stopped: memory limit**", f"after {seconds(since('memory_limit_ms', 'swarms_started_ms'))} "
            "(from the swarms' start): servers killed")
    put_ms = ev.get("put_ms")
    # The steady state ends at the push, or where the run ended.
    steady_end = put_ms or ev.get("memory_limit_ms") or ev.get("stopping_ms") or 2**63
    steady = merged_buckets(reports, ev.get("steady_from_ms", 2**63), steady_end)
    if put_ms:
        put_time = numbers(d / "put-time.txt")
        row("PUT /api/v1/configs/scale", ms(put_time[0] * 1000 if put_time else None, 1))
        mine = applied_of(reports, ev.get("hash", ""))
        applied = sum(c["agents"] for c in mine)
        last = max((c["last_unix_ms"] for c in mine), default=None)
        row(
            "push: agents that reported APPLIED (swarms) / API count",
            f"{applied:,} / {ev.get('applied', 0):,} of {agents:,}",
        )
        if mine:
            times = (
                min(c["first_unix_ms"] for c in mine),
                max(c["p50_unix_ms"] for c in mine),
                max(c["p99_unix_ms"] for c in mine),
                last,
            )
            row(
                "push: PUT -> first / p50 / p99 / last APPLIED (agents' clocks; p50 and p99 at most)",
                " / ".join(seconds((v - put_ms) / 1000) for v in times),
            )
        row(
            "push: PUT -> API counts all applied",
            seconds(since("all_applied_ms", "put_ms"))
            if ev.get("applied", 0) >= agents
            else f"not within the bound ({ev.get('applied', 0):,})",
        )
        push_end = (last or ev.get("all_applied_ms") or steady_end) + 1000
        push = merged_buckets(reports, put_ms, push_end)
    else:
        row("push", "not reached")
        push = {}
    for label, b in (("steady", steady), ("during the push", push)):
        row(
            f"report -> reply {label}: p50 / p99 / replies",
            f"{ms(percentile(b, 0.5), 2)} / {ms(percentile(b, 0.99), 2)} / {sum(b.values()):,}",
        )
    if "steady_from_ms" in ev and steady_end < 2**63:
        steady_s = (steady_end - ev["steady_from_ms"]) / 1000
        row("messages/s in the steady state", fmt(sum(steady.values()) / max(steady_s, 1), "", 0))
    for name, file in (("GET /api/v1/fleet/health", "api-health.txt"),
                       (f"GET {ev.get('api_list_path', 'agent list')}", "api-list.txt")):
        t = [x * 1000 for x in numbers(d / file)]
        row(f"{name}: median / max ({len(t)} samples)",
            f"{ms(statistics.median(t) if t else None, 1)} / {ms(max(t) if t else None, 1)}")
    def count(key):
        v = ev.get(key)
        return v if isinstance(v, int) else 0

    if "gateway_killed_ms" in ev:
        row(
            f"fault: kill -9 gateway g1 ({count('gateway_agents'):,} agents on it) -> "
            "swarms have every agent connected again",
            seconds(since("gateway_back_ms", "gateway_killed_ms"))
            if count("gateway_back") >= agents
            else f"not within the bound ({count('gateway_back'):,})",
        )
    for tag, label in (("gateway", "after the gateway's loss"),
                       ("coordinator", "with coordinator c3 killed just before")):
        if f"{tag}_put_ms" in ev:
            row(
                f"fault: push {label}: PUT -> API counts all applied",
                seconds(since(f"{tag}_applied_ms", f"{tag}_put_ms"))
                if count(f"{tag}_applied") >= agents
                else f"not within the bound ({count(f'{tag}_applied'):,})",
            )
    if "coordinator_connected" in ev:
        row("fault: connected agents (API) after the coordinator's loss",
            f"{count('coordinator_connected'):,}")
    marks = cpu(d)
    for label, start, end in (("steady", "steady", "push"), ("the push", "push", "applied")):
        shares = cpu_shares(marks, start, end)
        if shares:
            row(f"CPU during {label}, by role", shares)
    for label, name, start, end in (
            ("the owners' store calls, steady", "flotilla_store_seconds", "steady", "push"),
            ("the owners' store calls, during the push", "flotilla_store_seconds", "push", "applied"),
            ("the owners' list walks during the API samples",
             "flotilla_coordinator_list_part_seconds", "applied", "api")):
        m = mean_between(d, start, end, name)
        if m and m[0] is not None:
            row(f"{label}: mean / calls (coordinators' metrics)", f"{ms(m[0], 1)} / {m[1]:,}")
    mem = rss(d)
    held = max(ev.get("connected", 0) or agents, 1)
    for role in ("gateway", "coordinator", "redis", "nats", "swarm"):
        idle = mem.get("idle", {}).get(role)
        for phase in ("steady", "pushed", "limit"):
            now = mem.get(phase, {}).get(role)
            if not now:
                continue
            # Growth over the idle servers; the swarms, started later, in all.
            per = (now[0] - (idle[0] if idle else 0)) / held
            row(
                f"memory: {role} ({now[1]} process{'es' if now[1] > 1 else ''}), {phase}",
                f"{now[0] / 1024:,.0f} MiB, {per:,.1f} KiB per agent{' over idle' if idle else ''}",
            )
    used = numbers(d / "memory.txt")[1::2]
    row("machine memory used, peak", f"{max(used) / 1024:,.1f} GiB" if used else "-")
    if "stopping_ms" in ev:
        row("run: start to stop (build not counted)", seconds((ev["stopping_ms"] - ev["started_ms"]) / 1000))
    errors = {}
    for r in reports:
        for k, v in r["errors"].items():
            errors[k] = errors.get(k, 0) + v
    row("swarm errors", ", ".join(f"{k} {v:,}" for k, v in sorted(errors.items())) or "0")
    reasons = sorted({why for r in reports for why in r.get("error_reasons", [])})
    if reasons:
        row("swarm error reasons (first few)", "; ".join(reasons[:4]).replace("|", "/"))
    return "\n".join(rows)


def timeline(reports, ev):
    """Per second (relative to the swarms' start): connected, applied, messages/s, p50, p99."""
    t0 = ev["swarms_started_ms"]
    rows = {}
    for i, r in enumerate(reports):
        for s in r["timeline"]:
            sec = round((s["unix_ms"] - t0) / 1000)
            row = rows.setdefault(sec, {"conn": {}, "applied": {}, "msgs": 0, "buckets": {}})
            row["conn"][i] = s["connected"]
            row["applied"][i] = s.get("applied", 0)
            row["msgs"] += s["messages_per_s"]
            for b, n in s.get("reply_buckets", []):
                row["buckets"][b] = row["buckets"].get(b, 0) + n
    out, last_conn, last_applied = [], {}, {}
    for sec in range(min(rows, default=0), max(rows, default=-1) + 1):
        row = rows.get(sec, {"conn": {}, "applied": {}, "msgs": 0, "buckets": {}})
        last_conn.update(row["conn"])
        last_applied.update(row["applied"])
        out.append((sec, sum(last_conn.values()), sum(last_applied.values()), row["msgs"],
                    percentile(row["buckets"], 0.5), percentile(row["buckets"], 0.99)))
    return out


def svg(points, ev):
    """Three panels: agents connected and applied, messages/s, reply p50/p99 (log scale)."""
    width, left, right, panel, gap = 960, 80, 20, 200, 50
    t_max = max((p[0] for p in points), default=1) or 1
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{3 * (panel + gap) + 40}" '
             'font-family="sans-serif" font-size="12">', '<rect width="100%" height="100%" fill="white"/>',
             f'<text x="{width / 2}" y="20" text-anchor="middle" font-size="16">{ev["agents"]:,} agents, '
             f'{ev["processes"]} swarms and gateways: merged timeline</text>']

    def x(t):
        return left + (width - left - right) * t / t_max

    def frame(top, title, y_max, log=False):
        parts.append(f'<rect x="{left}" y="{top}" width="{width - left - right}" height="{panel}" '
                     'fill="none" stroke="black"/>')
        parts.append(f'<text x="{left}" y="{top - 6}">{title}</text>')
        ticks = ([10 ** k for k in range(-1, 6) if 10 ** k <= y_max] if log
                 else [y_max * k / 4 for k in range(5)])
        for v in ticks:
            yy = y(top, v, y_max, log)
            parts.append(f'<text x="{left - 6}" y="{yy + 4}" text-anchor="end">{v:,.{1 if v < 1 else 0}f}</text>')
            parts.append(f'<line x1="{left}" x2="{width - right}" y1="{yy}" y2="{yy}" stroke="#ddd"/>')
        for t in range(0, int(t_max) + 1, max(10, int(t_max / 10) // 10 * 10 or 10)):
            parts.append(f'<text x="{x(t)}" y="{top + panel + 14}" text-anchor="middle">{t} s</text>')
        for key, label in (("all_connected_ms", "ramp wait over"), ("put_ms", "PUT"),
                           ("memory_limit_ms", "memory limit")):
            if key in ev:
                xx = x((ev[key] - ev["swarms_started_ms"]) / 1000)
                parts.append(f'<line x1="{xx}" x2="{xx}" y1="{top}" y2="{top + panel}" stroke="gray" '
                             'stroke-dasharray="4 3"/>')
                parts.append(f'<text x="{xx - 3}" y="{top + 12}" fill="gray" text-anchor="end">'
                             f'{label}</text>')

    def y(top, v, y_max, log=False):
        if log:
            lo = 0.1
            frac = (math.log10(max(v, lo)) - math.log10(lo)) / (math.log10(y_max) - math.log10(lo))
        else:
            frac = v / y_max
        return top + panel - panel * min(max(frac, 0), 1)

    def line(top, values, y_max, color, label, slot, log=False):
        pts = " ".join(f"{x(t):.1f},{y(top, v, y_max, log):.1f}" for t, v in values if v is not None)
        parts.append(f'<polyline points="{pts}" fill="none" stroke="{color}" stroke-width="1.5"/>')
        # The legend above the panel, right of its title.
        lx = width - right - 300 + 150 * slot
        parts.append(f'<line x1="{lx}" x2="{lx + 20}" y1="{top - 10}" y2="{top - 10}" '
                     f'stroke="{color}" stroke-width="2"/>')
        parts.append(f'<text x="{lx + 26}" y="{top - 6}">{label}</text>')

    top = 50
    agents_max = max([p[1] for p in points] + [ev["agents"]]) * 1.05
    frame(top, "agents", agents_max)
    line(top, [(p[0], p[1]) for p in points], agents_max, "blue", "connected", 0)
    line(top, [(p[0], p[2]) for p in points], agents_max, "green", "applied the push", 1)
    top += panel + gap
    msgs_max = max([p[3] for p in points] + [1]) * 1.1
    frame(top, "messages answered per second (all swarms)", msgs_max)
    line(top, [(p[0], p[3]) for p in points], msgs_max, "black", "messages/s", 0)
    top += panel + gap
    ms_max = 10 ** math.ceil(math.log10(max([p[5] or 1 for p in points] + [1])))
    frame(top, "report -> reply latency per second, ms (log scale)", ms_max, log=True)
    line(top, [(p[0], p[4]) for p in points], ms_max, "green", "p50", 0, log=True)
    line(top, [(p[0], p[5]) for p in points], ms_max, "red", "p99", 1, log=True)
    parts.append("</svg>")
    return "\n".join(parts)


def main():
    d = pathlib.Path(sys.argv[1])
    ev = events(d)
    reports = swarms(d)
    if not reports:
        sys.exit(f"no swarm-*/report.json under {d}")
    (d / "timeline.svg").write_text(svg(timeline(reports, ev), ev))
    machine = d / "machine.txt"
    print("## Scale: {:,} agents\n".format(ev["agents"]))
    print("```\n" + (machine.read_text().strip() if machine.exists() else "?") + "\n```\n")
    print(summary(d, ev, reports) + "\n")
    print("![timeline](timeline.svg)")


if __name__ == "__main__":
    main()
