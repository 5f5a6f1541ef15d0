# The image every pod of k8s/ runs: the driver, the Ray head and workers, the Dask scheduler
# and workers. Build it with `make image`; the app's own code comes from a ConfigMap.
# The base is pinned to an exact Python release; pin it by digest too in your registry.
FROM python:3.11.11-slim-bookworm AS build
WORKDIR /src
COPY . .
RUN pip wheel --no-cache-dir --no-deps --wheel-dir /wheels .

FROM python:3.11.11-slim-bookworm
# The Ray that KubeRay's `rayVersion` names (k8s/components/ray-*) and the Dask of the cluster.
ARG RAY_VERSION=2.60.0
ARG DASK_VERSION=2026.8.0
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
# fanwise[all]'s dependencies, each pinned (tests/k8s/test_dockerfile.py keeps this list in
# step with pyproject.toml); then fanwise itself, and `pip check` that nothing is missing.
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir \
        "cloudpickle==3.1.3" \
        "psutil==7.2.2" \
        "tenacity==9.2.1" \
        "ray[default]==${RAY_VERSION}" \
        "dask[distributed]==${DASK_VERSION}" \
        "psycopg[binary]==3.3.9" \
        "psycopg-pool==3.3.3" \
        "fastapi==0.165.0" \
        "uvicorn==0.54.0" \
        "jinja2==3.1.6" \
        "sse-starlette==3.7.0" \
        "pydantic==2.14.4" \
        "tqdm==4.70.1" \
        "graphviz==0.21" \
        "pyarrow==26.0.1" \
        "pyrate-limiter==4.5.1" \
    && pip install --no-cache-dir --no-deps /wheels/fanwise-*.whl \
    && pip check \
    && rm -rf /wheels \
    && useradd --create-home --uid 1000 --user-group fanwise
# Numeric, so that the kubelet can check `runAsNonRoot` against it.
USER 1000:1000
WORKDIR /home/fanwise
CMD ["python", "-c", "import fanwise.core; print('fanwise: run your app with /app/run_app.py')"]
