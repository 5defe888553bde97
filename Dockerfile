# sendwise API image: multi-stage, non-root, with a health check.
#
#   docker build -t sendwise .            (or: podman build --format docker -t sendwise .)
#   docker run -p 8000:8000 -e SENDWISE_API_KEYS=sha256:<hex>:acme:admin \
#       -e SENDWISE_ID_KEY=<secret> -e REDIS_URL=redis://my-redis:6379/0 sendwise
#
# It listens on 0.0.0.0, so `sendwise serve` requires API keys (`sendwise keys new ...
# --format env` prints an entry; SENDWISE_API_KEYS_FILE works too) and, with keys, the
# decision-id secret SENDWISE_ID_KEY (`sendwise keys id-key`).
# Without REDIS_URL the container starts the embedded redis-server (data in
# /var/lib/sendwise/redis: mount a volume there to keep it). compose.yaml runs it with Redis.
#
# Python comes from Debian's own packages (bookworm ships 3.11), so the image can be built
# from Debian's archive alone: BASE may point at any bookworm image, e.g. one made with
# debootstrap where no container registry is reachable.
ARG BASE=docker.io/library/debian:bookworm-slim

FROM ${BASE} AS build
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv ca-certificates \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY pyproject.toml README.md LICENSE ./
COPY api ./api
COPY models ./models
COPY training ./training
COPY sendwise ./sendwise
RUN python3 -m venv /opt/sendwise \
    && /opt/sendwise/bin/pip install --no-cache-dir --disable-pip-version-check --upgrade pip \
    && /opt/sendwise/bin/pip install --no-cache-dir --disable-pip-version-check . \
    && /opt/sendwise/bin/sendwise --version

FROM ${BASE}
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 ca-certificates libgomp1 \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --uid 10001 --user-group --no-log-init --home-dir /var/lib/sendwise --create-home sendwise
COPY --from=build /opt/sendwise /opt/sendwise
ENV PATH=/opt/sendwise/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    SENDWISE_DATA_DIR=/var/lib/sendwise
USER sendwise
WORKDIR /var/lib/sendwise
EXPOSE 8000
# ready = Redis reachable (503 otherwise), the same check a load balancer should use
HEALTHCHECK --interval=10s --timeout=3s --start-period=30s --retries=3 \
    CMD ["python3", "-c", "import sys, urllib.request; sys.exit(urllib.request.urlopen('http://127.0.0.1:8000/health/ready', timeout=2).status != 200)"]
CMD ["sendwise", "serve", "--host", "0.0.0.0", "--port", "8000"]
