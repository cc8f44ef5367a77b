# One image for the web process and the Celery worker.
FROM python:3.11-slim
ENV PYTHONUNBUFFERED=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN apt-get update && apt-get install -y --no-install-recommends \
        libpango-1.0-0 libpangoft2-1.0-0 libharfbuzz-subset0 fonts-dejavu-core curl \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /app
COPY requirements.txt .
# requirements.txt installs the project's own client (-e ./client) from the checkout
COPY client ./client
# The CPU wheel of torch; GPU hosts build with --build-arg TORCH_INDEX=https://download.pytorch.org/whl/cu124
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
RUN pip install --no-cache-dir --extra-index-url "$TORCH_INDEX" -r requirements.txt
COPY . .
# collectstatic imports the settings, which have no default for any secret: placeholders for this one build step
# only (nothing is signed or stored with them; they are not in the image's environment).
RUN SECRET_KEY=collectstatic-only REPORT_PKI_PASSPHRASE=collectstatic-only S3_ENDPOINT=http://unused \
        S3_ACCESS_KEY=collectstatic-only S3_SECRET_KEY=collectstatic-only \
        python manage.py collectstatic --noinput -v0
RUN useradd --create-home registry && mkdir -p .var/pki .var/run .var/work && chown -R registry /app
USER registry
ENV WEB_WORKERS=4
EXPOSE 8000
# Every other gunicorn option (keep-alive, worker recycling, timeouts) is in config/gunicorn.conf.py.
CMD ["gunicorn", "-c", "config/gunicorn.conf.py", "--bind", "0.0.0.0:8000"]
