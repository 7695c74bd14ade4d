# One image for every service; compose.yaml and the systemd units pick the subcommand.
FROM python:3.11-slim

ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    THRONOS_DATA_DIR=/data

RUN groupadd --system --gid 10001 thronos \
 && useradd --system --uid 10001 --gid thronos --create-home --home-dir /home/thronos \
        --shell /usr/sbin/nologin thronos \
 && mkdir -p /data \
 && chown thronos:thronos /data
# /data is owned by thronos so that a new named volume mounted there is writable too.

WORKDIR /app

# The pinned runtime dependencies first, in their own layer: code changes reuse it.
COPY requirements.lock ./
RUN pip install --no-cache-dir -r requirements.lock

# Then the project itself, constrained to the same pins (pip fails rather than drift).
COPY pyproject.toml README.md* ./
COPY analytics ./analytics
COPY producers ./producers
COPY workers ./workers
COPY thronos_analytics ./thronos_analytics
RUN pip install --no-cache-dir -c requirements.lock . \
 && rm -rf build ./*.egg-info

COPY ops/flowerconfig.py ./ops/flowerconfig.py

USER thronos

# Compile the scoring kernels into numba's cache in the image (~4 s here), not in each new
# container's first scoring call.
RUN python -c "from analytics.anomaly import AnomalyDetector; \
from analytics.contract import Row, parse_line; \
from analytics.simulate import SimConfig, simulate; \
rows = [r for r in map(parse_line, simulate(SimConfig(rows=2000))[0]) if isinstance(r, Row)]; \
AnomalyDetector().fit(rows).flag(rows[:2])"

# No ENTRYPOINT: each service runs `thronos-analytics <subcommand>`.
CMD ["thronos-analytics", "--help"]
