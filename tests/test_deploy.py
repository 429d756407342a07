"""deploy/ proven piece by piece: the image, the compose stack, Prometheus rules, Grafana, systemd, Kubernetes.

No Docker engine, Grafana or cluster runs here, so each piece is checked by the real tool
that judges it (hadolint, the compose-spec schema, promtool, systemd-analyze, the
Kubernetes schemas), cross-checked against the others (ports, paths, names, users), and
run where it can run: the broker config in a real Mosquitto, the health check against a
real daemon, and every dashboard and alert query in a real Prometheus scraping a real
daemon fed with a simulated fleet and an injected anomaly.
"""

from __future__ import annotations

import getpass
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import numpy as np
import orjson
import paho.mqtt.client as mqtt
import pytest
import yaml
from conftest import Client, daemon_config, scrape, wait_until
from paho.mqtt.enums import CallbackAPIVersion

from streamer import config
from streamer.__main__ import build_parser
from streamer.broker import free_port, wait_for_port
from streamer.simulate import publish_fleet

REPO = Path(__file__).resolve().parents[1]
DEPLOY = REPO / "deploy"
DOCKERFILE = DEPLOY / "Dockerfile"
COMPOSE = DEPLOY / "docker-compose.yml"
PROMETHEUS = DEPLOY / "prometheus"
GRAFANA = DEPLOY / "grafana"
DASHBOARD = GRAFANA / "dashboards" / "streamer.json"
UNIT = DEPLOY / "systemd" / "sensor-streamer.service"
K8S = DEPLOY / "k8s"

# Metrics of the snapshot work that the alert rules use: while a daemon does not export
# them, the live test only checks that the expressions using them parse (promtool unit
# tests cover the rules); once it does, their queries must return data like the others.
NOT_YET_EXPORTED = {"streamer_snapshots_total", "streamer_snapshot_age_seconds"}


def tool(name: str) -> str:
    """A command-line tool from this virtual environment (test extra) or the system (scripts/setup)."""
    path = Path(sys.executable).parent / name
    system_path = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/usr/local/sbin"])
    found = str(path) if path.exists() else shutil.which(name, path=system_path)
    assert found, f"{name} is not installed: run ./scripts/setup"
    return found


def run(*cmd: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


# ----------------------------------------------------------------------------- Dockerfile


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of the Dockerfile, continuation lines joined."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def final_stage() -> list[tuple[str, str]]:
    steps = instructions()
    last_from = max(i for i, (word, _) in enumerate(steps) if word == "FROM")
    return steps[last_from:]


def image_env() -> dict[str, str]:
    env: dict[str, str] = {}
    for word, rest in final_stage():
        if word == "ENV":
            env.update(pair.split("=", 1) for pair in shlex.split(rest))
    return env


def image_value(word: str) -> str:
    (value,) = [rest for w, rest in final_stage() if w == word]
    return value


def image_uid() -> int:
    return int(image_value("USER").split(":")[0])


def image_volume() -> str:
    (path,) = json.loads(image_value("VOLUME"))
    return path


def test_dockerfile_lints_clean_and_builds_a_slim_non_root_image():
    lint = run(tool("hadolint"), str(DOCKERFILE))
    assert lint.returncode == 0, lint.stdout + lint.stderr
    froms = [rest for word, rest in instructions() if word == "FROM"]
    assert len(froms) >= 2 and froms[0].endswith(" AS build"), "multi-stage: build, then runtime"
    assert "-slim" in next(
        rest for word, rest in instructions() if word == "ARG" and "IMAGE" in rest
    )
    assert image_uid() > 0
    assert image_value("EXPOSE") == str(config.MetricsConfig().port)
    env = image_env()
    assert env["STREAMER_METRICS_HOST"] == "0.0.0.0"
    assert env["STREAMER_STATE_DIR"] == image_volume() == "/var/lib/streamer"
    assert json.loads(image_value("ENTRYPOINT")) == ["streamer"]
    build_parser().parse_args(json.loads(image_value("CMD")))


def healthcheck_argv() -> list[str]:
    rest = image_value("HEALTHCHECK")
    return json.loads(rest[rest.index("CMD") + 3 :])


def test_healthcheck_passes_on_a_live_daemon_and_fails_without_one(broker, start_daemon):
    argv = [sys.executable, *healthcheck_argv()[1:]]
    d = start_daemon(daemon_config(broker))
    alive = subprocess.run(argv, env={"STREAMER_METRICS_PORT": str(d.metrics_port)}, timeout=10)
    dead = subprocess.run(
        argv, env={"STREAMER_METRICS_PORT": str(free_port())}, capture_output=True, timeout=10
    )
    assert alive.returncode == 0
    assert dead.returncode != 0


def dockerignore_rules() -> list[tuple[bool, re.Pattern]]:
    """(is an exception "!", regex) per .dockerignore line, in Docker's `**`/`*`/`?` syntax."""
    rules = []
    for line in (REPO / ".dockerignore").read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        negate = line.startswith("!")
        pattern = line.lstrip("!").strip("/")
        regex = re.escape(pattern)
        regex = regex.replace(r"\*\*/", "(?:.*/)?").replace(r"\*\*", ".*")
        regex = regex.replace(r"\*", "[^/]*").replace(r"\?", "[^/]").replace(r"\[", "[")
        rules.append((negate, re.compile(regex.replace(r"\]", "]"))))
    return rules


def in_context(rel: str, rules: list[tuple[bool, re.Pattern]]) -> bool:
    """Docker's rule: a pattern matches a path or any of its parents; the last match decides."""
    parts = rel.split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    excluded = False
    for negate, regex in rules:
        if any(regex.fullmatch(p) for p in prefixes):
            excluded = not negate
    return not excluded


def build_context() -> list[str]:
    """Files of the repository that `docker build .` sends, per /.dockerignore."""
    rules = dockerignore_rules()
    exceptions = [regex.pattern for negate, regex in rules if negate]

    def may_hold_files(rel: str) -> bool:
        return in_context(rel, rules) or any(p.startswith(re.escape(rel)) for p in exceptions)

    files = []
    for root, dirs, names in os.walk(REPO):
        base = Path(root).relative_to(REPO)
        dirs[:] = [n for n in dirs if may_hold_files((base / n).as_posix())]
        files += [(base / n).as_posix() for n in names if in_context((base / n).as_posix(), rules)]
    return sorted(files)


def test_build_context_holds_what_the_dockerfile_copies_and_builds_the_package(tmp_path):
    files = build_context()
    sources = [
        src.rstrip("/")
        for word, rest in instructions()
        if word == "COPY" and not rest.startswith("--from")
        for src in rest.split()[:-1]
    ]
    for src in sources:
        assert any(f == src or f.startswith(src + "/") for f in files), f"{src} not in context"
    assert not any(f.split("/")[0] in ("tests", "training", ".venv", ".git") for f in files)
    assert not any("__pycache__" in f or f.endswith(".pyc") for f in files)
    context = tmp_path / "context"
    for rel in files:
        (context / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / rel, context / rel)
    built = run(
        sys.executable,
        "-m",
        "pip",
        "wheel",
        "--quiet",
        "--no-deps",
        "--no-build-isolation",
        "--wheel-dir",
        str(tmp_path / "dist"),
        str(context),
        timeout=120,
    )
    assert built.returncode == 0, built.stderr
    (wheel,) = (tmp_path / "dist").glob("*.whl")
    with zipfile.ZipFile(wheel) as z:
        names = z.namelist()
        metadata = z.read(next(n for n in names if n.endswith(".dist-info/METADATA"))).decode()
    assert "streamer/models/default.onnx" in names
    assert not any(n.startswith("training/") for n in names)
    base_requirements = [
        line
        for line in metadata.splitlines()
        if line.startswith("Requires-Dist:") and ";" not in line
    ]
    assert any("onnxruntime" in r for r in base_requirements)
    assert not any("torch" in r for r in base_requirements)


# ----------------------------------------------------------------------------- compose


def host_path(service: dict[str, Any], container_path: str) -> Path:
    """The repository file a service sees at `container_path` through its bind mounts."""
    for volume in service.get("volumes", []):
        source, target = volume.split(":")[:2]
        if source.startswith(".") and (container_path + "/").startswith(target.rstrip("/") + "/"):
            return (DEPLOY / source / container_path[len(target) :].lstrip("/")).resolve()
    raise AssertionError(f"nothing is mounted at {container_path}")


def test_compose_file_is_valid_and_wired_to_the_repository():
    schema = run(tool("check-jsonschema"), "--builtin-schema", "vendor.compose-spec", str(COMPOSE))
    assert schema.returncode == 0, schema.stdout + schema.stderr
    compose = load_yaml(COMPOSE)
    services = compose["services"]
    for svc in services.values():
        for volume in svc.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("."):
                assert (DEPLOY / source).exists(), f"{source} is mounted but missing"
            else:
                assert source in compose["volumes"], f"undeclared volume {source}"

    daemon, fleet = services["streamer"], services["fleet"]
    assert daemon["read_only"] is True and "/tmp" in daemon["tmpfs"]
    assert f"streamer-state:{image_volume()}" in daemon["volumes"]
    assert fleet["profiles"] == ["sim"] and fleet["image"] == daemon["image"]
    assert fleet["command"][0] == "simulate"
    build_parser().parse_args(fleet["command"])
    for svc in (daemon, fleet):
        assert svc["environment"]["STREAMER_MQTT_HOST"] in services

    broker_conf = host_path(services["mosquitto"], "/mosquitto/config/mosquitto.conf")
    assert f"listener {config.MqttConfig().port}" in broker_conf.read_text()

    scrape_config = load_yaml(PROMETHEUS / "prometheus.yml")
    for job in scrape_config["scrape_configs"]:
        for target in (t for sc in job["static_configs"] for t in sc["targets"]):
            host, port = target.split(":")
            assert (
                host in services and services[host]["environment"]["STREAMER_METRICS_PORT"] == port
            )
    prometheus = services["prometheus"]
    flag = next(c for c in prometheus["command"] if c.startswith("--config.file="))
    assert host_path(prometheus, flag.split("=", 1)[1]) == (PROMETHEUS / "prometheus.yml").resolve()

    grafana = services["grafana"]
    home = grafana["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert host_path(grafana, home) == DASHBOARD.resolve()
    assert grafana["environment"]["GF_AUTH_ANONYMOUS_ENABLED"] == "true"
    provisioning = host_path(grafana, "/etc/grafana/provisioning")
    (provider,) = load_yaml(provisioning / "dashboards" / "sensor-streamer.yml")["providers"]
    assert DASHBOARD.resolve() in host_path(grafana, provider["options"]["path"]).glob("*.json")
    (source,) = load_yaml(provisioning / "datasources" / "prometheus.yml")["datasources"]
    url = urllib.parse.urlparse(source["url"])
    assert url.hostname in services and any(p.endswith(f":{url.port}") for p in prometheus["ports"])
    assert source["jsonData"]["timeInterval"] == scrape_config["global"]["scrape_interval"]


def test_deploy_mosquitto_config_keeps_a_large_qos1_backlog_across_a_restart(tmp_path):
    """More than Mosquitto's default queue (1000) waits for an offline session and survives a restart."""
    port = free_port()
    text = (DEPLOY / "mosquitto" / "mosquitto.conf").read_text()
    text = re.sub(r"(?m)^listener .*$", f"listener {port} 127.0.0.1", text)
    text = re.sub(r"(?m)^persistence_location .*$", f"persistence_location {tmp_path}/", text)
    conf = tmp_path / "mosquitto.conf"
    conf.write_text(f"{text}\nuser {getpass.getuser()}\n")

    def start() -> subprocess.Popen:
        proc = subprocess.Popen([tool("mosquitto"), "-c", str(conf)], stdout=subprocess.DEVNULL)
        wait_for_port(port)
        return proc

    received: list[bytes] = []
    subscribed = threading.Event()
    sub = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="deploy-test", clean_session=False)
    sub.on_message = lambda c, u, m: received.append(m.payload)
    sub.on_subscribe = lambda *a: subscribed.set()
    proc = start()
    try:
        sub.connect("127.0.0.1", port)
        sub.loop_start()
        sub.subscribe("sensors/#", qos=1)
        assert subscribed.wait(5), "no SUBACK"
        sub.disconnect()
        sub.loop_stop()
        pub = Client(port)
        for i in range(1500):
            pub.client.publish("sensors/backlog", str(i), qos=1)
        pub.client.publish("sensors/backlog", "last", qos=1).wait_for_publish(10)
        pub.close()
        proc.terminate()
        proc.wait(10)
        proc = start()
        sub.connect("127.0.0.1", port)
        sub.loop_start()
        wait_until(lambda: len(received) >= 1501, timeout_s=15, what="the whole backlog")
        sub.disconnect()
        sub.loop_stop()
    finally:
        proc.terminate()
        proc.wait(10)
    assert received == [str(i).encode() for i in range(1500)] + [b"last"]


# ----------------------------------------------------------------------------- Prometheus rules


def test_prometheus_config_and_alert_rules_pass_promtool():
    for cmd in (
        ("check", "config", str(PROMETHEUS / "prometheus.yml")),
        ("check", "rules", str(PROMETHEUS / "alerts.yml")),
        ("test", "rules", str(PROMETHEUS / "alerts_test.yml")),
    ):
        result = run(tool("promtool"), *cmd)
        assert result.returncode == 0, f"promtool {' '.join(cmd)}:\n{result.stdout}{result.stderr}"


def alert_rules() -> list[dict[str, Any]]:
    return [rule for g in load_yaml(PROMETHEUS / "alerts.yml")["groups"] for rule in g["rules"]]


def test_every_alert_has_a_unit_test_that_fires_it_and_says_how_bad_it_is():
    tests = load_yaml(PROMETHEUS / "alerts_test.yml")["tests"]
    fired = {
        case["alertname"] for t in tests for case in t["alert_rule_test"] if case["exp_alerts"]
    }
    names = [rule["alert"] for rule in alert_rules()]
    assert set(names) == fired
    assert {
        "StreamAnomalous",
        "ManyStreamsAnomalous",
        "StreamerDown",
        "BrokerDisconnected",
        "IngestErrorsRising",
        "LatencyHigh",
        "SnapshotsFailing",
    } <= set(names)
    for rule in alert_rules():
        assert rule["labels"]["severity"] in ("warning", "critical"), rule["alert"]
        assert rule["annotations"]["summary"] and rule["annotations"]["description"]


# ----------------------------------------------------------------------------- Grafana


def dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text())


def test_dashboard_json_is_what_the_generator_writes_and_lays_out_cleanly(tmp_path):
    out = tmp_path / "streamer.json"
    result = run(sys.executable, str(GRAFANA / "dashboard.py"), "--output", str(out))
    assert result.returncode == 0, result.stderr
    assert out.read_text() == DASHBOARD.read_text(), "run: python deploy/grafana/dashboard.py"
    d = dashboard()
    panels = d["panels"]
    assert len({p["id"] for p in panels}) == len(panels)
    cells: set[tuple[int, int]] = set()
    for p in panels:
        g = p["gridPos"]
        assert g["x"] >= 0 and g["x"] + g["w"] <= 24, p["title"]
        mine = {
            (x, y) for x in range(g["x"], g["x"] + g["w"]) for y in range(g["y"], g["y"] + g["h"])
        }
        assert not mine & cells, f"{p['title']} overlaps another panel"
        cells |= mine
        for target in p.get("targets", []):
            assert target["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
    variables = {v["name"]: v for v in d["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    assert variables["stream"]["query"] == "label_values(streamer_stream_anomaly_score, stream)"
    assert f"/d/{d['uid']}?var-stream=" in DASHBOARD.read_text(), "drill-down to this dashboard"


def dashboard_queries() -> list[str]:
    d = dashboard()
    exprs = [t["expr"] for p in d["panels"] for t in p.get("targets", [])]
    exprs += [a["expr"] for a in d["annotations"]["list"] if "expr" in a]
    return exprs


# ----------------------------------------------------------------------------- systemd


def unit_directives() -> dict[str, list[str]]:
    directives: dict[str, list[str]] = {}
    for line in UNIT.read_text().splitlines():
        if "=" in line and not line.startswith(("#", "[")):
            key, value = line.split("=", 1)
            directives.setdefault(key, []).append(value)
    return directives


def test_systemd_unit_verifies_is_hardened_and_runs_the_example_config(tmp_path):
    u = unit_directives()
    (exec_start,) = u["ExecStart"]
    argv = shlex.split(exec_start)
    unit = tmp_path / UNIT.name
    # verify insists that ExecStart exists: point it at this environment's streamer
    unit.write_text(UNIT.read_text().replace(argv[0], tool("streamer")))
    verify = run(tool("systemd-analyze"), "verify", str(unit))
    assert verify.returncode == 0 and not verify.stderr.strip(), verify.stderr
    security = run(
        tool("systemd-analyze"), "security", "--offline=yes", "--threshold=20", str(unit)
    )
    assert security.returncode == 0, security.stdout[-600:]
    for key, value in {
        "DynamicUser": "yes",
        "ProtectSystem": "strict",
        "NoNewPrivileges": "yes",
        "StateDirectory": "sensor-streamer",
        "ConfigurationDirectory": "sensor-streamer",
        "Restart": "on-failure",
        "ExecReload": "/bin/kill -HUP $MAINPID",
    }.items():
        assert u[key] == [value], key
    args = build_parser().parse_args(argv[1:])
    assert Path(args.config) == Path("/etc/sensor-streamer") / "streamer.toml"
    env = dict(e.split("=", 1) for e in u["Environment"])
    assert env["STREAMER_STATE_DIR"] == "%S/sensor-streamer"
    cfg = config.load(DEPLOY / "systemd" / "streamer.toml", environ={})
    assert cfg.mqtt.qos == 1 and not cfg.mqtt.clean_start and cfg.metrics.host == "127.0.0.1"


# ----------------------------------------------------------------------------- Kubernetes

# The part of the Prometheus Operator's ServiceMonitor CRD that deploy/k8s uses; the core
# schemas of kubernetes-validate do not include CRDs.
SERVICE_MONITOR_SCHEMA = {
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "additionalProperties": False,
    "properties": {
        "apiVersion": {"const": "monitoring.coreos.com/v1"},
        "kind": {"const": "ServiceMonitor"},
        "metadata": {
            "type": "object",
            "required": ["name"],
            "properties": {
                "name": {"type": "string", "pattern": "^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"},
                "labels": {"type": "object", "additionalProperties": {"type": "string"}},
            },
        },
        "spec": {
            "type": "object",
            "required": ["selector", "endpoints"],
            "additionalProperties": False,
            "properties": {
                "selector": {
                    "type": "object",
                    "additionalProperties": False,
                    "properties": {
                        "matchLabels": {
                            "type": "object",
                            "additionalProperties": {"type": "string"},
                        }
                    },
                },
                "endpoints": {
                    "type": "array",
                    "minItems": 1,
                    "items": {
                        "type": "object",
                        "required": ["port"],
                        "additionalProperties": False,
                        "properties": {
                            "port": {"type": "string"},
                            "path": {"type": "string", "pattern": "^/"},
                            "interval": {"type": "string", "pattern": "^[0-9]+(ms|s|m|h)$"},
                            "scheme": {"enum": ["http", "https"]},
                        },
                    },
                },
            },
        },
    },
}


def test_kubernetes_manifests_match_their_schemas_and_each_other(tmp_path):
    docs = {
        doc["kind"]: doc
        for path in sorted(K8S.glob("*.yaml"))
        for doc in yaml.safe_load_all(path.read_text())
    }
    assert set(docs) == {
        "ConfigMap",
        "PersistentVolumeClaim",
        "Deployment",
        "Service",
        "ServiceMonitor",
    }
    for kind, doc in docs.items():
        if kind == "ServiceMonitor":
            jsonschema.validate(doc, SERVICE_MONITOR_SCHEMA)
        else:
            for version in ("1.28", kubernetes_validate.latest_version()):
                kubernetes_validate.validate(doc, version, strict=True)

    deployment, service, monitor = docs["Deployment"], docs["Service"], docs["ServiceMonitor"]
    pod = deployment["spec"]["template"]
    labels = pod["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert service["spec"]["selector"].items() <= labels.items()
    assert (
        monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    )
    (container,) = pod["spec"]["containers"]
    (port,) = container["ports"]
    (service_port,) = service["spec"]["ports"]
    assert service_port["targetPort"] == port["name"] == monitor["spec"]["endpoints"][0]["port"]
    assert service_port["name"] == port["name"]
    assert str(port["containerPort"]) == image_value("EXPOSE")
    assert pod["spec"]["securityContext"]["runAsUser"] == image_uid()
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert (
        deployment["spec"]["replicas"] == 1 and deployment["spec"]["strategy"]["type"] == "Recreate"
    )

    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["spec"]["volumes"]}
    assert volumes["config"]["configMap"]["name"] == docs["ConfigMap"]["metadata"]["name"]
    claim = volumes["state"]["persistentVolumeClaim"]["claimName"]
    assert claim == docs["PersistentVolumeClaim"]["metadata"]["name"]
    assert mounts["state"] == image_volume() and "/tmp" in mounts.values()
    args = build_parser().parse_args(container["args"])
    config_file = Path(args.config)
    assert config_file.parent == Path(mounts["config"])
    toml = tmp_path / config_file.name
    toml.write_text(docs["ConfigMap"]["data"][config_file.name])
    cfg = config.load(toml, environ={})
    assert cfg.metrics.host == "0.0.0.0" and cfg.metrics.port == port["containerPort"]
    assert cfg.state.dir == mounts["state"]
    probes = {container[p]["httpGet"]["path"] for p in ("livenessProbe", "readinessProbe")}
    assert probes == {"/healthz", "/readyz"}


# ----------------------------------------------------------------------------- live Prometheus

SPLIT_SET = re.compile(r"\s+(?:or|and|unless)\s+")
COMPARISON = re.compile(r"(?:==|!=|>=|<=|>|<)(?:\s*bool\b)?")


def split_top_level(expr: str, separator: re.Pattern) -> list[str]:
    """Split `expr` where `separator` matches outside brackets and string literals."""
    parts, start, depth, quote, i = [], 0, 0, "", 0
    while i < len(expr):
        c = expr[i]
        if quote:
            i += 2 if c == "\\" else 1
            quote = "" if c == quote else quote
            continue
        if c in "\"'`":
            quote = c
        elif c in "([{":
            depth += 1
        elif c in ")]}":
            depth -= 1
        elif depth == 0 and (m := separator.match(expr, i)):
            parts.append(expr[start:i])
            start = i = m.end()
            continue
        i += 1
    return [p.strip() for p in [*parts, expr[start:]]]


def alert_signals(expr: str) -> list[str]:
    """What an alert watches: each operand of or/and/unless without its threshold; absent(x) watches x."""
    out = []
    for part in split_top_level(expr, SPLIT_SET):
        absent = re.fullmatch(r"absent\((.*)\)", part, re.S)
        out.append(absent.group(1).strip() if absent else split_top_level(part, COMPARISON)[0])
    return out


def metric_names(expr: str) -> set[str]:
    return set(re.findall(r"\bstreamer_[a-z0-9_]+", expr))


class Prometheus:
    """A real Prometheus on a free port, configured from deploy/prometheus with a 1 s rhythm."""

    def __init__(self, workdir: Path, target: str) -> None:
        cfg = load_yaml(PROMETHEUS / "prometheus.yml")
        cfg["global"] = {"scrape_interval": "1s", "evaluation_interval": "1s"}
        cfg["rule_files"] = [str(PROMETHEUS / f) for f in cfg["rule_files"]]
        (job,) = cfg["scrape_configs"]
        job["static_configs"] = [{"targets": [target]}]
        self.job = job["job_name"]
        conf = workdir / "prometheus.yml"
        conf.write_text(yaml.safe_dump(cfg))
        self.port = free_port()
        self.log = (workdir / "prometheus.log").open("w")
        self.proc = subprocess.Popen(
            [
                tool("prometheus"),
                f"--config.file={conf}",
                f"--storage.tsdb.path={workdir / 'tsdb'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
            ],
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )

    def api(self, path: str, **params: str) -> dict[str, Any]:
        url = f"http://127.0.0.1:{self.port}/api/v1/{path}?{urllib.parse.urlencode(params)}"
        try:
            with urllib.request.urlopen(url, timeout=10) as r:
                return json.loads(r.read())
        except urllib.error.HTTPError as e:  # a bad query answers 400 with the reason as JSON
            return json.loads(e.read())

    def query(self, expr: str) -> list[dict[str, Any]]:
        answer = self.api("query", query=expr)
        assert answer["status"] == "success", f"{expr}: {answer.get('error')}"
        return answer["data"]["result"]

    def ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/-/ready", timeout=2):
                return True
        except OSError:
            return False

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(20)
        self.log.close()


@pytest.fixture
def prometheus_for(tmp_path: Path) -> Iterator:
    started: list[Prometheus] = []

    def start(target: str) -> Prometheus:
        workdir = tmp_path / f"prometheus-{len(started)}"
        workdir.mkdir()
        p = Prometheus(workdir, target)
        started.append(p)
        return p

    yield start
    for p in started:
        p.stop()


INJECTED = [f"injected/spike-{i}" for i in range(6)]
GRAFANA_VARIABLES = {"__rate_interval": "10s", "__interval": "2s", "stream": INJECTED[0]}


def substitute(expr: str) -> str:
    """Grafana's template variables as a dashboard at a 1 s scrape interval would fill them."""
    return re.sub(r"\$\{?(\w+)\}?", lambda m: GRAFANA_VARIABLES[m.group(1)], expr)


def publish_anomalies(port: int) -> None:
    """Quiet sine waves for 120 readings, then a jump of 40 (thousands of sigmas) as the last reading."""
    client = Client(port)
    now = time.time()
    last = None
    for t in range(121):
        for phase, stream in enumerate(INJECTED):
            value = 20 + np.sin(t / 6 + phase) + 0.01 * np.sin(7.3 * t + phase) + 40 * (t == 120)
            payload = orjson.dumps({"value": float(value), "ts": now - 12.1 + 0.1 * t})
            last = client.client.publish(f"sensors/{stream}", payload, qos=1)
    for _ in range(3):
        client.client.publish("sensors/garbage", b"{not json", qos=1)
    last.wait_for_publish(10)
    client.close()


@pytest.mark.slow
def test_every_dashboard_and_alert_query_returns_data_from_a_live_stack(
    broker, start_daemon, prometheus_for, tmp_path
):
    d = start_daemon(
        daemon_config(
            broker,
            STREAMER_ENGINE_WARMUP="30",
            STREAMER_STATE_DIR=str(tmp_path / "state"),
            STREAMER_STATE_SNAPSHOT_INTERVAL_S="1",
        )
    )
    prom = prometheus_for(f"127.0.0.1:{d.metrics_port}")
    stop = threading.Event()
    fleet = threading.Thread(
        target=publish_fleet,
        args=(d.cfg.mqtt, 20, 5.0, 3),
        kwargs={"stop": stop, "anomaly_rate": 0.0},
        daemon=True,
    )
    fleet.start()
    try:
        publish_anomalies(broker.port)
        store = d.engines[0].store

        def injected_anomalous() -> bool:
            with d.pipeline.lock:
                rows = store.rows_of(INJECTED)
                return bool((rows >= 0).all() and store.anomalous[rows].all())

        wait_until(injected_anomalous, timeout_s=20, what="every injected spike scored anomalous")
        wait_until(prom.ready, timeout_s=20, what="Prometheus ready")

        def pending(alert: str) -> set[str]:
            alerts = prom.api("alerts")["data"]["alerts"]
            return {
                a["labels"].get("stream", "") for a in alerts if a["labels"]["alertname"] == alert
            }

        wait_until(
            lambda: set(INJECTED) <= pending("StreamAnomalous") and pending("ManyStreamsAnomalous"),
            timeout_s=30,
            what="the anomaly alerts pending in Prometheus",
        )
        wait_until(
            lambda: prom.query(f'count_over_time(up{{job="{prom.job}"}}[10s]) >= 6'),
            timeout_s=20,
            what="enough scrapes for rate() over 10 s",
        )

        failures = [q for q in map(substitute, dashboard_queries()) if not prom.query(q)]
        assert not failures, f"dashboard queries without data: {failures}"
        streams = prom.api("label/stream/values", **{"match[]": "streamer_stream_anomaly_score"})
        assert set(INJECTED) <= set(streams["data"])

        exported = set(re.findall(r"(?m)^(streamer_\w+)", scrape(d.metrics_port)))
        for rule in alert_rules():
            prom.query(rule["expr"])  # parses
            for signal in alert_signals(rule["expr"]):
                if not (metric_names(signal) & NOT_YET_EXPORTED) - exported:
                    assert prom.query(signal), f"{rule['alert']}: no data for {signal}"
        groups = prom.api("rules")["data"]["groups"]
        health = [(r["name"], r["health"], r.get("lastError")) for g in groups for r in g["rules"]]
        assert len(health) == len(alert_rules())
        assert all(h == "ok" for _, h, _ in health), health

        used = set().union(
            *map(metric_names, [*dashboard_queries(), *(r["expr"] for r in alert_rules())])
        )
        assert used - NOT_YET_EXPORTED <= exported, used - NOT_YET_EXPORTED - exported
    finally:
        stop.set()
        fleet.join(10)
