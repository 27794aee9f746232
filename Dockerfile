# xks-proxy: AWS KMS External Key Store proxy over PKCS#11 (SoftHSM2 embedded; any PKCS#11 module
# can be mounted). See docs/docker.md for how to run it.
#
#   docker build -t xks-proxy .
#   docker run -d --name xks -p 8443:8443 -v xks-data:/data -e XKS_INIT_DEMO=1 xks-proxy
#
# No secret is ever part of the image: tokens, PINs, TLS keys and SigV4 credentials live in the
# /data volume (created there by the entrypoint on request, or provided by the operator).

# --- build: compile TypeScript and the pkcs11js native addon ------------------------------------
FROM node:20-bookworm-slim AS build

# node-gyp (run by `npm ci` for pkcs11js) needs python3, make and a C++ compiler.
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends python3 make g++ \
 && apt-get clean \
 && rm -rf /var/lib/apt/lists/*

ENV npm_config_update_notifier=false \
    npm_config_fund=false \
    npm_config_audit=false

WORKDIR /build
COPY package.json package-lock.json ./
# node-gyp also needs Node's C headers. scripts/node-headers.sh uses the image's own
# (/usr/local/include/node in the official image) and otherwise takes them from the npm registry's
# node-linux-<arch> package of the running Node version, instead of a download from nodejs.org.
COPY scripts/node-headers.sh ./scripts/
RUN nodedir=$(scripts/node-headers.sh) \
 && npm_config_nodedir="$nodedir" npm ci
# Only the sources go into the build (tsconfig also includes test/ and bench/, not needed here).
COPY tsconfig.json ./
COPY src ./src
RUN npm run build \
 && npm prune --omit=dev \
 && rm -rf node_modules/pkcs11js/build/Release/obj.target node_modules/pkcs11js/build/Release/.deps \
 && node -e 'require("pkcs11js")'

# --- runtime ----------------------------------------------------------------------------------
FROM node:20-bookworm-slim

ARG VERSION=0.1.0
LABEL org.opencontainers.image.title="xks-proxy" \
      org.opencontainers.image.description="AWS KMS External Key Store (XKS) proxy over PKCS#11, with SoftHSM2 embedded" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.licenses="UNLICENSED" \
      org.opencontainers.image.base.name="docker.io/library/node:20-bookworm-slim"

# softhsm2: the embedded default HSM and softhsm2-util; openssl: PINs and the demo TLS pair;
# curl: the HEALTHCHECK; ca-certificates: TLS trust for curl and openssl.
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends softhsm2 openssl curl ca-certificates \
 && apt-get clean \
 && rm -rf /var/lib/apt/lists/*

ENV NODE_ENV=production \
    XKS_CONFIG=/etc/xks-proxy/xks-proxy.yaml

# The application is owned by root and read-only for the user it runs as.
WORKDIR /app
COPY --from=build /build/package.json ./package.json
COPY --from=build /build/node_modules ./node_modules
COPY --from=build /build/dist/src ./dist/src
COPY config ./config
COPY softhsm ./softhsm
COPY docker/xks-proxy.yaml /etc/xks-proxy/xks-proxy.yaml
COPY docker/entrypoint.sh /usr/local/bin/xks-entrypoint
RUN chmod 0755 /usr/local/bin/xks-entrypoint \
 && chmod 0644 /etc/xks-proxy/xks-proxy.yaml \
 && mkdir -p /data \
 && chown 1000:1000 /data \
 && chmod 0700 /data

# SoftHSM2 token and its configuration, PIN files, TLS pair, SigV4 credentials, optional log files.
VOLUME ["/data"]

# The image's "node" user.
USER 1000:1000

EXPOSE 8443

# Liveness, not readiness: /healthz/ready turns 503 while the HSM fails its deep check, and a
# restart does not fix an HSM outage; load balancers should route on /healthz/ready instead.
# The port follows XKS__SERVER__PORT; -k because the certificate's name need not be "localhost".
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
  CMD curl -fsk -o /dev/null --max-time 4 "https://localhost:${XKS__SERVER__PORT:-8443}/healthz/live" || exit 1

ENTRYPOINT ["/usr/local/bin/xks-entrypoint"]
CMD ["serve"]
