# ratio-audit service on libtensorflow (GPU when the node has one). tfjs-node-gpu's install step
# downloads libtensorflow, which works in an image build (not on the offline dev machines).
FROM node:20-bookworm-slim AS deps
WORKDIR /app
# oneDNN: npm ci builds the addon of src/engine/onednn/addon (the CPU kernels when libtensorflow is absent).
RUN apt-get update && apt-get install -y --no-install-recommends libdnnl-dev build-essential python3 \
 && rm -rf /var/lib/apt/lists/*
COPY package.json package-lock.json ./
COPY src/engine/onednn/addon ./src/engine/onednn/addon
RUN npm ci --omit=dev --include=optional \
 && npm install --no-save @tensorflow/tfjs-node-gpu@4.22.0 \
 && mkdir -p src/engine/onednn/addon/build

FROM node:20-bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends libdnnl2 libgomp1 && rm -rf /var/lib/apt/lists/*
# HOST=0.0.0.0: a container must listen on all interfaces (the default without keys is loopback).
# Keys: pass RATIO_API_KEYS or mount RATIO_API_KEYS_FILE; without either the server refuses to start.
ENV NODE_ENV=production PORT=8080 HOST=0.0.0.0 RATIO_MODELS_DIR=/app/models LOG_LEVEL=info
WORKDIR /app
COPY --from=deps /app/node_modules ./node_modules
COPY package.json tsconfig.json ./
COPY bin ./bin
COPY src ./src
COPY --from=deps /app/src/engine/onednn/addon/build ./src/engine/onednn/addon/build
COPY openapi/openapi.json ./openapi/openapi.json
COPY models ./models
USER node
EXPOSE 8080
HEALTHCHECK --interval=30s --timeout=5s CMD node -e "fetch('http://127.0.0.1:'+process.env.PORT+'/health/ready').then(r=>process.exit(r.ok?0:1),()=>process.exit(1))"
# SIGTERM: refuse new audits, finish running ones for up to 25 s, then stop.
STOPSIGNAL SIGTERM
CMD ["node", "bin/ratio.js", "serve"]
