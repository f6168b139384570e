# flow-archiver: a multi-stage build. The build stage compiles a release binary (the
# bundled librdkafka needs only the C toolchain the rust image has); the runtime stage
# is Debian slim with CA certificates, running as an unprivileged user.
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src src
COPY schemas schemas
RUN cargo build --release --locked \
 && strip target/release/flow-archiver

FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --user-group --home-dir /var/lib/flow-archiver flow-archiver \
 && install -d -o 10001 -g 10001 /var/lib/flow-archiver
COPY --from=build /src/target/release/flow-archiver /usr/local/bin/flow-archiver
USER 10001:10001
# State, spool, audit and index live under the working directory (./data/...): mount a
# volume here.
WORKDIR /var/lib/flow-archiver
ENTRYPOINT ["flow-archiver"]
CMD ["run"]
