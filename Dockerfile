# dicomnode container image.
#   docker build -t dicomnode .
#   docker run --init -p 11112:11112 -p 9112:9112 -v dicomnode-data:/var/lib/dicomnode \
#       -v "$PWD/dicomnode.yaml:/etc/dicomnode/dicomnode.yaml:ro" -v "$PWD/rules:/etc/dicomnode/rules:ro" dicomnode
# The image's default config is conf/dicomnode.yaml; storage lives on the /var/lib/dicomnode volume and the
# metrics endpoint listens on all interfaces inside the container (both set below with DICOMNODE_* vars).

# --- builder: compilers allowed here, only wheels leave this stage ------------------------------------
FROM python:3.11-slim AS builder
# Build tools only for dependencies that ship no wheel for this platform; Debian's current versions.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends build-essential \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY pyproject.toml README.md ./
COPY dicomnode ./dicomnode
RUN pip wheel --no-cache-dir --wheel-dir /wheels .

# --- runtime: no compilers, non-root ----------------------------------------------------------------------
FROM python:3.11-slim
LABEL org.opencontainers.image.title="dicomnode" \
      org.opencontainers.image.description="DICOM node between scanners and the PACS: receive, route, process, send"
ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    TCP_NODELAY=1 \
    DICOMNODE_STORAGE__PATH=/var/lib/dicomnode \
    DICOMNODE_RULES__PATH=/etc/dicomnode/rules \
    DICOMNODE_METRICS__HOST=0.0.0.0
RUN groupadd --system --gid 10001 dicomnode \
    && useradd --system --uid 10001 --gid dicomnode --home-dir /var/lib/dicomnode --no-create-home \
       --shell /usr/sbin/nologin dicomnode \
    && install -d -o dicomnode -g dicomnode -m 0700 /var/lib/dicomnode \
    && install -d -o root -g dicomnode -m 0750 /etc/dicomnode /etc/dicomnode/rules
# The wheels are this project's and its locked dependencies', built above: install them offline.
# hadolint ignore=DL3013
RUN --mount=type=bind,from=builder,source=/wheels,target=/wheels \
    pip install --no-cache-dir --no-index --find-links=/wheels dicomnode
COPY --chown=root:dicomnode --chmod=0640 conf/dicomnode.yaml /etc/dicomnode/dicomnode.yaml
USER 10001:10001
WORKDIR /var/lib/dicomnode
VOLUME ["/var/lib/dicomnode"]
# DICOM (node.port) and Prometheus metrics/health (metrics.port)
EXPOSE 11112 9112
STOPSIGNAL SIGTERM
HEALTHCHECK --interval=30s --timeout=10s --start-period=60s --retries=3 \
    CMD ["dicomnode", "health", "--node-only", "--config", "/etc/dicomnode/dicomnode.yaml", "--timeout", "8"]
ENTRYPOINT ["dicomnode"]
CMD ["serve", "--config", "/etc/dicomnode/dicomnode.yaml"]
