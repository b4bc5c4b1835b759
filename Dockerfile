# Build stage: compile the release binary.
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
COPY migrations ./migrations
COPY build.rs ./
RUN cargo build --release --locked && strip target/release/moment-mandates

# Run stage: the binary alone, as an unprivileged user.
FROM debian:bookworm-slim
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --no-create-home mandates
COPY --from=build /src/target/release/moment-mandates /usr/local/bin/moment-mandates
USER 10001
ENV LISTEN_ADDR=0.0.0.0:8080
EXPOSE 8080 8081
ENTRYPOINT ["moment-mandates"]
CMD ["serve"]
