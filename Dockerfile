# syntax=docker/dockerfile:1
# lightsched image: `lightsched run` as a non-root user on python:3.11-slim.
#   docker build -t lightsched:dev .
#   docker run --rm -e LIGHTSCHED_REDIS_URL=redis://host.docker.internal:6379/0 -p 9180:9180 lightsched:dev
# The builder stage makes every wheel and installs them into /opt/venv; the
# final stage gets only that venv: no pip cache, no sources, no build tools.

ARG PYTHON_IMAGE=python:3.11-slim

FROM ${PYTHON_IMAGE} AS builder
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore
RUN python -m venv /opt/venv
WORKDIR /src
# Dependencies first, from pyproject alone: this layer stays cached while only
# the code changes.
COPY pyproject.toml README.md ./
RUN python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" \
        > requirements.txt \
 && /opt/venv/bin/pip wheel --wheel-dir /wheels -r requirements.txt
COPY leader/ leader/
COPY scheduler/ scheduler/
COPY jobs/ jobs/
COPY observability/ observability/
RUN /opt/venv/bin/pip wheel --no-deps --wheel-dir /wheels . \
 && /opt/venv/bin/pip install --no-index --find-links /wheels lightsched \
 && /opt/venv/bin/pip uninstall --yes pip \
 && /opt/venv/bin/lightsched --help > /dev/null

FROM ${PYTHON_IMAGE}
LABEL org.opencontainers.image.title="lightsched" \
      org.opencontainers.image.description="Periodic light jobs in exactly one replica, behind a Redis lease with fencing tokens" \
      org.opencontainers.image.licenses="Apache-2.0"
# The root filesystem is read-only in Kubernetes: no .pyc writes (the venv is
# precompiled), unbuffered logs straight to the container runtime.
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    LIGHTSCHED_LOG_FORMAT=json
RUN groupadd --system --gid 10001 lightsched \
 && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
        --shell /usr/sbin/nologin lightsched
COPY --from=builder /opt/venv /opt/venv
WORKDIR /app
USER 10001:10001
EXPOSE 9180
# No curl in slim: the stdlib asks /healthz; an HTTP error or no answer exits non-zero.
HEALTHCHECK --interval=15s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('LIGHTSCHED_HTTP_PORT', '9180'), timeout=4)"]
# SIGTERM (docker stop, Kubernetes) drains in-flight runs and releases the lease.
STOPSIGNAL SIGTERM
CMD ["lightsched", "run"]
