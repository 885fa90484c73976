# syntax=docker/dockerfile:1
#
# hotmesh daemon image: watches /data/inbox, publishes meshes + reports to /data/outbox,
# keeps its SQLite ledger, checkpoints, logs and the nvdiffrast build cache in /data/state.
#
#   docker compose up -d --build          # see docker-compose.yml (GPU, volumes, healthcheck)
#   docker build -t hotmesh . && docker run --gpus all --shm-size 8g --stop-timeout 90 \
#       -v "$PWD/inbox:/data/inbox" -v "$PWD/outbox:/data/outbox" -v hotmesh-state:/data/state hotmesh
#
# Host requirements: an NVIDIA driver that supports CUDA 13.0 (R580 or newer) and the NVIDIA Container
# Toolkit (for --gpus / the compose GPU reservation). Without a GPU, run it with -e HOTMESH_GPUS=cpu and no
# --gpus: jobs run on the CPU and the refine stage is skipped (the report says so).
#
# Folder ownership: the container runs as uid/gid 10001 (build args HOTMESH_UID/HOTMESH_GID). Bind-mounted
# inbox/outbox keep the host's owner; docker/entrypoint.sh checks at start that the outbox and state are
# writable and the inbox readable, and otherwise stops (exit 78) printing the chown to run on the host.
#
# What was verified, and how: tests/test_docker.py runs the entrypoint script and the exact HEALTHCHECK command
# outside Docker (the check against a real daemon's /health). On a machine whose network reaches Debian and PyPI
# but not Docker Hub or download.pytorch.org, this file was built (Docker 20.10, legacy builder) with
# --build-arg CUDA_IMAGE=<a Debian bookworm rootfs> --build-arg TORCH_INDEX_URL=https://pypi.org/simple and run
# CPU-only: a root-owned outbox stopped it with exit 78 and the chown hint; after the chown the daemon started, the
# HEALTHCHECK reported healthy, `docker exec … hotmesh status` read the ledger, a small job finished, and
# `docker stop` ended it cleanly (exit 0). Not verified: the CUDA 13.0 Ubuntu 24.04 base itself (its package
# names, nvcc for the nvdiffrast build), GPUs inside a container, and Compose v2 (only docker-compose 1.29 `config`).

# CUDA 13.0 *devel*: the prebuilt pytorch3d wheel (easypytorch3d 0.7.9.post1) targets cu130, and
# diffrp-nvdiffrast compiles its CUDA plugin at first use, which needs nvcc at run time, not just
# at build time. Ubuntu 24.04 ships Python 3.12 (project needs >=3.11).
ARG CUDA_IMAGE=nvidia/cuda:13.0.0-devel-ubuntu24.04
FROM ${CUDA_IMAGE}

# torch must be a cu130 build in [2.11, 2.13) for easypytorch3d to load.
ARG TORCH_VERSION=2.12.1
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cu130
# Match this to the host user that owns ./inbox and ./outbox if you bind-mount them.
ARG HOTMESH_UID=10001
ARG HOTMESH_GID=10001

ENV DEBIAN_FRONTEND=noninteractive

# python3-dev + build-essential + ninja-build: torch.utils.cpp_extension (nvdiffrast JIT) needs
# Python.h, a host C++ compiler and ninja. git: some source installs need it. tini: PID 1 that
# forwards SIGTERM to the daemon and reaps its worker child processes. libgl1 libopengl0: pymeshlab links libGL.so.1
# and its meshing plugin libOpenGL.so.0 (not in its wheel; seen missing on a CUDA image, where the plugin then
# silently fails to load and the decimation filter does not exist).
RUN apt-get update \
 && apt-get install -y --no-install-recommends \
        python3 python3-venv python3-dev \
        build-essential ninja-build git \
        tini ca-certificates \
        libgl1 libopengl0 \
 && rm -rf /var/lib/apt/lists/*

ENV VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

RUN python3 -m venv /opt/venv \
 && pip install --no-cache-dir --upgrade pip

# torch first, from the cu130 index (PyPI's default torch would be a different CUDA build).
RUN pip install --no-cache-dir "torch==${TORCH_VERSION}" --index-url "${TORCH_INDEX_URL}"

# Dependencies in their own layer: only pyproject.toml is copied, its dependency lists (with the gpu and ray
# extras) are installed, so editing source does not re-download everything. No stub package folders: the package
# list in pyproject.toml names every subpackage, and a stub tree falls behind it.
WORKDIR /opt/hotmesh
COPY pyproject.toml ./
RUN python3 -c "import tomllib; p = tomllib.load(open('pyproject.toml', 'rb'))['project']; \
print('\n'.join(p['dependencies'] + p['optional-dependencies']['gpu'] + p['optional-dependencies']['ray']))" \
        > /tmp/requirements.txt \
 && pip install --no-cache-dir -r /tmp/requirements.txt

# The whole source tree stays in the image (editable install, no dependency left to fetch). A plain wheel install
# works too: the report template and the 3-D viewer bundle are package data (pyproject.toml).
COPY . /opt/hotmesh
RUN pip install --no-cache-dir --no-deps -e /opt/hotmesh
# the report's 3-D viewer (<model-viewer>) ships inside the pipeline package (pipeline/vendor/model-viewer): no npm
# Ubuntu 24.04 images ship a user "ubuntu" (uid/gid 1000); drop it so HOTMESH_UID=1000 also works.
RUN chmod 0755 /opt/hotmesh/docker/entrypoint.sh \
 && (userdel --remove ubuntu 2>/dev/null || true) \
 && groupadd --gid "${HOTMESH_GID}" hotmesh \
 && useradd --uid "${HOTMESH_UID}" --gid "${HOTMESH_GID}" --no-create-home --home-dir /data \
        --shell /usr/sbin/nologin hotmesh \
 && mkdir -p /data/inbox /data/outbox /data/state/torch_extensions \
 && chown -R hotmesh:hotmesh /data

# Folders via env (not CLI flags) so compose/`docker run -e` and every `hotmesh` subcommand (status, cancel, …
# through `docker exec`) agree on them. TORCH_EXTENSIONS_DIR on the state volume: nvdiffrast is compiled once
# and reused across container restarts (the worker only sets it if unset). HOTMESH_OPS_HTTP_PORT: /health (the
# HEALTHCHECK below) and /metrics, on the container's loopback; set HOTMESH_OPS_HTTP_HOST=0.0.0.0 and publish
# the port to scrape metrics from outside.
ENV HOTMESH_INBOX=/data/inbox \
    HOTMESH_OUTBOX=/data/outbox \
    HOTMESH_STATE=/data/state \
    HOTMESH_GPUS=auto \
    HOTMESH_OPS_HTTP_PORT=9180 \
    TORCH_EXTENSIONS_DIR=/data/state/torch_extensions

USER hotmesh
WORKDIR /data
VOLUME ["/data/state"]

# Healthy = the daemon's /health answers 200: its main loop ticks (a stuck loop answers 503, a dead daemon
# nothing). daemon/healthcheck.py reads ops.http_port/http_host like the daemon (config file + env).
HEALTHCHECK --interval=30s --timeout=10s --start-period=60s --retries=3 \
    CMD ["python", "-m", "daemon.healthcheck"]

# SIGTERM makes the daemon finish at the next checkpoint (up to jobs.shutdown_grace_seconds=60),
# so give it a longer stop timeout (compose: stop_grace_period: 90s; docker run: --stop-timeout 90).
STOPSIGNAL SIGTERM
# tini: PID 1, forwards SIGTERM and reaps workers; then the folder check (docker/entrypoint.sh), then CMD.
ENTRYPOINT ["/usr/bin/tini", "--", "/opt/hotmesh/docker/entrypoint.sh"]
CMD ["hotmesh", "run"]
