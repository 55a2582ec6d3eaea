# ratio-audit on a GPU: libtensorflow through @tensorflow/tfjs-node-gpu 4.x, which links against
# CUDA 11.2 and cuDNN 8.1, so the base is NVIDIA's CUDA 11.2 / cuDNN 8 runtime image (linux/amd64:
# tfjs-node-gpu ships x64 binaries only). Run with the NVIDIA container runtime
# (`docker run --gpus all`, k8s `nvidia.com/gpu: 1`). CPU-only hosts: Dockerfile.cpu.
ARG CUDA_IMAGE=nvidia/cuda:11.2.2-cudnn8-runtime-ubuntu20.04

FROM ${CUDA_IMAGE} AS node
ARG NODE_VERSION=20.19.5
ENV DEBIAN_FRONTEND=noninteractive
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates curl gnupg dirmngr xz-utils \
 && rm -rf /var/lib/apt/lists/*
# Node 20 from the official tarball, checked against SHASUMS256.txt, whose signature is checked
# against the Node.js release keys (the releasers' fingerprints, as nodejs/docker-node pins them).
RUN set -eux; \
    export GNUPGHOME="$(mktemp -d)"; \
    for key in \
      5BE8A3F6C8A5C01D106C0AD820B1A390B168D356 C0D6248439F1D5604AAFFB4021D900FFDB233756 \
      DD792F5973C6DE52C432CBDAC77ABFA00DDBF2B7 CC68F5A3106FF448322E48ED27F5E38D5B0A215F \
      8FCCA13FEF1D0C2E91008E09770F7A9A5AE15600 890C08DB8579162FEE0DF9DB8BEAB4DFCF555EF4 \
      C82FA3AE1CBEDC6BE46B9360C43CEC45C17AB93C 108F52B48DB57BB0CC439B2997B01419BD92F80A \
      A363A499291CBBC940DD62E41F10027AF002F8B0 4ED778F539E3634C779C87C6D7062848A1AB005C \
      141F07595B7B3FFE74309A937405533BE57C7D57 74F12602B6F1C4E913FAA37AD3A89613643B6201; do \
      gpg --batch --keyserver hkps://keys.openpgp.org --recv-keys "$key" \
        || gpg --batch --keyserver keyserver.ubuntu.com --recv-keys "$key"; \
    done; \
    tarball="node-v${NODE_VERSION}-linux-x64.tar.xz"; \
    curl -fsSLO "https://nodejs.org/dist/v${NODE_VERSION}/${tarball}"; \
    curl -fsSLO "https://nodejs.org/dist/v${NODE_VERSION}/SHASUMS256.txt.asc"; \
    gpg --batch --decrypt --output SHASUMS256.txt SHASUMS256.txt.asc; \
    grep " ${tarball}\$" SHASUMS256.txt | sha256sum -c -; \
    tar -xJf "${tarball}" -C /usr/local --strip-components=1 --no-same-owner; \
    rm -f "${tarball}" SHASUMS256.txt SHASUMS256.txt.asc; \
    gpgconf --kill all; \
    rm -rf "$GNUPGHOME"; \
    node --version; \
    npm --version

# The compiled JavaScript (dist/): tsc needs the dev dependencies, and no install script runs here.
FROM node AS build
WORKDIR /app
COPY package.json package-lock.json tsconfig.json tsconfig.build.json ./
COPY scripts/build.mjs ./scripts/build.mjs
RUN npm ci --ignore-scripts --no-audit --no-fund
COPY src ./src
RUN npm run build

FROM node AS deps
RUN apt-get update \
 && apt-get install -y --no-install-recommends build-essential python3 \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /app
COPY package.json package-lock.json ./
COPY scripts/build.mjs ./scripts/build.mjs
COPY src/engine/backend/onednn/addon ./src/engine/backend/onednn/addon
# libtensorflow does the compute here: the oneDNN addon (the CPU kernels for when it is absent) is
# not built. tfjs-node-gpu's install step downloads libtensorflow (GPU, 2.9) into its deps/lib;
# npm skips a failed optional dependency silently, so the last step checks it is there. (`prepare`
# leaves dist/ to the build stage: typescript is a dev dependency.)
ENV RATIO_SKIP_ONEDNN_BUILD=1
RUN npm ci --omit=dev --include=optional --no-audit --no-fund \
 && ls node_modules/@tensorflow/tfjs-node-gpu/deps/lib | grep -q libtensorflow

FROM node
RUN useradd --system --uid 10001 --create-home --home-dir /home/ratio ratio \
 && mkdir -p /var/lib/ratio/state /var/lib/ratio/store \
 && chown -R ratio:ratio /var/lib/ratio
# HOST=0.0.0.0: a container listens on all interfaces (without keys the default is loopback).
# Keys: pass RATIO_API_KEYS or mount RATIO_API_KEYS_FILE; without either the server refuses to start.
# RATIO_BACKEND=tensorflow: start only on libtensorflow (an image that lost it fails loudly).
ENV NODE_ENV=production PORT=8080 HOST=0.0.0.0 LOG_LEVEL=info \
    RATIO_BACKEND=tensorflow RATIO_MODELS_DIR=/app/models RATIO_STATE_DIR=/var/lib/ratio/state
WORKDIR /app
COPY --from=deps /app/node_modules ./node_modules
COPY package.json ./
COPY bin ./bin
COPY --from=build /app/dist ./dist
COPY openapi/openapi.json ./openapi/openapi.json
COPY models ./models
USER 10001
EXPOSE 8080
HEALTHCHECK --interval=30s --timeout=5s CMD node -e "fetch('http://127.0.0.1:'+process.env.PORT+'/health/ready').then(r=>process.exit(r.ok?0:1),()=>process.exit(1))"
# SIGTERM: refuse new audits, finish running ones for up to 25 s, then stop.
STOPSIGNAL SIGTERM
CMD ["node", "bin/ratio.js", "serve"]
