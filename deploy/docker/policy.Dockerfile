# syntax=docker/dockerfile:1
# The meshssh-policy image, built from the workspace root:
#   docker build -f deploy/docker/policy.Dockerfile -t meshssh-policy .
# Stage 1 installs only this member's hash-pinned third-party requirements (a cached layer that
# changes only with the lock), then libs/common and the member itself without dependencies.
FROM python:3.11-slim-bookworm AS build
COPY --from=ghcr.io/astral-sh/uv:0.9 /uv /usr/local/bin/uv
ENV UV_COMPILE_BYTECODE=1 UV_LINK_MODE=copy
RUN uv venv /opt/meshssh
COPY deploy/docker/requirements/policy.lock /tmp/requirements.lock
RUN uv pip install --python /opt/meshssh/bin/python --require-hashes --no-deps -r /tmp/requirements.lock
WORKDIR /src
COPY libs/common libs/common
COPY services/policy services/policy
RUN uv pip install --python /opt/meshssh/bin/python --no-deps ./libs/common ./services/policy

FROM python:3.11-slim-bookworm

RUN useradd --system --uid 10001 --home-dir /nonexistent --shell /usr/sbin/nologin meshssh
COPY --from=build /opt/meshssh /opt/meshssh
ENV PATH=/opt/meshssh/bin:$PATH PYTHONUNBUFFERED=1
USER 10001
EXPOSE 8080 9101
ENTRYPOINT ["meshssh-policy"]
