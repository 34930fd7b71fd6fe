# syntax=docker/dockerfile:1
# MLflow tracking server for manifests/base/mlflow/mlflow.yaml: mlflow pinned to the
# version in constraints.txt with its `auth` extra (the basic-auth app overlays/prod runs),
# plus the Postgres driver and boto3 for S3/MinIO artifacts (neither ships upstream).
#   docker build -f manifests/docker/mlflow.Dockerfile -t ghcr.io/<you>/mlflow-server:3.17.2 manifests/docker
#   docker push ghcr.io/<you>/mlflow-server:3.17.2
# then point an overlay at it: cd manifests/overlays/prod && kustomize edit set image \
#   ghcr.io/convrl/mlflow-server=ghcr.io/<you>/mlflow-server:3.17.2
FROM python:3.11-slim
ARG MLFLOW_VERSION=3.17.2
RUN pip install --no-cache-dir --disable-pip-version-check \
        "mlflow[auth]==${MLFLOW_VERSION}" "psycopg2-binary>=2.9,<3" "boto3>=1.34,<2" \
    && useradd --uid 1000 --create-home --shell /usr/sbin/nologin mlflow
USER 1000
EXPOSE 5000
CMD ["mlflow", "server", "--host", "0.0.0.0", "--port", "5000"]
