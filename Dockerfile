# The EmoVerse image: the official Ray image of our Ray version with the package installed.
# Two flavours; k8s/kustomization.yaml names both (`images:`):
#   docker build -t REGISTRY/emoverse:0.1.0-ray2.60.0-py311-cpu .
#   docker build --build-arg FLAVOR=gpu -t REGISTRY/emoverse:0.1.0-ray2.60.0-py311-gpu .
# cpu: head, media-stage workers, job submitters. gpu: the CUDA base for training workers.
# Keep RAY_VERSION equal to the Ray pin in pyproject.toml / constraints-cpu.txt and the
# manifests' rayVersion (tests/test_operations.py checks all of them).
ARG RAY_VERSION=2.60.0
ARG PYTHON=py311
ARG FLAVOR=cpu
FROM rayproject/ray:${RAY_VERSION}-${PYTHON}-${FLAVOR}
ARG RAY_VERSION

# The base image runs as the non-root user `ray` (uid 1000, group users/100); stay so.
USER ray
WORKDIR /home/ray/emoverse

# Dependencies first, so code changes do not reinstall torch. The constraints pin the
# versions the tests ran with (PyPI's torch wheels carry CUDA, so they serve both flavours)
# and keep the base image's Ray.
COPY --chown=ray:users pyproject.toml README.md constraints-cpu.txt ./
COPY --chown=ray:users emoverse ./emoverse
# The tracking extra (MLflow): runs are tracked in $MLFLOW_TRACKING_URI, or in a store in
# each run directory on the shared volume.
RUN pip install --no-cache-dir -c constraints-cpu.txt ".[tracking]" \
    && python -c "import emoverse.cli, ray; assert ray.__version__ == '${RAY_VERSION}', ray.__version__"

# Job files and cluster configs travel with the image, for `emoverse submit` from a pod.
COPY --chown=ray:users jobs ./jobs
COPY --chown=ray:users cluster ./cluster
