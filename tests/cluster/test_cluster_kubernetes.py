"""The Kubernetes manifests and the image, checked offline (no cluster, no Docker daemon here).

The YAML is validated against JSON schemas of the parts of the Kubernetes API
(batch/v1 Job, core/v1 PodSpec, Container, ServiceSpec) and of the Dask
operator's ``DaskCluster`` resource (its required fields, as in
dask-kubernetes' ``customresources/templates.yaml``) that the manifests use;
unknown fields are errors, so a typo fails.  Then the manifests are checked
against each other, the settings and the Dockerfile: the image, the ports, the
Service, and the commands, which are parsed by ``dask worker``, ``dask
scheduler`` and ``cfhdask`` themselves.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import jsonschema
import pytest
import yaml
from dask.utils import parse_bytes

from cfhdask._version import __version__
from cfhdask.cli import build_parser
from cfhdask.cluster import kubernetes_kwargs, worker_launch_env
from cfhdask.settings import settings

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
REPO = DEPLOY.parent

_STR = {"type": "string"}
_INT = {"type": "integer"}
_QTY = {"type": ["string", "integer"], "pattern": r"^[0-9]+(\.[0-9]+)?(m|Ki|Mi|Gi|Ti|k|M|G|T)?$"}


def _obj(properties: dict, required: tuple = ()) -> dict:
    return {"type": "object", "properties": properties, "required": list(required),
            "additionalProperties": False}


_PORT_REF = {"type": ["string", "integer"]}
CONTAINER = _obj({
    "name": _STR, "image": _STR,
    "imagePullPolicy": {"enum": ["Always", "IfNotPresent", "Never"]},
    "command": {"type": "array", "items": _STR}, "args": {"type": "array", "items": _STR},
    "env": {"type": "array", "items": _obj({"name": _STR, "value": _STR}, ("name",))},
    "ports": {"type": "array", "items": _obj(
        {"name": {"type": "string", "maxLength": 15}, "containerPort": _INT,
         "protocol": {"enum": ["TCP", "UDP", "SCTP"]}}, ("containerPort",))},
    "resources": _obj({"requests": _obj({"cpu": _QTY, "memory": _QTY}),
                       "limits": _obj({"cpu": _QTY, "memory": _QTY})}),
    "volumeMounts": {"type": "array", "items": _obj({"name": _STR, "mountPath": _STR},
                                                    ("name", "mountPath"))},
    "readinessProbe": {"$ref": "#/$defs/probe"}, "livenessProbe": {"$ref": "#/$defs/probe"},
}, ("name", "image"))
PROBE = _obj({"httpGet": _obj({"port": _PORT_REF, "path": _STR}, ("port",)),
              "initialDelaySeconds": _INT, "periodSeconds": _INT, "timeoutSeconds": _INT})
POD_SPEC = _obj({
    "containers": {"type": "array", "minItems": 1, "items": CONTAINER},
    "volumes": {"type": "array", "items": _obj({
        "name": _STR, "emptyDir": {"type": "object"},
        "configMap": _obj({"name": _STR}, ("name",))}, ("name",))},
    "restartPolicy": {"enum": ["Always", "OnFailure", "Never"]},
}, ("containers",))
SERVICE_SPEC = _obj({
    "type": {"enum": ["ClusterIP", "NodePort", "LoadBalancer"]},
    "selector": {"type": "object", "additionalProperties": _STR},
    "ports": {"type": "array", "items": _obj({"name": _STR, "protocol": {"enum": ["TCP"]},
                                              "port": _INT, "targetPort": _PORT_REF},
                                             ("port",))},
})
METADATA = _obj({"name": {"type": "string", "pattern": r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"}},
                ("name",))
DEFS = {"probe": PROBE}
DASK_CLUSTER = {"$defs": DEFS, **_obj({
    "apiVersion": {"const": "kubernetes.dask.org/v1"}, "kind": {"const": "DaskCluster"},
    "metadata": METADATA,
    "spec": _obj({
        "idleTimeout": _INT,
        "worker": _obj({"replicas": {"type": "integer", "minimum": 1}, "spec": POD_SPEC},
                       ("spec",)),
        "scheduler": _obj({"spec": POD_SPEC, "service": SERVICE_SPEC}, ("spec", "service")),
    }, ("scheduler", "worker")),
}, ("apiVersion", "kind", "metadata", "spec"))}
JOB = {"$defs": DEFS, **_obj({
    "apiVersion": {"const": "batch/v1"}, "kind": {"const": "Job"}, "metadata": METADATA,
    "spec": _obj({"backoffLimit": _INT, "template": _obj({"spec": POD_SPEC}, ("spec",))},
                 ("template",)),
}, ("apiVersion", "kind", "metadata", "spec"))}


def _load(name: str) -> dict:
    docs = list(yaml.safe_load_all((DEPLOY / "kubernetes" / name).read_text()))
    assert len(docs) == 1
    return docs[0]


@pytest.fixture(scope="module")
def manifests() -> dict:
    return {"cluster": _load("daskcluster.yaml"), "job": _load("cfhdask-job.yaml")}


def _containers(manifests) -> list[dict]:
    c = manifests["cluster"]["spec"]
    return [*c["worker"]["spec"]["containers"], *c["scheduler"]["spec"]["containers"],
            *manifests["job"]["spec"]["template"]["spec"]["containers"]]


def _quantity(q) -> int:
    """Bytes of a Kubernetes memory quantity."""
    m = re.fullmatch(r"([0-9.]+)(Ki|Mi|Gi|Ti|k|M|G|T)?", str(q))
    scale = {None: 1, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "k": 10**3,
             "M": 10**6, "G": 10**9, "T": 10**12}[m.group(2)]
    return int(float(m.group(1)) * scale)


def test_manifests_match_their_schemas(manifests):
    jsonschema.validate(manifests["cluster"], DASK_CLUSTER)
    jsonschema.validate(manifests["job"], JOB)
    bad = yaml.safe_load(yaml.safe_dump(manifests["cluster"]))
    bad["spec"]["worker"]["spec"]["containers"][0]["imagePulPolicy"] = "Always"  # a typo
    with pytest.raises(jsonschema.ValidationError, match="imagePulPolicy"):
        jsonschema.validate(bad, DASK_CLUSTER)


def test_every_container_runs_the_default_image(manifests):
    image = settings().cluster.kubernetes.image
    assert image == f"cfhdask:{__version__}" != "ghcr.io/dask/dask:latest"
    assert {c["image"] for c in _containers(manifests)} == {image}
    dockerfile = (DEPLOY / "docker" / "Dockerfile").read_text()
    assert f"docker build -f deploy/docker/Dockerfile -t {image} ." in dockerfile
    assert image in (DEPLOY / "README.md").read_text()


def _dockerfile_lines() -> list[str]:
    """The Dockerfile's instructions, continuation lines joined, comments dropped."""
    text = (DEPLOY / "docker" / "Dockerfile").read_text()
    return [ln for ln in text.replace("\\\n", " ").splitlines()
            if ln.strip() and not ln.startswith("#")]


def _copied(lines: list[str]) -> set[str]:
    """The build-context paths the Dockerfile's COPY instructions read."""
    return {src for ln in lines if ln.startswith("COPY ") for src in shlex.split(ln)[1:-1]}


def test_dockerfile_installs_cfhdask():
    text = (DEPLOY / "docker" / "Dockerfile").read_text()
    lines = _dockerfile_lines()
    base = re.match(r"FROM python:(\d+)\.(\d+)", lines[0])
    assert base and (int(base.group(1)), int(base.group(2))) >= (3, 11)  # requires-python
    copied = _copied(lines)
    assert {"pyproject.toml", "README.md", "cfhdask"} <= copied  # all the build reads
    assert all((REPO / src).exists() for src in copied)
    install = next(ln for ln in lines if "pip install" in ln)
    extras = re.search(r'"\.\[([a-z0-9,]+)\]"', install).group(1).split(",")
    import tomllib

    optional = tomllib.loads((REPO / "pyproject.toml").read_text())["project"][
        "optional-dependencies"]
    assert set(extras) <= set(optional)
    assert "import cfhdask" in install  # the build fails if cfhdask cannot be imported
    assert "OMP_NUM_THREADS=1" in text and any(ln.startswith("USER ") for ln in lines)
    # numba's kernels compiled at build time into a cache the workers' user can write
    env = " ".join(ln for ln in lines if ln.startswith("ENV "))
    cache = re.search(r"NUMBA_CACHE_DIR=(\S+)", env).group(1)
    warm = next(k for k, ln in enumerate(lines) if "python -m cfhdask.warmup" in ln)
    user = next(k for k, ln in enumerate(lines) if ln.startswith("USER "))
    assert lines.index(install) < warm < user
    assert any(f"chown -R cfhdask {cache}" in ln for ln in lines[warm:user])


def test_dockerignore_keeps_the_build_context_small(tmp_path):
    """``docker build .`` sends what the Dockerfile copies, never a venv, git, build outputs,
    caches or data (docker-py's own .dockerignore matcher, on a mock repository tree)."""
    from docker.utils.build import exclude_paths

    tracked = ["pyproject.toml", "README.md", "Makefile", "deploy/docker/Dockerfile",
               "cfhdask/__init__.py", "cfhdask/cfhdask.yaml", "cfhdask/report/templates/a.html",
               "cfhdask/cli/__init__.py", "tests/conftest.py", "docs/scaling.md"]
    left_out = [".venv/bin/python", ".venv/lib/python3.11/site-packages/dask/__init__.py",
                ".git/HEAD", ".git/objects/ab/cdef", "build/lib/cfhdask/__init__.py",
                "dist/cfhdask-0.1.0.whl", "cfhdask.egg-info/PKG-INFO",
                "cfhdask/__pycache__/settings.cpython-311.pyc",
                "tests/io/__pycache__/iohelpers.cpython-311.pyc", ".pytest_cache/v/cache/x",
                ".ruff_cache/0.6/x", ".whl/numpy.whl", "demo_output/report.html",
                "demo_output/cohort.zarr/zarr.json", "cohort.zarr/zarr.json",
                "tests/data/sub-01_bold.nii.gz", "dask-worker-space/worker-1/x",
                "cfhdask-cfh-20261201.log"]
    for rel in tracked + left_out:
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text("x")
    patterns = [ln.strip() for ln in (REPO / ".dockerignore").read_text().splitlines()
                if ln.strip() and not ln.lstrip().startswith("#")]
    sent = exclude_paths(str(tmp_path), patterns,
                         dockerfile="deploy/docker/Dockerfile")
    assert set(tracked) <= sent
    assert not set(left_out) & sent, sorted(set(left_out) & sent)
    real = exclude_paths(str(REPO), patterns, dockerfile="deploy/docker/Dockerfile")
    for src in _copied(_dockerfile_lines()):  # whatever COPY reads is sent, all of it
        path = REPO / src
        files = [path] if path.is_file() else [
            p for p in path.rglob("*") if p.is_file() and "__pycache__" not in p.parts]
        assert files and {str(p.relative_to(REPO)) for p in files} <= real, src


def test_ports_and_service_agree(manifests):
    sched = manifests["cluster"]["spec"]["scheduler"]
    ports = {p["name"]: p["containerPort"] for p in sched["spec"]["containers"][0]["ports"]}
    assert ports == {"tcp-comm": 8786, "http-dashboard": 8787}
    service = sched["service"]
    assert service["selector"] == {"dask.org/cluster-name": manifests["cluster"]["metadata"]
                                   ["name"], "dask.org/component": "scheduler"}
    for port in service["ports"]:
        assert port["targetPort"] in ports and ports[port["targetPort"]] == port["port"]
    for probe in ("readinessProbe", "livenessProbe"):
        assert sched["spec"]["containers"][0][probe]["httpGet"]["port"] in ports


def test_commands_parse_and_match_the_resources(manifests):
    from distributed.cli import dask_scheduler, dask_worker

    k8s = settings().cluster.kubernetes
    worker = manifests["cluster"]["spec"]["worker"]
    container = worker["spec"]["containers"][0]
    assert container["args"][:2] == ["dask", "worker"]
    params = dask_worker.main.make_context("dask worker", container["args"][2:]).params
    assert params["nthreads"] == k8s.threads == int(container["resources"]["limits"]["cpu"])
    assert parse_bytes(params["memory_limit"]) == parse_bytes(k8s.memory) \
        == _quantity(container["resources"]["limits"]["memory"])
    assert container["resources"]["requests"] == container["resources"]["limits"]
    mounts = {m["mountPath"] for m in container["volumeMounts"]}
    assert params["local_directory"] in mounts  # spills to the pod's scratch volume
    dashboard = {p["containerPort"] for p in container["ports"]}
    assert int(params["dashboard_address"]) in dashboard
    env = {e["name"]: e["value"] for e in container["env"]}
    assert env == worker_launch_env(1)  # BLAS pinned, malloc trimming as the embedded workers

    sched = manifests["cluster"]["spec"]["scheduler"]["spec"]["containers"][0]
    assert sched["args"][:2] == ["dask", "scheduler"]
    sparams = dask_scheduler.main.make_context("dask scheduler", sched["args"][2:]).params
    assert int(sparams["port"]) == 8786

    job = manifests["job"]["spec"]["template"]["spec"]
    command = job["containers"][0]["command"]
    assert command[0] == "cfhdask"
    args = build_parser().parse_args(command[1:])
    assert args.command == "run" and args.config.startswith("/config/")
    assert args.scheduler == f"tcp://{manifests['cluster']['metadata']['name']}-scheduler:8786"
    assert args.wait_workers == worker["replicas"]
    assert {v["name"] for v in job["volumes"]} == {m["name"] for m in
                                                   job["containers"][0]["volumeMounts"]}


def test_kube_cluster_from_the_settings_matches_the_manifest(manifests):
    """What ``--cluster kubernetes`` asks the operator for: the manifest's worker."""
    from distributed.cli import dask_worker

    kw = kubernetes_kwargs(settings().cluster.kubernetes)
    container = manifests["cluster"]["spec"]["worker"]["spec"]["containers"][0]
    assert kw["image"] == container["image"]
    assert {k: _quantity(v) if k == "memory" else v for k, v in kw["resources"]["limits"].items()} \
        == {k: _quantity(v) if k == "memory" else v for k, v in
            container["resources"]["limits"].items()}
    assert kw["env"] == {e["name"]: e["value"] for e in container["env"]}
    assert kw["worker_command"][:2] == ["dask", "worker"]
    mine = dask_worker.main.make_context("dask worker", kw["worker_command"][2:]).params
    theirs = dask_worker.main.make_context("dask worker", container["args"][2:]).params
    for key in ("nthreads", "memory_limit"):
        assert mine[key] == theirs[key], key
