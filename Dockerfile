# One image for every process of the distributed deployment (docs/deploy.md):
#   defeater api --host 0.0.0.0 --port 8000   (the default CMD)
#   defeater worker                            (k8s/worker-deployment.yaml: args ["worker"])
#   defeater db upgrade                        (k8s/migrate-job.yaml: args ["db", "upgrade"])
# Pin the base by digest (python:3.11-slim@sha256:...) for reproducible builds.

# ---- builder: build the project's wheel and install it, with its dependencies, into a venv --------------------
FROM python:3.11-slim AS builder

ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PYTHONDONTWRITEBYTECODE=1

RUN python -m venv /opt/venv
WORKDIR /src
# only what the wheel is built from (.dockerignore keeps the rest of the tree out of the context)
COPY pyproject.toml README.md ./
COPY service ./service
COPY workers ./workers
COPY migrations ./migrations
# every dependency ships manylinux wheels for CPython 3.11: no compiler needed; pip compiles the .pyc files
# here, so the final image never writes bytecode (its root filesystem is read-only in the pods)
RUN /opt/venv/bin/pip wheel --no-deps --wheel-dir /wheels . \
 && /opt/venv/bin/pip install /wheels/defeater-*.whl \
 && /opt/venv/bin/defeater --help > /dev/null

# ---- runtime: the venv and nothing else ------------------------------------------------------------------------
FROM python:3.11-slim AS runtime

ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1

# a numeric, non-root user, so that Kubernetes' runAsNonRoot can verify it
# (its home is /tmp, the one writable place in the pods: an emptyDir under a read-only root filesystem)
RUN groupadd --gid 10001 defeater \
 && useradd --uid 10001 --gid 10001 --no-create-home --home-dir /tmp --shell /usr/sbin/nologin defeater

COPY --from=builder /opt/venv /opt/venv

USER 10001:10001
WORKDIR /tmp
EXPOSE 8000

# No HEALTHCHECK: the same image runs the worker and the migration job, which serve no HTTP; in Kubernetes the
# api's probes (GET /healthz, GET /readyz) do this job. `defeater` runs as PID 1 (exec form): uvicorn and arq
# install their own SIGTERM handlers, so a pod's stop reaches them.
ENTRYPOINT ["defeater"]
CMD ["api", "--host", "0.0.0.0", "--port", "8000"]
