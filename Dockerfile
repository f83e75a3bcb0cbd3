# Tally in a container: built with the Rust toolchain, run on slim Debian as a non-root user.
# CI does not build this image (its machines have no container engine); see
# docs/operations.md, "Containers and systemd".
#
#   docker build -t tally .
#   docker run -p 8080:8080 -v tally-data:/var/lib/tally/data tally
#
# The default database is SQLite in the volume; set TALLY_DATABASE_URL=postgres://... for
# PostgreSQL (compose.yaml does). Administrative commands run in the same image:
#   docker run --rm -v tally-data:/var/lib/tally/data tally api-keys create --mode test

FROM rust:1-slim-bookworm AS builder
WORKDIR /src
COPY . .
RUN cargo build --release --locked --package tally \
 && install -m 0755 target/release/tally /usr/local/bin/tally

FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --user-group --home-dir /var/lib/tally --shell /usr/sbin/nologin tally \
 && mkdir -p /var/lib/tally/data \
 && chown -R tally:tally /var/lib/tally
COPY --from=builder /usr/local/bin/tally /usr/local/bin/tally
USER tally
WORKDIR /var/lib/tally
ENV TALLY_LISTEN=0.0.0.0:8080 \
    TALLY_DATABASE_URL=sqlite:///var/lib/tally/data/tally.db \
    TALLY_LOG_FORMAT=json
VOLUME ["/var/lib/tally/data"]
EXPOSE 8080
# SIGTERM (docker stop) finishes in-flight requests, then exits 0.
STOPSIGNAL SIGTERM
ENTRYPOINT ["tally"]
CMD ["serve"]
