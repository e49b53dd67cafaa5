# syntax=docker/dockerfile:1
# The meshssh-sshd image, built from the workspace root:
#   docker build -f deploy/docker/sshd.Dockerfile -t meshssh-sshd .
# Stage 1 installs only this member's hash-pinned third-party requirements (a cached layer that
# changes only with the lock), then libs/common and the member itself without dependencies.
FROM python:3.11-slim-bookworm AS build
COPY --from=ghcr.io/astral-sh/uv:0.9 /uv /usr/local/bin/uv
ENV UV_COMPILE_BYTECODE=1 UV_LINK_MODE=copy
RUN uv venv /opt/meshssh
COPY deploy/docker/requirements/sshd.lock /tmp/requirements.lock
RUN uv pip install --python /opt/meshssh/bin/python --require-hashes --no-deps -r /tmp/requirements.lock
WORKDIR /src
COPY libs/common libs/common
COPY services/sshd services/sshd
RUN uv pip install --python /opt/meshssh/bin/python --no-deps ./libs/common ./services/sshd

FROM python:3.11-slim-bookworm
# SFTP sessions run the system sftp-server as the logged-in user.
RUN apt-get update && apt-get install -y --no-install-recommends openssh-sftp-server && rm -rf /var/lib/apt/lists/*
RUN useradd --system --uid 10001 --home-dir /nonexistent --shell /usr/sbin/nologin meshssh
COPY --from=build /opt/meshssh /opt/meshssh
ENV PATH=/opt/meshssh/bin:$PATH PYTHONUNBUFFERED=1
# Runs as root: it switches to the logged-in user (SPEC §7). The pod drops every capability
# it does not need (see deploy/k8s).
EXPOSE 22022 9103
ENTRYPOINT ["meshssh-sshd"]
