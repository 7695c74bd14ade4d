# One image for every service; compose.yaml and the systemd units pick the subcommand.

# Stage 0 builds the project's wheel, compiling what setup.py compiles (the scoring kernels
# and thronos_analytics/_compiled.py's modules); the compiler stays in this stage.
# (Unnamed: the image's first FROM line is the runtime's base.)
FROM python:3.11-slim

RUN apt-get update \
 && apt-get install -y --no-install-recommends build-essential \
 && rm -rf /var/lib/apt/lists/*

WORKDIR /src
COPY pyproject.toml setup.py README.md* ./
COPY core ./core
COPY analytics ./analytics
COPY producers ./producers
COPY workers ./workers
COPY thronos_analytics ./thronos_analytics
RUN pip wheel --no-cache-dir --no-deps -w /wheels .

# The image itself: no compiler, the project installed from stage 0's wheel.
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

# Then the project itself, constrained to the same pins (pip fails rather than drift). Only
# the wheel: a copy of the sources in /app would shadow it without the compiled kernels.
COPY --from=0 /wheels ./wheels
RUN pip install --no-cache-dir -c requirements.lock ./wheels/*.whl \
 && rm -rf ./wheels

COPY ops/flowerconfig.py ./ops/flowerconfig.py

USER thronos

# No ENTRYPOINT: each service runs `thronos-analytics <subcommand>`.
CMD ["thronos-analytics", "--help"]
