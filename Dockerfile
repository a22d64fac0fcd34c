# One image for the Beam workers (Dataflow --sdk_container_image, Flink/Portable DOCKER environment)
# and for launching Dataflow flex templates. It pins the same versions as the package (constraints.txt).
ARG PYTHON_VERSION=3.11
ARG BEAM_VERSION=2.77.0
# Only the flex-template launcher binary is taken from this image; a dated release, never :latest, for the same
# Python as PYTHON_VERSION (python311 = 3.11). Bump it from Dataflow's list of flex-template base images.
ARG LAUNCHER_IMAGE=gcr.io/dataflow-templates-base/python311-template-launcher-base:flex_templates_base_image_release_20260122_RC00

FROM ${LAUNCHER_IMAGE} AS launcher
FROM apache/beam_python${PYTHON_VERSION}_sdk:${BEAM_VERSION}

COPY --from=launcher /opt/google/dataflow/python_template_launcher /opt/google/dataflow/python_template_launcher

WORKDIR /brandlens
COPY setup.py constraints.txt README.md ./
COPY brandlens brandlens
COPY beam_jobs beam_jobs
COPY trainer trainer
COPY schemas schemas
RUN pip install --no-cache-dir -c constraints.txt . \
    && python -c "import brandlens, beam_jobs, trainer, schemas, tensorflow_transform"

# Flex templates: the launcher runs this file with the template's parameters.
ENV FLEX_TEMPLATE_PYTHON_PY_FILE=/brandlens/beam_jobs/flex_launcher.py
# The image's own name (cloudbuild.yaml passes it): jobs launched from this image, flex templates included, give
# their workers this image (beam_jobs/common/worker_code.py). Empty: they stage the installed package instead.
ARG WORKER_IMAGE=""
ENV BRANDLENS_WORKER_IMAGE=${WORKER_IMAGE}
# The package is installed in the image: workers need no setup.py or requirements.
ENV PIP_NO_DEPS=True

ENTRYPOINT ["/opt/apache/beam/boot"]
