# syntax=docker/dockerfile:1
# The meshssh-peer image (the DaemonSet): the agent `meshssh-agent` (what `meshssh up` starts),
# which supervises meshssh-sshd and meshssh-relay as child processes. Built from the workspace root:
#   docker build -f deploy/docker/peer.Dockerfile -t meshssh-peer .
FROM python:3.11-slim-bookworm AS build
COPY --from=ghcr.io/astral-sh/uv:0.9 /uv /usr/local/bin/uv
ENV UV_COMPILE_BYTECODE=1 UV_LINK_MODE=copy
RUN uv venv /opt/meshssh
COPY deploy/docker/requirements/peer.lock /tmp/requirements.lock
RUN uv pip install --python /opt/meshssh/bin/python --require-hashes --no-deps -r /tmp/requirements.lock
WORKDIR /src
COPY libs/common libs/common
COPY services/sshd services/sshd
COPY services/relay services/relay
COPY services/agent services/agent
COPY cli cli
RUN uv pip install --python /opt/meshssh/bin/python --no-deps ./libs/common ./services/sshd ./services/relay ./services/agent ./cli

FROM python:3.11-slim-bookworm
RUN apt-get update && apt-get install -y --no-install-recommends nftables openssh-sftp-server && rm -rf /var/lib/apt/lists/*
COPY --from=build /opt/meshssh /opt/meshssh
ENV PATH=/opt/meshssh/bin:$PATH PYTHONUNBUFFERED=1
# Runs as root with a reduced capability set (see deploy/k8s/base/peer.yaml): sshd switches to
# the logged-in user, the relay installs its nftables redirect and listens on port 22.
# The setup key comes from MESHSSH_SETUP_KEY (a Secret), never from the command line.
EXPOSE 22 22022 9103 9104 9105
ENTRYPOINT ["meshssh-agent"]
