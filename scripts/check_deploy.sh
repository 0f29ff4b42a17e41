#!/usr/bin/env bash
# Checks deploy/: the Dockerfile against the workspace, and the Kubernetes manifests as rendered
# by kustomize (deploy/kubernetes/overlays/*, deploy/kubernetes/secrets*):
#   - the Dockerfile builds the package and binary cli/Cargo.toml defines, with the toolchain of
#     rust-toolchain.toml, by the release build the benchmarks use; checkov (dockerfile);
#   - each kustomization renders (kubectl kustomize);
#   - every object validates against the Kubernetes OpenAPI schemas of K8S_VERSION, strictly (no
#     unknown fields), with kubernetes-validate. ServiceMonitor and PrometheusRule (Prometheus
#     Operator CRDs) have no schema there: they are split out and checked here instead (required
#     fields; the PrometheusRule's groups equal deploy/prometheus/rules.yml's);
#   - every FLOTILLA_* variable and --flag given to flotilla, and every key of the TOML files the
#     Secrets hold, is a real `flotilla serve` setting (worker-common/src/config/sources.rs);
#   - references resolve: Secrets, ConfigMaps and their keys, Service selectors and target
#     ports, PodDisruptionBudget and NetworkPolicy selectors, the HPA's target;
#   - checkov (framework kubernetes) finds nothing that deploy/kubernetes/.checkov.yaml does not
#     skip with a reason.
# Needs python3 (with venv) and kubectl (Kustomize v5); installs kubernetes-validate and checkov,
# pinned, into target/deploy-venv. No cluster, no Docker engine, no cargo. One line per target.
set -euo pipefail
cd "$(dirname "$0")/.."

K8S_VERSION=1.31.0
KUBERNETES_VALIDATE_VERSION=1.37.0
CHECKOV_VERSION=3.3.30
venv=target/deploy-venv
work=target/deploy-check
started=$SECONDS

fail() { echo "check_deploy: $*" >&2; exit 1; }

command -v kubectl >/dev/null ||
  fail "kubectl not found: install kubectl >= 1.27 (the Kubernetes CLI; it embeds Kustomize v5)"
command -v python3 >/dev/null || fail "python3 not found: install python3 and python3-venv"

# --- the Dockerfile against the workspace -------------------------------------------------
grep -q '^name = "flotilla"$' cli/Cargo.toml || fail "cli/Cargo.toml: package flotilla not found"
grep -A2 '^\[\[bin\]\]' cli/Cargo.toml | grep -q '^name = "flotilla"$' ||
  fail "cli/Cargo.toml: [[bin]] flotilla not found"
grep -q 'cargo build --release --locked -p flotilla --bin flotilla' Dockerfile ||
  fail "Dockerfile: the build step is not 'cargo build --release --locked -p flotilla --bin flotilla'"
grep -q 'target/release/flotilla ' Dockerfile || fail "Dockerfile: does not copy target/release/flotilla"
grep -q 'cargo build --release .*-p flotilla' scripts/bench.sh ||
  fail "scripts/bench.sh no longer builds -p flotilla --release: re-check the Dockerfile's build"
toolchain=$(sed -n 's/^channel = "\(.*\)"$/\1/p' rust-toolchain.toml)
grep -q "^ARG RUST_VERSION=${toolchain}\$" Dockerfile ||
  fail "Dockerfile: ARG RUST_VERSION is not rust-toolchain.toml's channel ${toolchain}"

# --- tools ---------------------------------------------------------------------------------
installed() {
  [ "$("$venv/bin/kubernetes-validate" --version 2>/dev/null)" = "$KUBERNETES_VALIDATE_VERSION" ] &&
    [ "$("$venv/bin/checkov" --version 2>/dev/null)" = "$CHECKOV_VERSION" ]
}
if ! installed; then
  echo "==> installing kubernetes-validate $KUBERNETES_VALIDATE_VERSION and checkov $CHECKOV_VERSION into $venv"
  mkdir -p target
  [ -x "$venv/bin/pip" ] || timeout 120 python3 -m venv "$venv" ||
    fail "python3 -m venv failed: install python3-venv"
  timeout 900 "$venv/bin/pip" install --quiet --disable-pip-version-check \
    "kubernetes-validate==$KUBERNETES_VALIDATE_VERSION" "checkov==$CHECKOV_VERSION" >/dev/null ||
    fail "pip install into $venv failed"
  installed || fail "$venv does not hold the pinned versions after installing"
fi
py="$venv/bin/python"

rm -rf "$work"
mkdir -p "$work"

# --- the checks kubernetes-validate and checkov do not do, in Python (PyYAML from the venv) --
cat >"$work/check.py" <<'PY'
"""Checks one rendered kustomization; prints its counts of objects, CRD objects, settings and
references for the summary line."""
import re, sys, tomllib, yaml

CRDS = {("monitoring.coreos.com/v1", "ServiceMonitor"), ("monitoring.coreos.com/v1", "PrometheusRule")}
errors = []

def flotilla_settings(path):
    """(flags, env vars) of `flotilla serve`, from the clap definitions."""
    src = open(path).read()
    flags, envs = set(), set()
    for m in re.finditer(r"#\[arg\((.*?)\)\]\s*pub (\w+):", src, re.S):
        attrs, field = m.group(1), m.group(2)
        long = re.search(r'long\s*=\s*"([^"]+)"', attrs)
        if long:
            flags.add(long.group(1))
        elif re.search(r"\blong\b", attrs):
            flags.add(field.replace("_", "-"))
        env = re.search(r'env\s*=\s*"([^"]+)"', attrs)
        if env:
            envs.add(env.group(1))
    # The TOML file's keys: FileConfig's fields, kebab-case, or their serde renames.
    file_block = src[src.index("struct FileConfig"):]
    file_block = file_block[:file_block.index("\n}\n")]
    keys = set()
    for m in re.finditer(r'(?:rename = "([^"]+)"[^\n]*\n\s*)?pub\(super\) (\w+):', file_block):
        keys.add(m.group(1) or m.group(2).replace("_", "-"))
    return flags, envs, keys

def pod_specs(docs):
    for d in docs:
        spec = (d.get("spec") or {}).get("template", {}).get("spec")
        if spec:
            yield d, d["spec"]["template"]["metadata"].get("labels", {}), spec

def matches(selector, labels):
    return all(labels.get(k) == v for k, v in selector.items())

def main():
    name, rendered, core_out, sources_rs, rules_yml = sys.argv[1:6]
    extra_files = sys.argv[6:]  # rendered secrets, then TOML files (*.toml)
    secrets_docs = [d for f in extra_files if f.endswith(".yaml") for d in yaml.safe_load_all(open(f)) if d]
    tomls = [f for f in extra_files if f.endswith(".toml")]
    docs = [d for d in yaml.safe_load_all(open(rendered)) if d]
    core = [d for d in docs if (d["apiVersion"], d["kind"]) not in CRDS]
    crds = [d for d in docs if (d["apiVersion"], d["kind"]) in CRDS]
    with open(core_out, "w") as f:
        yaml.safe_dump_all(core, f, sort_keys=False)

    # Prometheus Operator objects, which kubernetes-validate has no schema for.
    for d in crds:
        spec = d.get("spec") or {}
        if d["kind"] == "ServiceMonitor":
            if not spec.get("selector") or not all(e.get("port") for e in spec.get("endpoints") or [{}]):
                errors.append(f"ServiceMonitor {d['metadata']['name']}: needs spec.selector and endpoints[].port")
            services = [s for s in docs if s["kind"] == "Service"
                        and matches(spec["selector"].get("matchLabels", {}), s["metadata"].get("labels", {}))]
            ports = {p.get("name") for s in services for p in s["spec"]["ports"]}
            for e in spec.get("endpoints", []):
                if e["port"] not in ports:
                    errors.append(f"ServiceMonitor {d['metadata']['name']}: no selected Service has port {e['port']!r}")
        else:
            expected = yaml.safe_load(open(rules_yml))["groups"]
            if spec.get("groups") != expected:
                errors.append(f"PrometheusRule {d['metadata']['name']}: groups differ from {rules_yml} "
                              "(regenerate it: see the comment at its top)")

    # Flotilla's settings are real ones.
    flags, envs, keys = flotilla_settings(sources_rs)
    used = 0
    for d, labels, spec in pod_specs(docs):
        for c in spec["containers"]:
            if not str(c.get("image", "")).rsplit("/", 1)[-1].startswith("flotilla"):
                continue
            for e in c.get("env", []):
                if e["name"].startswith("FLOTILLA_"):
                    used += 1
                    if e["name"] not in envs:
                        errors.append(f"{d['kind']} {d['metadata']['name']}: {e['name']} is not a flotilla serve setting")
            for a in c.get("args", []):
                if a.startswith("--"):
                    used += 1
                    if a[2:].split("=")[0] not in flags:
                        errors.append(f"{d['kind']} {d['metadata']['name']}: {a} is not a flotilla serve flag")
            if c.get("args", [None])[0] != "serve":
                errors.append(f"{d['kind']} {d['metadata']['name']}: flotilla runs without `serve`")
    for d in docs:
        if d["kind"] == "ConfigMap" and d["metadata"]["name"].startswith("flotilla-env"):
            for k in d.get("data", {}):
                used += 1
                if k not in envs:
                    errors.append(f"ConfigMap {d['metadata']['name']}: {k} is not a flotilla serve setting")
    for t in tomls:
        for k in tomllib.load(open(t, "rb")):
            used += 1
            if k not in keys:
                errors.append(f"{t}: {k!r} is not a key of flotilla serve's --config file")

    # References resolve.
    objects = {(d["kind"], d["metadata"]["name"]): d for d in docs + secrets_docs}
    def need(kind, ref, key=None, where=""):
        obj = objects.get((kind, ref))
        if obj is None:
            errors.append(f"{where}: {kind} {ref!r} is not defined")
        elif key is not None and key not in (obj.get("data") or {}) and key not in (obj.get("stringData") or {}):
            errors.append(f"{where}: {kind} {ref!r} has no key {key!r}")
    refs = 0
    for d, labels, spec in pod_specs(docs):
        where = f"{d['kind']} {d['metadata']['name']}"
        if spec.get("serviceAccountName"):
            refs += 1
            need("ServiceAccount", spec["serviceAccountName"], where=where)
        for v in spec.get("volumes", []):
            srcs = [v] + [s for s in v.get("projected", {}).get("sources", [])]
            for s in srcs:
                for kind, field, namekey in (("Secret", "secret", "secretName"), ("ConfigMap", "configMap", "name")):
                    if field in s:
                        ref = s[field].get(namekey) or s[field].get("name")
                        refs += 1
                        need(kind, ref, where=where)
                        for item in s[field].get("items", []):
                            need(kind, ref, item["key"], where=where)
        for c in spec["containers"]:
            for e in c.get("envFrom", []):
                if "configMapRef" in e:
                    refs += 1
                    need("ConfigMap", e["configMapRef"]["name"], where=where)
                if "secretRef" in e:
                    refs += 1
                    need("Secret", e["secretRef"]["name"], where=where)
            mounts = {m["name"] for m in c.get("volumeMounts", [])}
            vols = {v["name"] for v in spec.get("volumes", [])} | {t["metadata"]["name"] for t in d["spec"].get("volumeClaimTemplates", [])}
            for m in mounts - vols:
                errors.append(f"{where}: volumeMount {m!r} has no volume")
    pods = list(pod_specs(docs))
    def selected(selector):
        return [(d, spec) for d, labels, spec in pods if matches(selector, labels)]
    for d in docs:
        where = f"{d['kind']} {d['metadata']['name']}"
        if d["kind"] == "Service":
            chosen = selected(d["spec"]["selector"])
            refs += 1
            if not chosen:
                errors.append(f"{where}: its selector matches no pod")
            names = {p.get("name") for _, spec in chosen for c in spec["containers"] for p in c.get("ports", [])}
            for p in d["spec"]["ports"]:
                if isinstance(p.get("targetPort"), str) and p["targetPort"] not in names:
                    errors.append(f"{where}: targetPort {p['targetPort']!r} is no container port of its pods")
        elif d["kind"] in ("PodDisruptionBudget", "NetworkPolicy"):
            sel = d["spec"].get("selector", d["spec"].get("podSelector", {})).get("matchLabels", {})
            refs += 1
            if not selected(sel):
                errors.append(f"{where}: its selector matches no pod")
        elif d["kind"] == "HorizontalPodAutoscaler":
            t = d["spec"]["scaleTargetRef"]
            refs += 1
            need(t["kind"], t["name"], where=where)
            if "replicas" in objects.get((t["kind"], t["name"]), {}).get("spec", {}):
                errors.append(f"{where}: {t['name']} sets replicas, which the autoscaler owns")
        elif d["kind"] == "StatefulSet":
            refs += 1
            need("Service", d["spec"]["serviceName"], where=where)

    for e in errors:
        print(f"ERROR {name}: {e}", file=sys.stderr)
    print(len(docs), len(crds), used, refs)
    sys.exit(1 if errors else 0)

main()
PY

# --- the secrets kustomizations, with placeholder files, so they render and their keys check --
# Only the generators and the examples are copied: real key material never enters target/.
secrets="$work/secrets"
for d in "" /cluster; do
  mkdir -p "$secrets$d"
  cp deploy/kubernetes/secrets$d/kustomization.yaml "$secrets$d/"
  for f in "deploy/kubernetes/secrets$d"/*.example; do
    cp "$f" "$secrets$d/$(basename "${f%.example}")"
  done
done
for f in server.pem ca.pem; do
  printf -- '-----BEGIN CERTIFICATE-----\nplaceholder\n-----END CERTIFICATE-----\n' >"$secrets/$f"
done
printf -- '-----BEGIN PRIVATE KEY-----\nplaceholder\n-----END PRIVATE KEY-----\n' >"$secrets/server-key.pem"
printf 'placeholder\n' >"$secrets/cluster/redis-password"
"$py" - "$secrets/api-tokens.toml" <<'PY' || fail "deploy/kubernetes/secrets/api-tokens.toml.example is not a valid --api-tokens file"
import re, sys, tomllib
tokens = tomllib.load(open(sys.argv[1], "rb"))["token"]
assert tokens and all(t.keys() <= {"name", "role", "token", "sha256"} and t["role"] in ("viewer", "operator", "admin")
                      and ("token" in t) != ("sha256" in t) and re.fullmatch("[0-9a-f]{64}", t.get("sha256", "0" * 64))
                      for t in tokens)
PY

# --- render, validate, check, scan: one line per target -------------------------------------
run_target() { # name dir [rendered secrets and TOML files for reference checks...]
  local name=$1 dir=$2 out="$work/$1"
  shift 2
  timeout 60 kubectl kustomize "$dir" >"$out.yaml" 2>"$out.err" ||
    { cat "$out.err" >&2; fail "$name: kubectl kustomize $dir failed"; }
  local facts
  facts=$("$py" "$work/check.py" "$name" "$out.yaml" "$out.core.yaml" \
    worker-common/src/config/sources.rs deploy/prometheus/rules.yml "$@") ||
    fail "$name: the checks above failed"
  # A kind without a schema is only a warning to kubernetes-validate: here it fails (the CRDs
  # it cannot know were split out above).
  local validate
  if ! validate=$(timeout 300 "$venv/bin/kubernetes-validate" -k "$K8S_VERSION" --strict --quiet \
    "$out.core.yaml" 2>&1) || [ -n "$validate" ]; then
    echo "$validate" >&2
    fail "$name: kubernetes-validate failed"
  fi
  local scan
  scan=$(timeout 300 "$venv/bin/checkov" -f "$out.yaml" --framework kubernetes --compact --quiet \
    --skip-download --config-file deploy/kubernetes/.checkov.yaml 2>&1) ||
    { echo "$scan" >&2; fail "$name: checkov found the problems above"; }
  local counts
  counts=$(grep -o 'Passed checks: [1-9][0-9]*, Failed checks: 0' <<<"$scan") ||
    { echo "$scan" >&2; fail "$name: checkov ran no check"; }
  local objects crds settings refs
  read -r objects crds settings refs <<<"$facts"
  printf '%-18s ok: %d objects valid for Kubernetes %s (strict; %d CRD objects checked apart), %d settings and %d references resolved; checkov: %s (skipped: %s)\n' \
    "$name" "$objects" "${K8S_VERSION%.0}" "$crds" "$settings" "$refs" "$counts" "$skipped"
}
skipped=$(sed -n 's/^  - \(CKV[A-Z0-9_]*\)$/\1/p' deploy/kubernetes/.checkov.yaml | paste -sd, -)

run_target secrets "$secrets"
run_target secrets-cluster "$secrets/cluster" "$secrets/cluster/gateway.toml" "$secrets/cluster/coordinator.toml"
run_target standalone deploy/kubernetes/overlays/standalone "$work/secrets.yaml"
run_target cluster deploy/kubernetes/overlays/cluster "$work/secrets.yaml" "$work/secrets-cluster.yaml"
run_target region deploy/kubernetes/overlays/region "$work/secrets.yaml" "$work/secrets-cluster.yaml"

# --- what the cluster and region overlays' NATS and Redis pods run ------------------------
for s in deploy/kubernetes/overlays/cluster/*.sh; do sh -n "$s" || fail "$s: syntax error"; done
if command -v nats-server >/dev/null; then
  for o in cluster region; do
    mkdir -p "$work/nats/$o"
    cp "deploy/kubernetes/overlays/$o/nats.conf" "$work/nats/$o/"
    cp "$secrets/cluster/nats-auth.conf" "$work/nats/$o/auth.conf"
    SERVER_NAME=check timeout 10 nats-server -c "$work/nats/$o/nats.conf" -t >/dev/null 2>"$work/nats/err" ||
      { cat "$work/nats/err" >&2; fail "overlays/$o/nats.conf: nats-server -t refused it"; }
  done
  nats="nats.conf (cluster, region) accepted by nats-server $(nats-server --version | sed 's/.* v//')"
else
  nats="nats.conf not parsed (no nats-server here)"
fi
printf '%-18s ok: start scripts parse (sh -n); %s\n' "nats/redis" "$nats"

scan=$(timeout 300 "$venv/bin/checkov" -f Dockerfile --framework dockerfile --compact --quiet --skip-download 2>&1) ||
  { echo "$scan" >&2; fail "Dockerfile: checkov found the problems above"; }
printf '%-18s ok: builds -p flotilla --bin flotilla (cli/Cargo.toml) with Rust %s (rust-toolchain.toml); checkov: %s\n' \
  "Dockerfile" "$toolchain" "$(grep -o 'Passed checks: [0-9]*, Failed checks: [0-9]*, Skipped checks: [0-9]*' <<<"$scan")"
echo "check_deploy: all passed in $((SECONDS - started)) s"
