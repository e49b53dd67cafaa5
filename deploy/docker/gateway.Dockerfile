# syntax=docker/dockerfile:1
# The meshssh-gateway image, built from the workspace root:
#   docker build -f deploy/docker/gateway.Dockerfile -t meshssh-gateway .
# Stage 1 installs only this member's hash-pinned third-party requirements (a cached layer that
# changes only with the lock), then libs/common and the member itself without dependencies.
FROM python:3.11-slim-bookworm AS build
COPY --from=ghcr.io/astral-sh/uv:0.9 /uv /usr/local/bin/uv
ENV UV_COMPILE_BYTECODE=1 UV_LINK_MODE=copy
RUN uv venv /opt/meshssh
COPY deploy/docker/requirements/gateway.lock /tmp/requirements.lock
RUN uv pip install --python /opt/meshssh/bin/python --require-hashes --no-deps -r /tmp/requirements.lock
WORKDIR /src
COPY libs/common libs/common
COPY services/gateway services/gateway
RUN uv pip install --python /opt/meshssh/bin/python --no-deps ./libs/common ./services/gateway

FROM python:3.11-slim-bookworm

RUN useradd --system --uid 10001 --home-dir /nonexistent --shell /usr/sbin/nologin meshssh
COPY --from=build /opt/meshssh /opt/meshssh
ENV PATH=/opt/meshssh/bin:$PATH PYTHONUNBUFFERED=1
USER 10001
EXPOSE 8090 9106
ENTRYPOINT ["meshssh-gateway"]
