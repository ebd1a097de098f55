# One image for the API and both workers. The GPU worker builds it with a CUDA torch:
#   docker build --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cu128 .
# (docker-compose.yml does this for the worker-gpu service.)
FROM python:3.11-slim

ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    BDS_DATA_DIR=/var/lib/bds \
    BDS_CACHE_DIR=/var/cache/bds

RUN apt-get update \
    && apt-get install -y --no-install-recommends curl \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --create-home --uid 10001 bds \
    && mkdir -p /var/lib/bds /var/cache/bds \
    && chown bds:bds /var/lib/bds /var/cache/bds

# torch first, from the index that matches the hardware, so the project's own requirement
# is already satisfied and never pulls a different build.
RUN pip install "torch==${TORCH_VERSION}" --index-url "${TORCH_INDEX_URL}"

WORKDIR /app
COPY pyproject.toml README.md alembic.ini ./
COPY bds_core bds_core
COPY bds_service bds_service
COPY api api
COPY worker worker
COPY migrations migrations
# Editable install: the migrations folder is found next to the packages (bds_service.db).
RUN pip install -e .

USER bds
EXPOSE 8000
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s \
    CMD curl --fail --silent http://127.0.0.1:8000/healthz || exit 1
CMD ["python", "-m", "uvicorn", "api.app:app", "--host", "0.0.0.0", "--port", "8000"]
