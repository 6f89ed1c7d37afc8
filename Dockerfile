# syntax=docker/dockerfile:1
# Build stage: compile ferroserve and fetch the ONNX Runtime shared library
# from the PyPI onnxruntime wheel (deploy/setup.sh ort).
FROM rust:1.95-bookworm AS build
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 python3-pip \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN deploy/setup.sh ort && cargo build --release --locked

# Runtime stage: the binary, the ONNX Runtime library and the shipped models,
# run as an unprivileged user.
FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates curl libstdc++6 libgomp1 \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin ferroserve \
 && mkdir -p /var/cache/ferroserve && chown 10001 /var/cache/ferroserve
COPY --from=build /src/.deps/onnxruntime/libonnxruntime.so.1.31.1 /usr/local/lib/
RUN ln -s libonnxruntime.so.1.31.1 /usr/local/lib/libonnxruntime.so && ldconfig
COPY --from=build /src/target/release/ferroserve /usr/local/bin/ferroserve
COPY models /models
# Where a repository on object storage (s3://, gs://, az://) is mirrored;
# mount a volume here to keep it across containers.
ENV FERROSERVE_REPOSITORY_CACHE_DIR=/var/cache/ferroserve
USER 10001
EXPOSE 8000 8001 8002
HEALTHCHECK --interval=10s --timeout=3s --start-period=30s --retries=3 \
  CMD curl -fsS http://127.0.0.1:8000/v2/health/ready || exit 1
ENTRYPOINT ["ferroserve"]
CMD ["--model-repository", "/models"]
