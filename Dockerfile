# syntax=docker/dockerfile:1
# The ipledger image named by compose/docker-compose.yaml, compose/kubernetes/ and the Helm chart
# (compose/helm/ipledger): this repository installed into a virtual environment, run as an
# unprivileged user. Build from the repository root:
#
#   docker build -t ipledger:0.1.0 .
#
# Two stages: the first builds the wheel and installs it with its dependencies into /opt/ipledger
# (compilers and pip's caches stay behind); the second is the slim runtime with that venv only.
# Checked by tests/unit/test_deployment.py (parsed, and linted with hadolint when installed);
# Docker cannot run on the development machines, so the image itself is not built in the tests.

ARG PYTHON_VERSION=3.12

FROM python:${PYTHON_VERSION}-slim-bookworm AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
RUN python -m venv /opt/ipledger
# The dependencies first, from pyproject.toml alone, so that a change to the code reuses this layer.
COPY pyproject.toml README.md ./
RUN mkdir service && touch service/__init__.py \
    && /opt/ipledger/bin/pip install . \
    && /opt/ipledger/bin/pip uninstall --yes ipledger
COPY service ./service
RUN /opt/ipledger/bin/pip install --no-deps . \
    && /opt/ipledger/bin/python -m compileall -q /opt/ipledger
# `ipledger init` runs the Alembic scripts of migrations/, which service/adapters/postgres/migrate.py
# looks for next to the installed `service` package (the repository root in a checkout).
COPY migrations ./migrations
RUN site="$(/opt/ipledger/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')" \
    && cp -r migrations "$site/migrations"

FROM python:${PYTHON_VERSION}-slim-bookworm AS runtime
LABEL org.opencontainers.image.title="ipledger" \
      org.opencontainers.image.description="Event-sourced, auditable IPAM for Kubernetes (Cilium cluster-pool allocation)" \
      org.opencontainers.image.licenses="Apache-2.0"
# A fixed numeric uid, so that Kubernetes' runAsNonRoot can check it without a passwd lookup.
RUN groupadd --system --gid 10001 ipledger \
    && useradd --system --uid 10001 --gid ipledger --home-dir /var/lib/ipledger \
       --create-home --shell /usr/sbin/nologin ipledger
COPY --from=build /opt/ipledger /opt/ipledger
# Example event files, for a first pool.configured (`ipledger append /usr/share/ipledger/examples/…`).
COPY examples /usr/share/ipledger/examples
ENV PATH=/opt/ipledger/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    IPLEDGER_DATA_DIR=/var/lib/ipledger
USER 10001:10001
WORKDIR /var/lib/ipledger
ENTRYPOINT ["ipledger"]
CMD ["--help"]
