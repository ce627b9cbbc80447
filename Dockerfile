# The ALLabel ML backend: gunicorn serving _wsgi:app on port 9090, state in the /data volume.
FROM python:3.11-slim

ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PORT=9090 \
    THREADS=8 \
    ALLABEL_STATE_DIR=/data/state

WORKDIR /app
# Dependencies first (a layer that changes only with requirements.txt), then the alllabel package itself
# (with its `alllabel` command and the bundled examples), then the WSGI entry points.
COPY requirements.txt .
RUN pip install --no-cache-dir -r requirements.txt

COPY pyproject.toml README.md ./
COPY alllabel/ alllabel/
COPY examples/ examples/
RUN pip install --no-cache-dir --no-deps . && rm -rf build *.egg-info alllabel examples  # one copy: the installed one
COPY model.py _wsgi.py gunicorn.conf.py ./

RUN useradd --create-home --uid 10001 alllabel && mkdir -p /data && chown alllabel /data
USER alllabel
VOLUME /data
EXPOSE 9090

# One worker: the queue, budget tracking and the pre-labeling job live in that process.
# It binds 0.0.0.0, so it starts only with BASIC_AUTH_USER and BASIC_AUTH_PASS (gunicorn.conf.py).
CMD ["sh", "-c", "exec gunicorn --bind 0.0.0.0:${PORT} --workers 1 --threads ${THREADS} --timeout 120 _wsgi:app"]
