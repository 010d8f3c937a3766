# shapegate: the sync engine and the auth proxy in one image.
#
#   docker build -t shapegate .
#   docker run -p 8080:8080 -v shapegate-data:/data \
#     -v $PWD/config/proxy.yaml:/etc/shapegate/proxy.yaml:ro \
#     --env-file shapegate.env shapegate
#
# shapegate.env (chmod 600) holds DATABASE_URL=postgresql://user:pass@db:5432/app,
# ENGINE_SECRET=... and SHAPE_PROXY_JWT_SECRET=...: values given with `-e NAME=value` stay in
# the `docker run` command line, which any user of the host sees in `ps`, and in shell history.
#
# The engine listens on 127.0.0.1:3000 inside the container only (the proxy's `upstream.url`
# must be http://127.0.0.1:3000); the proxy serves clients on 0.0.0.0:8080. See
# scripts/container-entrypoint for every environment variable.
FROM python:3.11-slim

ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /src
# README.m[d]: copied when present (pyproject names it), without failing when it is not.
COPY pyproject.toml README.m[d] ./
COPY sync_engine ./sync_engine
COPY proxy ./proxy
RUN pip install . && rm -rf /src

COPY --chmod=0755 scripts/container-entrypoint /usr/local/bin/container-entrypoint
COPY config/proxy.yaml /etc/shapegate/proxy.yaml

RUN groupadd --system --gid 10001 shapegate \
 && useradd --system --uid 10001 --gid shapegate --home-dir /data --no-create-home \
      --shell /usr/sbin/nologin shapegate \
 && mkdir -p /data \
 && chown shapegate:shapegate /data

ENV SHAPE_PROXY_CONFIG=/etc/shapegate/proxy.yaml \
    SHAPE_PROXY_HOST=0.0.0.0 \
    SHAPE_PROXY_PORT=8080 \
    SHAPEGATE_ENGINE_PORT=3000 \
    SHAPEGATE_DATA_DIR=/data

WORKDIR /data
VOLUME ["/data"]
USER shapegate:shapegate
EXPOSE 8080

HEALTHCHECK --interval=15s --timeout=5s --start-period=90s --retries=3 \
  CMD python -c "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('SHAPE_PROXY_PORT', '8080'), timeout=4)"

STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/container-entrypoint"]
