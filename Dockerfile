# syntax=docker/dockerfile:1
# The twintrack image: one image for `twintrack migrate`, `twintrack api` and `twintrack worker`
# (docker-compose.yml picks the subcommand). Build: docker build -t twintrack .
FROM python:3.11-slim

ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    UV_COMPILE_BYTECODE=1 \
    UV_LINK_MODE=copy \
    UV_PYTHON_DOWNLOADS=never \
    UV_PROJECT_ENVIRONMENT=/app/.venv

RUN pip install --no-cache-dir uv==0.13.8

WORKDIR /app

# Dependencies first, from the lock alone, so editing the source does not reinstall them.
COPY pyproject.toml uv.lock ./
RUN --mount=type=cache,target=/root/.cache/uv \
    uv sync --frozen --no-dev --no-install-project

# Then the project. It stays an editable install of this checkout on purpose: `twintrack migrate`
# runs the Alembic scripts from the checkout root (/app/alembic, next to /app/alembic.ini),
# found relative to src/twintrack, so do not add --no-editable.
COPY README.md alembic.ini ./
COPY alembic/ ./alembic/
COPY src/ ./src/
COPY examples/ ./examples/
RUN --mount=type=cache,target=/root/.cache/uv \
    uv sync --frozen --no-dev \
    && python -m compileall -q src alembic

# Run as an unprivileged user; the code and the environment stay root-owned and read-only.
RUN useradd --system --uid 10001 --create-home --home-dir /home/twintrack --shell /usr/sbin/nologin twintrack
USER twintrack

ENV PATH="/app/.venv/bin:${PATH}"
EXPOSE 8000

ENTRYPOINT ["/app/.venv/bin/twintrack"]
CMD ["--help"]
