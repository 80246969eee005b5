# syntax=docker/dockerfile:1
#
# pacsd container image.
#
#   docker build -t pacsd .
#   docker run -d --name pacsd -p 11112:11112 -v pacsd-data:/var/lib/pacsd \
#     --stop-timeout 45 pacsd
#   docker exec pacsd pacsd echo        (C-ECHO against the running server)
#   docker run --rm -v pacsd-data:/var/lib/pacsd pacsd db upgrade
#
# Data (SQLite index and instance files) lives in the volume /var/lib/pacsd. Configure with
# PACSD_* environment variables, or mount a YAML file and set PACSD_CONFIG to its path (the
# health check reads the same variables, so it follows a changed port or AE title).
# `docker stop` waits only 10 s by default before SIGKILL, less than pacsd's 30 s drain:
# use --stop-timeout 45 (or stop_grace_period in compose, see deploy/compose.yaml).

# --- build: a wheel (with the Alembic migrations inside) installed into a venv ------------
# Same base as the runtime stage, so the venv's interpreter path is valid there too. 3.11 is
# the version the test suite runs on.
FROM python:3.11-slim-bookworm AS build

ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PYTHONDONTWRITEBYTECODE=1

WORKDIR /src
# Only what the build needs (.dockerignore keeps the rest out of the context).
COPY pyproject.toml README.md ./
COPY server/ server/
COPY migrations/ migrations/

RUN python -m venv /opt/pacsd \
    && /opt/pacsd/bin/pip wheel --no-deps --wheel-dir /dist . \
    && /opt/pacsd/bin/pip install /dist/pacsd-*.whl \
    && /opt/pacsd/bin/pacsd --version

# --- runtime ---------------------------------------------------------------------------------
FROM python:3.11-slim-bookworm

# A fixed UID/GID so volume ownership is predictable: a bind-mounted host directory must be
# owned by 10001:10001.
RUN groupadd --system --gid 10001 pacsd \
    && useradd --system --uid 10001 --gid pacsd --home-dir /var/lib/pacsd --no-create-home \
        --shell /usr/sbin/nologin pacsd \
    && install -d -o pacsd -g pacsd -m 0750 /var/lib/pacsd

COPY --from=build /opt/pacsd /opt/pacsd

ENV PATH=/opt/pacsd/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PACSD_NETWORK__HOST=0.0.0.0 \
    PACSD_DATABASE__URL=sqlite:////var/lib/pacsd/pacsd.sqlite \
    PACSD_STORAGE__ROOT=/var/lib/pacsd/storage \
    PACSD_AUDIT__FILE=/var/lib/pacsd/audit.jsonl \
    PACSD_LOGGING__FORMAT=json
# PACSD_NETWORK__HOST: inside a container the listener must bind every interface, or the
# published port reaches nothing. pacsd then warns at start-up if its policy accepts every
# peer: restrict peers in a configuration file for anything beyond a trusted network.

# Numeric, so Kubernetes' runAsNonRoot can verify it (it is the user pacsd created above).
USER 10001:10001
WORKDIR /var/lib/pacsd
# A named volume is initialised from this directory, so it starts owned by pacsd.
VOLUME /var/lib/pacsd

# DICOM (no privileged port, so no capability needed).
# 11112: DICOM; 2762: DICOM TLS, once network.tls is enabled (certificates mounted read-only).
EXPOSE 11112 2762

# C-ECHO from inside the container to the configured port and AE title (0.0.0.0 maps to
# 127.0.0.1): the plain listener, or with `network.listen_plain: false` the TLS port over
# DICOM TLS, presenting the configured certificate (so client_certificates: required works)
# and trusting ca_file or pacsd's own certificate. The calling AE title is PACSD-ECHO: a
# restrictive policy must let it verify.
# start-period covers creating the schema on a fresh database.
HEALTHCHECK --interval=30s --timeout=10s --start-period=30s --retries=3 \
    CMD ["pacsd", "echo", "--timeout", "5"]

# pacsd drains associations on SIGTERM (a second SIGTERM forces); it runs as PID 1 and
# installs its own handlers, so the signal is not ignored.
STOPSIGNAL SIGTERM
ENTRYPOINT ["pacsd"]
CMD ["serve"]
