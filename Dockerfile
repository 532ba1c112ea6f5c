# Multi-stage image. The build stage uses the same dependency script as CI; pass
#   --build-arg BASE_BUILD=<a Debian 12 based CUDA devel image> --build-arg MPLUS_CUDA=ON
# to compile the CUDA backend, and BASE_RUNTIME=<the matching CUDA runtime image>.
ARG BASE_BUILD=debian:12
ARG BASE_RUNTIME=debian:12-slim

FROM ${BASE_BUILD} AS build
ARG MPLUS_CUDA=AUTO
WORKDIR /src
COPY scripts/install-deps.sh scripts/install-deps.sh
RUN ./scripts/install-deps.sh
COPY . .
RUN MPLUS_BUILD_DIR=/build MPLUS_CMAKE_ARGS="-DMPLUS_CUDA=${MPLUS_CUDA} -DCMAKE_INSTALL_PREFIX=/opt/mplus -DMPLUS_DEMO_MODEL_DIR=/opt/mplus/share/demo-model" \
      ./scripts/build.sh mplus-server mplus mplus-probe mplus-tokenize mplus-make-checkpoint \
 && cmake --install /build \
 && mkdir -p /opt/mplus/share && cp -r tests/fixtures/tiny-mplus /opt/mplus/share/demo-model

FROM ${BASE_RUNTIME}
RUN apt-get update -qq && apt-get install -y -qq --no-install-recommends \
      libgrpc++1.51 libprotobuf32 librocksdb7.8 libprometheus-cpp-pull1.0 libprometheus-cpp-core1.0 \
      libabsl20220623 libpcre2-8-0 ca-certificates \
 && rm -rf /var/lib/apt/lists/*
COPY --from=build /opt/mplus /opt/mplus
ENV PATH=/opt/mplus/bin:$PATH
VOLUME /data
EXPOSE 50051 9464
ENTRYPOINT ["mplus-server", "--listen=0.0.0.0:50051", "--metrics_listen=0.0.0.0:9464", "--data_dir=/data"]
