"""The project's images, built and run for real (``make test-docker``).

A Docker daemon is started when none answers (and stopped at the end); Debian's ``docker.io`` must be installed
(``.ci/run`` installs it with ``debootstrap`` and ``docker-compose``). The Dockerfile's build arguments point at
today's public registries; where one is unreachable (Docker Hub, the PyTorch index) the session builds a local
stand-in and says so in the test summary: a Debian bookworm base from ``debootstrap`` with Debian's Python 3.11 for
``python:3.11-slim``, Debian's ``redis-server`` for ``redis:7-alpine``, and an index served from this machine over
the torch CPU wheel in pip's find-links folder. Everything the session makes (images, containers, volumes, the
compose project) carries one random prefix and is removed at the end.
"""

from __future__ import annotations

import configparser
import http.server
import secrets
import shutil
import socketserver
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

ROOT = Path(__file__).resolve().parent.parent
STANDIN = Path(__file__).resolve().parent / "standin"
PREFIX = f"fvsteer-test-{secrets.token_hex(3)}"
PUBLIC_BASE = "python:3.11-slim"
PUBLIC_REDIS = "redis:7-alpine"
PUBLIC_TORCH_INDEX = "https://download.pytorch.org/whl/cpu"
TORCH_VERSION = "2.13.0"
NOTES: list[str] = []  # what the session had to stand in, for the summary


def docker(*args: str, timeout: float = 120, check: bool = True, stdin: bytes | None = None
           ) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(["docker", *args], capture_output=True, timeout=timeout, input=stdin,
                            text=stdin is None)
    out = result.stdout if isinstance(result.stdout, str) else result.stdout.decode(errors="replace")
    err = result.stderr if isinstance(result.stderr, str) else result.stderr.decode(errors="replace")
    if check and result.returncode != 0:
        raise RuntimeError(f"docker {' '.join(args)} exited {result.returncode}:\n{out[-3000:]}\n{err[-3000:]}")
    return subprocess.CompletedProcess(result.args, result.returncode, out, err)


def daemon_answers() -> bool:
    return subprocess.run(["docker", "info"], capture_output=True, timeout=30).returncode == 0


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if NOTES:
        terminalreporter.section("docker: stand-ins and measurements")
        for note in NOTES:
            terminalreporter.write_line(note)


@pytest.fixture(scope="session")
def daemon() -> Iterator[None]:
    """A Docker daemon: the running one, or one started here and stopped at the end."""
    if shutil.which("docker") is None or (not daemon_answers() and shutil.which("dockerd") is None):
        pytest.fail("make test-docker needs Docker: apt-get install docker.io (.ci/run installs it)")
    started: subprocess.Popen[bytes] | None = None
    if not daemon_answers():
        log = open(Path(tempfile.gettempdir()) / f"{PREFIX}-dockerd.log", "wb")  # noqa: SIM115 (lives with dockerd)
        started = subprocess.Popen(["dockerd"], stdout=log, stderr=log, start_new_session=True)
        deadline = time.monotonic() + 60
        while not daemon_answers():
            if started.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"dockerd did not start: {Path(log.name).read_text(errors='replace')[-2000:]}")
            time.sleep(0.5)
        NOTES.append("started dockerd for the session (stopped at its end)")
    try:
        yield
    finally:
        for container in docker("ps", "-aq", "--filter", f"name={PREFIX}", check=False).stdout.split():
            docker("rm", "-f", "-v", container, check=False)
        for volume in docker("volume", "ls", "-q", "--filter", f"name={PREFIX}", check=False).stdout.split():
            docker("volume", "rm", "-f", volume, check=False)
        for network in docker("network", "ls", "-q", "--filter", f"name={PREFIX}", check=False).stdout.split():
            docker("network", "rm", network, check=False)
        images = docker("images", "--format", "{{.Repository}}:{{.Tag}}", check=False).stdout.split()
        for image in [image for image in images if image.startswith(PREFIX)]:
            docker("rmi", "-f", image, check=False, timeout=300)
        docker("image", "prune", "-f", check=False, timeout=300)  # the builds' untagged intermediate layers
        if started is not None:
            started.terminate()
            try:
                started.wait(timeout=60)
            except subprocess.TimeoutExpired:
                started.kill()


def pip_setting(name: str) -> str | None:
    """A value of this machine's pip configuration (``pip config list``): the CA bundle, the find-links folder."""
    listed = subprocess.run(["python3", "-m", "pip", "config", "list"], capture_output=True, text=True).stdout
    for line in listed.splitlines():
        key, _, value = line.partition("=")
        if key.split(".")[-1] == name:
            return value.strip().strip("'\"")
    return None


def debian_mirror() -> str:
    sources = Path("/etc/apt/sources.list.d/debian.sources")
    if sources.exists():
        parser = configparser.ConfigParser(strict=False)
        parser.read_string("[s]\n" + sources.read_text().split("\n\n")[0])
        uris = parser.get("s", "uris", fallback="").split()
        if uris:
            return uris[0]
    return "http://deb.debian.org/debian"


def pulled(image: str) -> bool:
    """Whether ``image`` is here or can be pulled (a minute at most: an unreachable registry fails sooner)."""
    if docker("image", "inspect", image, check=False).returncode == 0:
        return True
    try:
        return docker("pull", image, timeout=60, check=False).returncode == 0
    except subprocess.TimeoutExpired:
        return False


@dataclass
class BuildInputs:
    base_image: str
    redis_image: str
    torch_index: str
    build_args: list[str] = field(default_factory=list)


def _standin_context(workdir: Path) -> Path:
    context = workdir / "standin"
    shutil.copytree(STANDIN, context)
    bundle = pip_setting("cert") or "/etc/ssl/certs/ca-certificates.crt"
    shutil.copy(bundle, context / "ca-bundle.crt")
    return context


def _debian_base(workdir: Path) -> str:
    if shutil.which("debootstrap") is None:
        pytest.fail("Docker Hub is unreachable and debootstrap is missing: apt-get install debootstrap")
    root = workdir / "rootfs"
    subprocess.run(["debootstrap", "--variant=minbase", "bookworm", str(root), debian_mirror()], check=True,
                   capture_output=True, timeout=900)
    tag = f"{PREFIX}-debian:bookworm"
    tar = subprocess.run(["tar", "-C", str(root), "-c", "."], capture_output=True, check=True, timeout=300).stdout
    docker("import", "-", tag, stdin=tar, timeout=300)
    shutil.rmtree(root, ignore_errors=True)
    return tag


def _standin(context: Path, dockerfile: str, debian: str, tag: str) -> str:
    docker("build", "--network", "host", "-f", str(context / dockerfile), "--build-arg", f"DEBIAN_BASE={debian}",
           "-t", tag, str(context), timeout=900)
    return tag


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


def _local_torch_index(workdir: Path) -> str:
    """A PEP 503 index holding only torch's CPU wheel from pip's find-links folder, served on the loopback (the
    builds run with ``--network host``); torch's own dependencies come from PIP_INDEX_URL."""
    links = Path(pip_setting("find-links") or "/opt/wheels")
    wheels = sorted(links.glob(f"torch-{TORCH_VERSION}+cpu-*.whl"))
    if not wheels:
        pytest.fail(f"the PyTorch index is unreachable and no torch {TORCH_VERSION}+cpu wheel lies in {links}")
    folder = workdir / "index" / "simple" / "torch"
    folder.mkdir(parents=True)
    (folder / wheels[0].name).symlink_to(wheels[0])
    (folder / "index.html").write_text(f'<html><body><a href="{wheels[0].name}">{wheels[0].name}</a></body></html>')
    handler = lambda *args: _Quiet(*args, directory=str(workdir / "index"))  # noqa: E731
    server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return f"http://127.0.0.1:{server.server_address[1]}/simple"


@pytest.fixture(scope="session")
def build_inputs(daemon: None, tmp_path_factory: pytest.TempPathFactory) -> BuildInputs:
    """The base images and torch index the Dockerfile's arguments name: the public ones, or stand-ins."""
    workdir = tmp_path_factory.mktemp("docker")
    inputs = BuildInputs(PUBLIC_BASE, PUBLIC_REDIS, PUBLIC_TORCH_INDEX)
    need_base, need_redis = not pulled(PUBLIC_BASE), not pulled(PUBLIC_REDIS)
    if need_base or need_redis:
        started = time.monotonic()
        debian = _debian_base(workdir)
        context = _standin_context(workdir)
        if need_base:
            inputs.base_image = _standin(context, "python.Dockerfile", debian, f"{PREFIX}-python:3.11")
            NOTES.append(f"{PUBLIC_BASE} unreachable: stand-in {inputs.base_image} (debootstrap bookworm, Debian's "
                         "Python 3.11, this network's CA bundle for pip)")
        if need_redis:
            inputs.redis_image = _standin(context, "redis.Dockerfile", debian, f"{PREFIX}-redis:7")
            NOTES.append(f"{PUBLIC_REDIS} unreachable: stand-in {inputs.redis_image} (Debian's redis-server, "
                         "protected mode off as in the official image)")
        NOTES.append(f"stand-in images built in {time.monotonic() - started:.0f} s")
    try:
        reachable = httpx.get(f"{PUBLIC_TORCH_INDEX}/torch/", timeout=15).status_code == 200
    except httpx.HTTPError:
        reachable = False
    if not reachable:
        inputs.torch_index = _local_torch_index(workdir)
        NOTES.append(f"{PUBLIC_TORCH_INDEX} unreachable: torch {TORCH_VERSION}+cpu from a local index "
                     f"({inputs.torch_index})")
    inputs.build_args = ["--build-arg", f"BASE_IMAGE={inputs.base_image}", "--build-arg",
                         f"TORCH_INDEX={inputs.torch_index}"]
    return inputs


@dataclass(frozen=True)
class Image:
    tag: str
    size_bytes: int
    build_seconds: float


@pytest.fixture(scope="session")
def image(build_inputs: BuildInputs) -> Image:
    """The project's image, built from the repository's Dockerfile."""
    tag = f"{PREFIX}-fvsteer:test"
    started = time.monotonic()
    docker("build", "--network", "host", *build_inputs.build_args, "-t", tag, str(ROOT), timeout=1800)
    seconds = time.monotonic() - started
    size = int(docker("image", "inspect", "-f", "{{.Size}}", tag).stdout.strip())
    NOTES.append(f"image {tag}: built in {seconds:.0f} s, {size / 1e9:.2f} GB")
    layers = docker("history", "--format", "{{.Size}}\t{{.CreatedBy}}", tag).stdout.splitlines()
    NOTES.extend(f"  {line.split(chr(9))[0]:>8}  {line.split(chr(9))[1][:100]}" for line in layers
                 if not line.startswith("0B"))
    return Image(tag, size, seconds)


def wait_ready(url: str, timeout: float = 240) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/readyz", timeout=3).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise AssertionError(f"{url}/readyz did not answer 200 within {timeout} s")


def container_url(name: str) -> str:
    published = docker("port", name, "8000/tcp").stdout.split()[0]  # 127.0.0.1:NNNNN
    return f"http://{published}"

