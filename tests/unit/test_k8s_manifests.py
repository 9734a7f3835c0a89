"""The Kubernetes manifests and the Dockerfile, checked against the code.

Every YAML file under k8s/ parses; the rendered base and dev overlay validate
against the Kubernetes JSON schemas offline (kubernetes-validate, strict); and
cross-checks fail when the manifests drift from what the code serves and
reads: probe paths and ports, the container commands (parsed by the real
typer CLI), the LIGHTSCHED_* variable names (every pydantic-settings model:
`Settings` and each job's `config_model`), the settings values themselves,
the grace period against the drain and handoff timeouts, and the dev Redis
ACL against the password the scheduler is given.

The kustomizations are rendered here (resources, namespace, images and
strategic-merge `patches` only; anything else is refused), and compared with
`kubectl kustomize` where kubectl exists. The `check_*` functions return
problems as one-line strings; `test_checks_catch_a_broken_copy` runs them on
a deliberately broken copy to show they catch each kind of drift.
"""

from __future__ import annotations

import copy
import difflib
import hashlib
import importlib
import json
import os
import re
import shlex
import shutil
import subprocess
import tomllib
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
K8S = REPO / "k8s"
BASE = K8S / "base"
DEV = K8S / "overlays" / "dev"
DOCKERFILE = REPO / "Dockerfile"

# A version kubernetes-validate ships strict schemas for, old enough that
# every cluster we deploy to understands the manifests.
K8S_VERSION = "1.30.0"
# Seconds a replica needs after its drain to release the lease and exit.
GRACE_MARGIN_S = 5.0
IMAGE_NAME = "lightsched"
CLUSTER_SCOPED = frozenset({"Namespace", "ClusterRole", "ClusterRoleBinding", "PriorityClass", "StorageClass"})
_SUPPORTED_KUSTOMIZE_FIELDS = frozenset({"apiVersion", "kind", "resources", "namespace", "images", "patches"})


class UnsupportedKustomization(ValueError):
    """A kustomization uses a feature this small renderer does not implement."""


# ---------------------------------------------------------------- loading


def load_docs(path: Path) -> list[dict[str, Any]]:
    with path.open(encoding="utf-8") as fh:
        return [doc for doc in yaml.safe_load_all(fh) if doc is not None]


def yaml_files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.suffix in (".yaml", ".yml"))


def strategic_merge(base: Any, patch: Any) -> Any:
    """The subset of strategic merge patch our overlays use: maps merge, `null`
    deletes, lists of named items (containers, env, ports, volumes) and of
    volume mounts merge by key, other lists are replaced."""
    if isinstance(base, dict) and isinstance(patch, dict):
        out = dict(base)
        for key, value in patch.items():
            if value is None:
                out.pop(key, None)
            elif key in out:
                out[key] = strategic_merge(out[key], value)
            else:
                out[key] = copy.deepcopy(value)
        return out
    if isinstance(base, list) and isinstance(patch, list) and patch and all(isinstance(i, dict) for i in base + patch):
        for merge_key in ("name", "mountPath"):
            if all(merge_key in item for item in base + patch):
                out_list = [copy.deepcopy(item) for item in base]
                index = {item[merge_key]: i for i, item in enumerate(out_list)}
                for item in patch:
                    if item[merge_key] in index:
                        pos = index[item[merge_key]]
                        out_list[pos] = strategic_merge(out_list[pos], item)
                    else:
                        out_list.append(copy.deepcopy(item))
                return out_list
    return copy.deepcopy(patch)


def pod_specs(doc: dict[str, Any]) -> list[dict[str, Any]]:
    spec = doc.get("spec") or {}
    kind = doc.get("kind")
    if kind in ("Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job"):
        return [spec["template"]["spec"]]
    if kind == "CronJob":
        return [spec["jobTemplate"]["spec"]["template"]["spec"]]
    if kind == "Pod":
        return [spec]
    return []


def pod_template_labels(doc: dict[str, Any]) -> dict[str, str]:
    spec = doc.get("spec") or {}
    if doc.get("kind") == "CronJob":
        return spec["jobTemplate"]["spec"]["template"].get("metadata", {}).get("labels", {})
    return spec.get("template", {}).get("metadata", {}).get("labels", {})


def _image_name(image: str) -> str:
    name = image.split("@", 1)[0]
    last = name.rsplit("/", 1)[-1]
    return name.rsplit(":", 1)[0] if ":" in last else name


def render(directory: Path) -> list[dict[str, Any]]:
    """`kubectl kustomize directory` for the features our kustomizations use."""
    kust = yaml.safe_load((directory / "kustomization.yaml").read_text(encoding="utf-8"))
    unknown = set(kust) - _SUPPORTED_KUSTOMIZE_FIELDS
    if unknown:
        raise UnsupportedKustomization(
            f"{directory.relative_to(REPO) if directory.is_relative_to(REPO) else directory}/kustomization.yaml "
            f"uses {', '.join(sorted(unknown))}; this renderer supports {', '.join(sorted(_SUPPORTED_KUSTOMIZE_FIELDS))}"
        )
    docs: list[dict[str, Any]] = []
    for res in kust.get("resources", []):
        path = directory / res
        docs.extend(render(path) if path.is_dir() else load_docs(path))
    for patch in kust.get("patches", []):
        if set(patch) != {"path"}:
            raise UnsupportedKustomization(f"patch {patch!r}: only `path:` strategic-merge patches are supported")
        for pdoc in load_docs(directory / patch["path"]):
            hits = [i for i, d in enumerate(docs) if d["kind"] == pdoc["kind"] and d["metadata"]["name"] == pdoc["metadata"]["name"]]
            if len(hits) != 1:
                raise UnsupportedKustomization(f"patch {patch['path']} matches {len(hits)} resources, not 1")
            docs[hits[0]] = strategic_merge(docs[hits[0]], pdoc)
    for image in kust.get("images", []):
        for doc in docs:
            for pod in pod_specs(doc):
                for container in pod.get("containers", []) + pod.get("initContainers", []):
                    if _image_name(container["image"]) != image["name"]:
                        continue
                    name = image.get("newName", image["name"])
                    if "digest" in image:
                        container["image"] = f"{name}@{image['digest']}"
                    else:
                        old_tag = container["image"].rsplit(":", 1)[1] if ":" in container["image"].rsplit("/", 1)[-1] else None
                        tag = image.get("newTag", old_tag)
                        container["image"] = f"{name}:{tag}" if tag else name
    namespace = kust.get("namespace")
    if namespace:
        for doc in docs:
            if doc["kind"] not in CLUSTER_SCOPED:
                doc["metadata"]["namespace"] = namespace
    return docs


# ---------------------------------------------------------------- what the code serves and reads


@dataclass(frozen=True)
class Served:
    """Facts read from the code, to hold the manifests against."""

    liveness_path: str
    readiness_path: str
    metrics_path: str
    route_paths: frozenset[str]
    settings_env: frozenset[str]  # env names read by scheduler.settings.Settings
    env_names: frozenset[str]  # ...plus every job settings model
    console_script: str
    cli: Any  # the click Group behind the console script, or None
    registry: Any  # the JobRegistry named by Settings.jobs, or None
    notes: tuple[str, ...] = field(default=())


def settings_env_names(model: type[Any]) -> set[str]:
    """The environment variable names a pydantic-settings model reads."""
    from pydantic import AliasChoices

    prefix = model.model_config.get("env_prefix", "")
    names: set[str] = set()
    for name, info in model.model_fields.items():
        alias = info.validation_alias or info.alias
        if isinstance(alias, str):
            names.add(alias.upper())
        elif isinstance(alias, AliasChoices):
            names.update(c.upper() for c in alias.choices if isinstance(c, str))
        else:
            names.add(f"{prefix}{name}".upper())
    return names


def _served_paths() -> tuple[str, str, str, frozenset[str]]:
    from prometheus_client import CollectorRegistry

    from observability.health import health_routes

    async def status() -> dict[str, Any]:
        return {}

    def check() -> tuple[bool, str]:
        return True, "ok"

    routes = health_routes(status, check, check, CollectorRegistry())
    by_name = {route.name: route.path for route in routes}
    return by_name["healthz"], by_name["readyz"], by_name["metrics"], frozenset(by_name.values())


def _console_script() -> str:
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))
    scripts = pyproject["project"]["scripts"]
    for name, target in scripts.items():
        if target.startswith("scheduler.cli:"):
            return name
    raise LookupError(f"no console script points at scheduler.cli in pyproject.toml (scripts: {scripts})")


def read_served() -> Served:
    from scheduler.settings import Settings

    notes: list[str] = []
    liveness, readiness, metrics, paths = _served_paths()
    settings_env = frozenset(settings_env_names(Settings))
    env_names = set(settings_env)
    registry = None
    try:
        module_name, _, attr = Settings.model_fields["jobs"].default.partition(":")
        registry = getattr(importlib.import_module(module_name), attr)
        for spec in registry:
            if spec.config_model is not None:
                env_names |= settings_env_names(spec.config_model)
    except ImportError as exc:
        notes.append(f"jobs registry not importable ({exc}); env names checked against Settings only")
    cli = None
    try:
        import typer

        from scheduler.cli import app

        cli = typer.main.get_command(app)
    except ImportError as exc:
        notes.append(f"scheduler.cli not importable ({exc}); commands not checked")
    return Served(liveness, readiness, metrics, paths, settings_env, frozenset(env_names), _console_script(), cli, registry, tuple(notes))


@pytest.fixture(scope="module")
def served() -> Served:
    return read_served()


# ---------------------------------------------------------------- container helpers


def _named(docs: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any] | None:
    for doc in docs:
        if doc["kind"] == kind and doc["metadata"]["name"] == name:
            return doc
    return None


def _where(doc: dict[str, Any], container: dict[str, Any] | None = None) -> str:
    head = f"{doc['kind']}/{doc['metadata']['name']}"
    return f"{head} container {container['name']}" if container else head


def lightsched_containers(docs: list[dict[str, Any]]) -> Iterator[tuple[dict[str, Any], dict[str, Any], dict[str, Any]]]:
    """(doc, pod spec, container) for every container running our image."""
    for doc in docs:
        for pod in pod_specs(doc):
            for container in pod.get("containers", []):
                if _image_name(container["image"]).rsplit("/", 1)[-1] == IMAGE_NAME:
                    yield doc, pod, container


def _config_data(doc: dict[str, Any] | None) -> dict[str, str]:
    if doc is None:
        return {}
    import base64

    data = {k: base64.b64decode(v).decode() for k, v in (doc.get("data") or {}).items()} if doc["kind"] == "Secret" else dict(doc.get("data") or {})
    data.update(doc.get("stringData") or {})
    return data


def container_env(docs: list[dict[str, Any]], container: dict[str, Any], missing: str = "<from outside>") -> dict[str, str]:
    """The container's environment as Kubernetes builds it: envFrom first, then
    `env` (which wins); values from objects not in `docs` become `missing`."""
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        if "configMapRef" in source:
            env.update(_config_data(_named(docs, "ConfigMap", source["configMapRef"]["name"])))
        elif "secretRef" in source:
            env.update(_config_data(_named(docs, "Secret", source["secretRef"]["name"])))
    for item in container.get("env", []):
        ref = item.get("valueFrom")
        if ref is None:
            env[item["name"]] = re.sub(r"\$\((\w+)\)", lambda m: env.get(m.group(1), m.group(0)), item.get("value", ""))
        elif "configMapKeyRef" in ref or "secretKeyRef" in ref:
            key_ref = ref.get("configMapKeyRef") or ref["secretKeyRef"]
            kind = "ConfigMap" if "configMapKeyRef" in ref else "Secret"
            env[item["name"]] = _config_data(_named(docs, kind, key_ref["name"])).get(key_ref["key"], missing)
        else:
            env[item["name"]] = f"<{next(iter(ref))}>"
    return env


@contextmanager
def environment(env: Mapping[str, str]) -> Iterator[None]:
    """os.environ as the container would see it, for LIGHTSCHED_* names only."""
    saved = dict(os.environ)
    try:
        for name in [n for n in os.environ if n.startswith("LIGHTSCHED_")]:
            del os.environ[name]
        os.environ.update(env)
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


def effective_settings(env: Mapping[str, str]) -> Any:
    from scheduler.settings import load_settings

    with environment(env):
        return load_settings(_env_file=None)


def _int_port(pod_container: dict[str, Any], port: int | str) -> int | None:
    if isinstance(port, int):
        return port
    for p in pod_container.get("ports", []):
        if p.get("name") == port:
            return int(p["containerPort"])
    return None


def cli_argv(command: list[str]) -> list[str]:
    """The lightsched argv inside a command, unwrapping `sh -c 'exec ...'`."""
    if len(command) >= 3 and command[0] in ("sh", "/bin/sh", "bash", "/bin/bash") and command[1] == "-c":
        argv = shlex.split(command[2])
        return argv[1:] if argv and argv[0] == "exec" else argv
    return list(command)


# ---------------------------------------------------------------- checks


def check_probes(docs: list[dict[str, Any]], served: Served) -> list[str]:
    """Probe paths and ports, the Service and the scrape annotations match the code."""
    problems: list[str] = []
    expected = {"livenessProbe": served.liveness_path, "readinessProbe": served.readiness_path, "startupProbe": served.liveness_path}
    for doc, _pod, container in lightsched_containers(docs):
        if doc["kind"] != "Deployment":
            continue
        where = _where(doc, container)
        try:
            settings = effective_settings(container_env(docs, container, missing="redis://placeholder:6379/0"))
        except ValueError as exc:
            problems.append(f"{where}: settings do not load: {exc}")
            continue
        ports = {p.get("name"): int(p["containerPort"]) for p in container.get("ports", [])}
        if settings.http_port not in ports.values():
            problems.append(f"{where}: serves HTTP on {settings.http_port} (LIGHTSCHED_HTTP_PORT) but declares ports {ports}")
        for kind in ("livenessProbe", "readinessProbe"):
            if kind not in container:
                problems.append(f"{where}: no {kind}")
        for kind, path in expected.items():
            probe = container.get(kind)
            if probe is None:
                continue
            get = probe.get("httpGet")
            if get is None:
                problems.append(f"{where}: {kind} is not an httpGet probe of {path}")
                continue
            if get.get("path") != path:
                problems.append(f"{where}: {kind} path {get.get('path')!r} is not the served {path!r}")
            port = _int_port(container, get.get("port"))
            if port != settings.http_port:
                problems.append(f"{where}: {kind} port {get.get('port')!r} resolves to {port}, not LIGHTSCHED_HTTP_PORT {settings.http_port}")
        annotations = doc["spec"]["template"].get("metadata", {}).get("annotations", {})
        problems += _check_scrape(where, annotations, settings.http_port, served)
        labels = pod_template_labels(doc)
        for svc in (d for d in docs if d["kind"] == "Service"):
            selector = svc["spec"].get("selector") or {}
            if not selector or any(labels.get(k) != v for k, v in selector.items()):
                continue
            for sp in svc["spec"].get("ports", []):
                target = _int_port(container, sp.get("targetPort", sp["port"]))
                if target != settings.http_port:
                    problems.append(f"{_where(svc)}: targetPort {sp.get('targetPort')!r} resolves to {target}, not {settings.http_port}")
            problems += _check_scrape(_where(svc), svc["metadata"].get("annotations", {}), settings.http_port, served)
    return problems


def _check_scrape(where: str, annotations: dict[str, str], port: int, served: Served) -> list[str]:
    if annotations.get("prometheus.io/scrape") != "true":
        return [f"{where}: no prometheus.io/scrape: \"true\" annotation"]
    problems = []
    if annotations.get("prometheus.io/port") != str(port):
        problems.append(f"{where}: prometheus.io/port {annotations.get('prometheus.io/port')!r} is not {port}")
    if annotations.get("prometheus.io/path", "/metrics") != served.metrics_path:
        problems.append(f"{where}: prometheus.io/path {annotations.get('prometheus.io/path')!r} is not {served.metrics_path!r}")
    return problems


def _usage_error_type() -> type[Exception]:
    import typer

    # typer >= 0.29 vendors click (typer._click); its public BadParameter leads to the base either way.
    return next(c for c in typer.BadParameter.__mro__ if c.__name__ == "ClickException")


def _parse_cli(served: Served, argv: list[str], where: str) -> list[str]:
    if not argv or argv[0] != served.console_script:
        return [f"{where}: runs {argv[:1]}, not the console script {served.console_script!r}"]
    if served.cli is None:
        return []
    if len(argv) < 2 or argv[1] not in served.cli.commands:
        sub = argv[1] if len(argv) > 1 else ""
        return [f"{where}: {sub!r} is not a lightsched command (commands: {', '.join(sorted(served.cli.commands))})"]
    command = served.cli.commands[argv[1]]
    try:
        with command.make_context(argv[1], list(argv[2:])) as ctx:
            params = dict(ctx.params)
    except _usage_error_type() as exc:
        return [f"{where}: `{shlex.join(argv)}` is refused by the CLI: {exc.format_message()}"]
    if argv[1] == "run-job" and served.registry is not None and params.get("job_id") not in served.registry:
        return [f"{where}: run-job {params.get('job_id')!r} is not a registered job (jobs: {', '.join(served.registry.ids)})"]
    return []


def check_commands(docs: list[dict[str, Any]], served: Served) -> list[str]:
    """Container commands and the preStop hook are real CLI invocations."""
    problems: list[str] = []
    for doc, pod, container in lightsched_containers(docs):
        where = _where(doc, container)
        argv = list(container.get("command", [])) + list(container.get("args", []))
        if not argv:
            problems.append(f"{where}: no command; say `lightsched ...` explicitly")
        else:
            problems += _parse_cli(served, argv, where)
        if doc["kind"] == "Deployment":
            if argv[1:2] != ["run"]:
                problems.append(f"{where}: the Deployment must run `lightsched run`, not {argv}")
            problems += _check_prestop(doc, container, served)
        if doc["kind"] == "CronJob" and argv[1:2] == ["run-job"] and served.registry is not None:
            problems += _check_probe_provider(docs, container, argv, where, served.registry)
    return problems


def _check_prestop(doc: dict[str, Any], container: dict[str, Any], served: Served) -> list[str]:
    where = _where(doc, container)
    command = container.get("lifecycle", {}).get("preStop", {}).get("exec", {}).get("command")
    if not command:
        return [f"{where}: no preStop exec hook: a leader would leave without handing off"]
    problems = []
    if any("$(" in part for part in command):
        problems.append(f"{where}: preStop uses $(VAR), which Kubernetes does not expand in lifecycle hooks; use sh -c and $VAR")
    argv = cli_argv(command)
    problems += _parse_cli(served, argv, f"{where} preStop")
    if argv[1:2] != ["handoff"]:
        return problems + [f"{where}: preStop must run `lightsched handoff`, not {argv}"]
    replica = argv[argv.index("--if-replica") + 1] if "--if-replica" in argv[:-1] else None
    match = re.fullmatch(r"\$\{?(\w+)\}?", replica or "")
    if match is None:
        problems.append(f"{where}: preStop handoff needs --if-replica \"$VAR\" naming this pod, got {replica!r}")
    else:
        source = next((e for e in container.get("env", []) if e["name"] == match.group(1)), None)
        if source is None or source.get("valueFrom", {}).get("fieldRef", {}).get("fieldPath") != "metadata.name":
            problems.append(f"{where}: ${match.group(1)} is not set from the pod name (fieldRef metadata.name)")
        elif match.group(1) != "LIGHTSCHED_REPLICA_ID":
            problems.append(f"{where}: --if-replica reads ${match.group(1)}, but the replica's id is LIGHTSCHED_REPLICA_ID")
    if "LIGHTSCHED_REPLICA_ID" not in {e["name"] for e in container.get("env", [])}:
        problems.append(f"{where}: LIGHTSCHED_REPLICA_ID is not set (downward API metadata.name)")
    return problems


def _check_probe_provider(
    docs: list[dict[str, Any]], container: dict[str, Any], argv: list[str], where: str, registry: Any
) -> list[str]:
    """`run-job JOB -p provider=NAME` names a provider the leader's settings configure (the run
    happens on the leader: the Deployment's container, not the CronJob's)."""
    params = {}
    for i, token in enumerate(argv):
        if token in ("-p", "--param") and i + 1 < len(argv):
            key, _, value = argv[i + 1].partition("=")
            params[key] = value
    job_id = argv[2] if len(argv) > 2 else ""
    if job_id not in registry:
        return []
    spec = registry.get(job_id)
    if spec.config_model is None:
        return []
    leader = next((c for d, _p, c in lightsched_containers(docs) if d["kind"] == "Deployment"), container)
    env = container_env(docs, leader, missing="redis://placeholder:6379/0")
    try:
        with environment(env):
            config = spec.config_model()
    except ValueError as exc:
        return [f"{where}: {job_id} settings do not load: {str(exc).splitlines()[0]}"]
    providers = [p.name for p in getattr(config, "providers", [])]
    if "provider" in params and params["provider"] not in providers:
        return [f"{where}: -p provider={params['provider']} is not among the configured providers {providers}"]
    return []


def check_env_names(docs: list[dict[str, Any]], served: Served) -> list[str]:
    """Every LIGHTSCHED_* name in the manifests is read by a settings model, and
    the settings (and their job ids) load as the containers would see them."""
    problems: list[str] = []
    seen: list[tuple[str, str]] = []
    for doc in docs:
        if doc["kind"] in ("ConfigMap", "Secret"):
            seen += [(_where(doc), k) for k in _config_data(doc)]
    for doc, _pod, container in lightsched_containers(docs):
        seen += [(_where(doc, container), e["name"]) for e in container.get("env", [])]
    for where, name in seen:
        if name.startswith("LIGHTSCHED_") and name not in served.env_names:
            close = difflib.get_close_matches(name, sorted(served.env_names), n=1)
            hint = f" (did you mean {close[0]}?)" if close else ""
            problems.append(f"{where}: {name} is read by no settings model{hint}")
    for doc, _pod, container in lightsched_containers(docs):
        env = container_env(docs, container, missing="redis://placeholder:6379/0")
        try:
            settings = effective_settings(env)
        except ValueError as exc:
            problems.append(f"{_where(doc, container)}: settings do not load: {exc}")
            continue
        try:
            from observability.tracing import tracing_export_enabled
        except ImportError:
            pass
        else:
            try:
                tracing_export_enabled(env)
            except ValueError as exc:
                problems.append(f"{_where(doc, container)}: {exc}")
        if served.registry is not None:
            try:
                served.registry.configured(settings.job_schedules, settings.disabled_jobs)
            except (LookupError, ValueError) as exc:
                problems.append(f"{_where(doc, container)}: {exc}")
    return problems


def check_grace_period(docs: list[dict[str, Any]], served: Served) -> list[str]:
    """terminationGracePeriodSeconds covers the preStop handoff, the drain and a margin."""
    problems: list[str] = []
    for doc, pod, container in lightsched_containers(docs):
        if doc["kind"] != "Deployment":
            continue
        where = _where(doc, container)
        try:
            drain_s = effective_settings(container_env(docs, container, missing="redis://placeholder:6379/0")).drain_timeout
        except ValueError as exc:
            problems.append(f"{where}: settings do not load: {exc}")
            continue
        command = container.get("lifecycle", {}).get("preStop", {}).get("exec", {}).get("command") or []
        argv = cli_argv(command)
        handoff_s = 0.0
        if argv:
            if "--timeout" not in argv[:-1]:
                problems.append(f"{where}: the preStop handoff has no --timeout; it could use up the whole grace period")
            else:
                handoff_s = float(argv[argv.index("--timeout") + 1])
        grace_s = float(pod.get("terminationGracePeriodSeconds", 30))
        needed_s = handoff_s + drain_s + GRACE_MARGIN_S
        if grace_s < needed_s:
            problems.append(
                f"{where}: terminationGracePeriodSeconds {grace_s:g} < preStop timeout {handoff_s:g} + "
                f"LIGHTSCHED_DRAIN_TIMEOUT {drain_s:g} + margin {GRACE_MARGIN_S:g}: SIGKILL would cut the drain"
            )
    return problems


def check_references(docs: list[dict[str, Any]]) -> list[str]:
    """ConfigMaps, Secrets and keys the pods refer to exist; selectors select."""
    problems: list[str] = []
    for doc in docs:
        for pod in pod_specs(doc):
            for volume in pod.get("volumes", []):
                if "configMap" in volume and _named(docs, "ConfigMap", volume["configMap"]["name"]) is None:
                    problems.append(f"{_where(doc)}: volume {volume['name']} needs ConfigMap {volume['configMap']['name']}")
            for container in pod.get("containers", []):
                for source in container.get("envFrom", []):
                    for kind, key in (("ConfigMap", "configMapRef"), ("Secret", "secretRef")):
                        if key in source and _named(docs, kind, source[key]["name"]) is None:
                            problems.append(f"{_where(doc, container)}: envFrom needs {kind} {source[key]['name']}")
                for item in container.get("env", []):
                    ref = item.get("valueFrom", {})
                    for kind, key in (("ConfigMap", "configMapKeyRef"), ("Secret", "secretKeyRef")):
                        if key in ref:
                            target = _named(docs, kind, ref[key]["name"])
                            if target is None or ref[key]["key"] not in _config_data(target):
                                problems.append(f"{_where(doc, container)}: {item['name']} needs key {ref[key]['key']} of {kind} {ref[key]['name']}")
        selector = (doc.get("spec") or {}).get("selector", {})
        if doc["kind"] in ("Deployment", "StatefulSet") and any(pod_template_labels(doc).get(k) != v for k, v in selector.get("matchLabels", {}).items()):
            problems.append(f"{_where(doc)}: selector does not match its pod template labels")
    deployments = [d for d in docs if d["kind"] == "Deployment"]
    for doc in docs:
        if doc["kind"] in ("Service", "PodDisruptionBudget"):
            sel = doc["spec"].get("selector") or {}
            sel = sel.get("matchLabels", sel) if doc["kind"] == "PodDisruptionBudget" else sel
            if not any(all(pod_template_labels(d).get(k) == v for k, v in sel.items()) for d in deployments):
                problems.append(f"{_where(doc)}: selector {sel} selects no Deployment's pods")
        if doc["kind"] == "CronJob":
            labels = pod_template_labels(doc)
            for other in docs:
                if other["kind"] in ("Service", "PodDisruptionBudget", "Deployment"):
                    sel = other["spec"].get("selector") or {}
                    sel = sel.get("matchLabels", sel) if other["kind"] != "Service" else sel
                    if sel and all(labels.get(k) == v for k, v in sel.items()):
                        problems.append(f"{_where(doc)}: its pods are selected by {_where(other)}")
    return problems


def check_dockerfile(text: str, served: Served) -> list[str]:
    """The image's default command, user and health check match the code."""
    problems: list[str] = []
    lines = re.sub(r"\\\n", " ", text).splitlines()
    stages = [i for i, line in enumerate(lines) if line.strip().upper().startswith("FROM ")]
    if len(stages) < 2:
        problems.append("Dockerfile: not multi-stage (build in one stage, copy the venv into a slim one)")
    final = lines[stages[-1]:] if stages else lines
    cmd = [line.strip()[4:] for line in final if line.strip().upper().startswith("CMD ")]
    if not cmd:
        problems.append("Dockerfile: no CMD in the final stage")
    else:
        argv = json.loads(cmd[-1])
        problems += _parse_cli(served, argv, "Dockerfile CMD")
        if argv[1:] != ["run"]:
            problems.append(f"Dockerfile: CMD {argv} is not `lightsched run`")
    user = [line.split(None, 1)[1].strip() for line in final if line.strip().upper().startswith("USER ")]
    if not user or user[-1].split(":")[0] in ("root", "0"):
        problems.append("Dockerfile: the final stage does not switch to a non-root USER")
    if any(re.search(r"\b(build-essential|gcc|g\+\+|make)\b", line) for line in final if "apt-get" in line or "apk" in line):
        problems.append("Dockerfile: the final stage installs build tools")
    health = [line for line in final if line.strip().upper().startswith("HEALTHCHECK")]
    if not health:
        problems.append("Dockerfile: no HEALTHCHECK")
    else:
        from scheduler.settings import Settings

        default_port = Settings.model_fields["http_port"].default
        if f"{served.liveness_path}'" not in health[-1] and f'{served.liveness_path}"' not in health[-1]:
            problems.append(f"Dockerfile: HEALTHCHECK does not ask the served liveness path {served.liveness_path!r}")
        if f"LIGHTSCHED_HTTP_PORT', '{default_port}'" not in health[-1]:
            problems.append(f"Dockerfile: HEALTHCHECK does not default to LIGHTSCHED_HTTP_PORT's default {default_port}")
    return problems


def check_all(docs: list[dict[str, Any]], served: Served) -> list[str]:
    return [*check_probes(docs, served), *check_commands(docs, served), *check_env_names(docs, served), *check_grace_period(docs, served)]


# ---------------------------------------------------------------- tests


@pytest.fixture(scope="module")
def base_docs() -> list[dict[str, Any]]:
    return render(BASE)


@pytest.fixture(scope="module")
def dev_docs() -> list[dict[str, Any]]:
    return render(DEV)


def test_every_manifest_parses() -> None:
    files = yaml_files(K8S)
    assert len(files) >= 10, files
    for path in files:
        docs = load_docs(path)
        assert docs, f"{path.relative_to(REPO)} is empty"
        for doc in docs:
            assert isinstance(doc, dict) and "apiVersion" in doc and "kind" in doc, f"{path.relative_to(REPO)}: not a Kubernetes object"


@pytest.mark.parametrize("directory", [BASE, DEV], ids=["base", "dev"])
def test_rendered_manifests_validate_strictly(directory: Path) -> None:
    import kubernetes_validate

    docs = render(directory)
    for doc in docs:
        try:
            kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(f"{_where(doc)} is not valid Kubernetes {K8S_VERSION}: {exc.message} at {'/'.join(map(str, exc.path))}")


def test_base_has_the_required_shape(base_docs: list[dict[str, Any]]) -> None:
    kinds = sorted(f"{d['kind']}/{d['metadata']['name']}" for d in base_docs)
    assert kinds == [
        "ConfigMap/lightsched-settings",
        "CronJob/lightsched-provider-probe",
        "Deployment/lightsched",
        "PodDisruptionBudget/lightsched",
        "Service/lightsched-metrics",
    ]
    deploy = _named(base_docs, "Deployment", "lightsched")
    assert deploy is not None
    pod = deploy["spec"]["template"]["spec"]
    assert deploy["spec"]["replicas"] == 3
    (container,) = pod["containers"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    sc = container["securityContext"]
    assert (sc["readOnlyRootFilesystem"], sc["allowPrivilegeEscalation"], sc["capabilities"]["drop"]) == (True, False, ["ALL"])
    assert {"/tmp"} <= {m["mountPath"] for m in container["volumeMounts"]}
    assert container["resources"]["requests"] and container["resources"]["limits"]
    (term,) = pod["affinity"]["podAntiAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"]
    assert term["podAffinityTerm"]["topologyKey"] == "kubernetes.io/hostname"
    assert term["podAffinityTerm"]["labelSelector"]["matchLabels"] == deploy["spec"]["selector"]["matchLabels"]
    assert container["envFrom"] == [{"configMapRef": {"name": "lightsched-settings"}}]
    secret_refs = [e for e in container["env"] if "secretKeyRef" in e.get("valueFrom", {})]
    assert [e["name"] for e in secret_refs] == ["LIGHTSCHED_REDIS_URL"]
    pdb = _named(base_docs, "PodDisruptionBudget", "lightsched")
    assert pdb is not None and (pdb["spec"].get("maxUnavailable") == 1 or pdb["spec"].get("minAvailable") == 2)
    cron = _named(base_docs, "CronJob", "lightsched-provider-probe")
    assert cron is not None
    spec = cron["spec"]
    assert spec["concurrencyPolicy"] == "Forbid"
    assert spec["startingDeadlineSeconds"] > 0 and spec["jobTemplate"]["spec"]["activeDeadlineSeconds"] > 0
    assert spec["successfulJobsHistoryLimit"] >= 1 and spec["failedJobsHistoryLimit"] >= 1


def test_no_secret_in_the_settings_configmap(base_docs: list[dict[str, Any]]) -> None:
    from scheduler.settings import Settings

    secret_fields = {f"LIGHTSCHED_{n.upper()}" for n, f in Settings.model_fields.items() if "Secret" in str(f.annotation)}
    assert "LIGHTSCHED_REDIS_URL" in secret_fields
    for doc in base_docs:
        if doc["kind"] == "ConfigMap":
            leaked = secret_fields & set(_config_data(doc))
            assert not leaked, f"{_where(doc)} holds secret settings {leaked}; put them in a Secret"
    assert not [d for d in base_docs if d["kind"] == "Secret"], "the base must not ship a Secret"


@pytest.mark.parametrize("check", [check_probes, check_commands, check_env_names, check_grace_period], ids=lambda c: c.__name__)
@pytest.mark.parametrize("directory", [BASE, DEV], ids=["base", "dev"])
def test_manifests_match_the_code(directory: Path, check: Any, served: Served, dev_docs: list[dict[str, Any]]) -> None:
    if check is check_commands and served.cli is None:
        pytest.skip("; ".join(served.notes))
    docs = dev_docs if directory == DEV else render(directory)
    assert check(docs, served) == []


def test_dev_overlay_references_resolve(dev_docs: list[dict[str, Any]]) -> None:
    assert check_references(dev_docs) == []
    namespaces = {d["metadata"].get("namespace") for d in dev_docs if d["kind"] != "Namespace"}
    assert namespaces == {"lightsched-dev"}
    for _doc, _pod, container in lightsched_containers(dev_docs):
        assert container["image"] == "lightsched:dev"


def test_job_settings_models_are_checked(served: Served) -> None:
    if served.registry is None:
        pytest.skip("; ".join(served.notes))
    assert {"LIGHTSCHED_PROVIDER_HEALTH_PROVIDERS", "LIGHTSCHED_DRAIN_TIMEOUT"} <= served.env_names
    assert served.env_names > served.settings_env


def test_dockerfile_matches_the_code(served: Served) -> None:
    assert check_dockerfile(DOCKERFILE.read_text(encoding="utf-8"), served) == []


def test_dev_traces_go_to_the_jaeger_service(dev_docs: list[dict[str, Any]]) -> None:
    jaeger = _named(dev_docs, "Deployment", "jaeger")
    assert jaeger is not None
    (jc,) = jaeger["spec"]["template"]["spec"]["containers"]
    assert {e["name"]: e.get("value") for e in jc["env"]}["COLLECTOR_OTLP_ENABLED"] == "true"
    svc = _named(dev_docs, "Service", "jaeger")
    assert svc is not None
    for doc, _pod, container in lightsched_containers(dev_docs):
        endpoint = urlsplit(container_env(dev_docs, container)["OTEL_EXPORTER_OTLP_ENDPOINT"])
        assert endpoint.hostname == svc["metadata"]["name"], _where(doc, container)
        port = next(p for p in svc["spec"]["ports"] if p["port"] == endpoint.port)
        target = _int_port(jc, port["targetPort"])
        assert target == 4318, f"{_where(doc, container)}: OTLP/HTTP endpoint reaches Jaeger port {target}"


def test_dev_redis_acl_admits_the_schedulers_password(dev_docs: list[dict[str, Any]]) -> None:
    acl = _config_data(_named(dev_docs, "ConfigMap", "redis-acl"))["users.acl"]
    users = {line.split()[1]: line.split()[2:] for line in acl.splitlines() if line.strip()}
    url = urlsplit(_config_data(_named(dev_docs, "Secret", "lightsched-redis"))["LIGHTSCHED_REDIS_URL"])
    rules = users[url.username]
    assert "#" + hashlib.sha256((url.password or "").encode()).hexdigest() in rules
    assert "~{lightsched}:*" in rules and "&{lightsched}:*" in rules and "-@all" in rules
    assert "+@all" not in rules and "allkeys" not in rules
    assert users["default"][0] == "off"


_CONTAINER_COMMANDS = {"object", "memory", "client", "script", "config", "cluster", "acl"}


def test_dev_redis_acl_allows_every_command_the_lua_scripts_call(dev_docs: list[dict[str, Any]]) -> None:
    acl = _config_data(_named(dev_docs, "ConfigMap", "redis-acl"))["users.acl"]
    rules = next(line.split() for line in acl.splitlines() if line.startswith("user lightsched "))
    allowed = {r[1:].lower() for r in rules if r.startswith("+")}
    called: dict[str, str] = {}
    for package in ("leader", "scheduler", "jobs"):
        for path in (REPO / package).rglob("*.py"):
            text = path.read_text(encoding="utf-8")
            for name, sub in re.findall(r"redis\.p?call\(\s*['\"](\w+)['\"](?:\s*,\s*['\"](\w+)['\"])?", text):
                # A container command (OBJECT IDLETIME) is granted per subcommand: +object|idletime.
                full = f"{name.lower()}|{sub.lower()}" if name.lower() in _CONTAINER_COMMANDS and sub else name.lower()
                called.setdefault(full, str(path.relative_to(REPO)))
    assert {"get", "set", "pexpire"} <= set(called), called
    missing = {name: where for name, where in called.items() if name not in allowed}
    assert not missing, f"users.acl denies commands Lua scripts call: {missing}"


def test_render_matches_kubectl_kustomize() -> None:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl not on PATH: the rendering is checked by this file's renderer only")
    for directory in (BASE, DEV):
        proc = subprocess.run([kubectl, "kustomize", str(directory)], capture_output=True, text=True, timeout=60)
        if proc.returncode != 0 and "unknown command" in proc.stderr:
            pytest.skip(f"this kubectl has no kustomize: {proc.stderr.strip()[:200]}")
        assert proc.returncode == 0, proc.stderr
        theirs = sorted(json.dumps(d, sort_keys=True) for d in yaml.safe_load_all(proc.stdout) if d)
        ours = sorted(json.dumps(d, sort_keys=True) for d in render(directory))
        assert ours == theirs, f"{directory.relative_to(REPO)}: this renderer and kustomize disagree"


def test_strict_validation_refuses_an_unknown_field(base_docs: list[dict[str, Any]]) -> None:
    import kubernetes_validate

    deploy = copy.deepcopy(_named(base_docs, "Deployment", "lightsched"))
    assert deploy is not None
    deploy["spec"]["template"]["spec"]["terminationGracePeriodSecond"] = 60
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deploy, K8S_VERSION, strict=True)


def test_renderer_refuses_what_it_cannot_render(tmp_path: Path) -> None:
    (tmp_path / "kustomization.yaml").write_text("resources: []\ncommonLabels: {a: b}\n")
    with pytest.raises(UnsupportedKustomization, match="commonLabels"):
        render(tmp_path)


def _break(path: Path, old: str, new: str) -> None:
    text = path.read_text(encoding="utf-8")
    assert text.count(old) == 1, f"{old!r} is not in {path} exactly once"
    path.write_text(text.replace(old, new, 1), encoding="utf-8")


BREAKAGES = [
    # (file under k8s/, text, replacement, expected problem)
    ("base/deployment.yaml", "path: /readyz", "path: /ready", "readinessProbe path '/ready' is not the served '/readyz'"),
    ("base/deployment.yaml", "- name: http\n", "- name: web\n", "livenessProbe port 'http' resolves to None"),
    ("base/settings-configmap.yaml", "LIGHTSCHED_DRAIN_TIMEOUT:", "LIGHTSCHED_DRAIN_TIMEOUT_S:", "LIGHTSCHED_DRAIN_TIMEOUT_S is read by no settings model (did you mean LIGHTSCHED_DRAIN_TIMEOUT?)"),
    ("base/settings-configmap.yaml", 'LIGHTSCHED_DRAIN_TIMEOUT: "30"', 'LIGHTSCHED_DRAIN_TIMEOUT: "50"', "terminationGracePeriodSeconds 60 < preStop timeout 20 + LIGHTSCHED_DRAIN_TIMEOUT 50"),
    ("base/deployment.yaml", "terminationGracePeriodSeconds: 60", "terminationGracePeriodSeconds: 30", "terminationGracePeriodSeconds 30 <"),
    ("base/settings-configmap.yaml", 'LIGHTSCHED_HTTP_PORT: "9180"', 'LIGHTSCHED_HTTP_PORT: "9181"', "serves HTTP on 9181 (LIGHTSCHED_HTTP_PORT)"),
    ("base/settings-configmap.yaml", 'LIGHTSCHED_DISABLED_JOBS: ""', 'LIGHTSCHED_DISABLED_JOBS: "cleanupp"', "settings name unknown jobs: cleanupp"),
    ("base/settings-configmap.yaml", 'LIGHTSCHED_LEASE_TTL: "15"', 'LIGHTSCHED_LEASE_TTL: "5"', "settings do not load: LIGHTSCHED_"),
    ("base/deployment.yaml", 'command: ["lightsched", "run"]', 'command: ["lightsched", "serve"]', "'serve' is not a lightsched command"),
    ("base/deployment.yaml", '--if-replica "$LIGHTSCHED_REPLICA_ID"', "--if-replica $(LIGHTSCHED_REPLICA_ID)", "Kubernetes does not expand in lifecycle hooks"),
    ("base/deployment.yaml", '" --timeout 20', '" --timeout-s 20', "refused by the CLI"),
    ("base/single-provider-probe-cronjob.yaml", '"provider_health", "-p"', '"provider-health", "-p"', "run-job 'provider-health' is not a registered job"),
    ("base/single-provider-probe-cronjob.yaml", '"provider=openai"', '"provider=opneai"', "-p provider=opneai is not among the configured providers"),
    ("base/settings-configmap.yaml", "LIGHTSCHED_PROVIDER_HEALTH_PROVIDERS", "LIGHTSCHED_PROVIDER_HEALTH_PROVIDER", "LIGHTSCHED_PROVIDER_HEALTH_PROVIDER is read by no settings model"),
    ("overlays/dev/settings-dev.yaml", '"http/protobuf"', '"grpc"', "OTEL_EXPORTER_OTLP_PROTOCOL='grpc' is not supported"),
    ("base/service.yaml", 'prometheus.io/path: "/metrics"', 'prometheus.io/path: "/metric"', "prometheus.io/path '/metric' is not '/metrics'"),
]


@pytest.mark.parametrize(("rel", "old", "new", "expected"), BREAKAGES, ids=[b[3][:40] for b in BREAKAGES])
def test_checks_catch_a_broken_copy(tmp_path: Path, served: Served, rel: str, old: str, new: str, expected: str) -> None:
    if served.cli is None and "CLI" in expected or served.registry is None and ("job" in expected or "provider" in expected):
        pytest.skip("; ".join(served.notes))
    copy_root = tmp_path / "k8s"
    shutil.copytree(K8S, copy_root)  # unbroken, it passes: test_manifests_match_the_code
    _break(copy_root / rel, old, new)
    problems = check_all(render(copy_root / rel.rsplit("/", 1)[0]), served)
    assert any(expected in p for p in problems), problems


def test_dockerfile_check_catches_a_broken_copy(served: Served) -> None:
    text = DOCKERFILE.read_text(encoding="utf-8")
    assert any("/healthz" in p for p in check_dockerfile(text.replace("/healthz", "/health"), served))
    assert any("non-root" in p for p in check_dockerfile(text.replace("USER 10001:10001", "USER root"), served))
    if served.cli is not None:
        assert any("not a lightsched command" in p for p in check_dockerfile(text.replace('"lightsched", "run"]', '"lightsched", "start"]'), served))
