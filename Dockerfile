# The assay service (compose.yaml's `assay`): FastAPI and the Engine, sending work to warm
# language containers through the engine socket it is given (ASSAY_SANDBOX=docker).
ARG BASE_IMAGE=debian:bookworm-slim
FROM ${BASE_IMAGE}
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
        python3 python3-venv ca-certificates \
 && rm -rf /var/lib/apt/lists/*
# Behind a TLS-intercepting proxy, pip needs the proxy's CA: pass it (PEM text) as EXTRA_CA_CERT.
ARG EXTRA_CA_CERT=""
RUN if [ -n "$EXTRA_CA_CERT" ]; then \
        printf '%s\n' "$EXTRA_CA_CERT" > /usr/local/share/ca-certificates/extra.crt \
        && update-ca-certificates >/dev/null; \
    fi
ENV PIP_CERT=/etc/ssl/certs/ca-certificates.crt
WORKDIR /opt/assay
COPY pyproject.toml README.md ./
COPY clients clients
COPY service service
COPY verifiers verifiers
COPY sandboxes sandboxes
# `server`: the service, the sql verifier's parser and the docker SDK. Add `svg` for the svg
# verifier's metrics (it brings torch, several GB from PyPI) and give it the renderer's image.
ARG EXTRAS=server
RUN python3 -m venv /opt/assay/venv \
 && /opt/assay/venv/bin/pip install --no-cache-dir --disable-pip-version-check -q ".[${EXTRAS}]"
ENV PATH=/opt/assay/venv/bin:$PATH ASSAY_SANDBOX=docker
EXPOSE 8000
HEALTHCHECK --interval=5s --timeout=3s --retries=30 \
    CMD python3 -c "import urllib.request as u; u.urlopen('http://127.0.0.1:8000/healthz', timeout=2)"
# The engine socket is root's: the service that drives it runs as root in its own container;
# the untrusted work runs in the language containers, as a non-root user with no capabilities.
CMD ["assay", "serve", "--host", "0.0.0.0", "--port", "8000"]
