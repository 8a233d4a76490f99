# fanfare: multi-stage build. The build stage needs cmake (pingora's zlib-ng).
#   docker build -t fanfare .
#   docker run -p 8080:8080 -p 9090:9090 -v $PWD/my-config:/etc/fanfare fanfare
# The image's own config is docker/fanfare.yaml (no routes, no demo); mount your own
# fanfare.yaml at /etc/fanfare. `upstream` is the app's address from inside the
# container.
FROM rust:1-bookworm AS build
RUN apt-get update \
 && apt-get install -y --no-install-recommends cmake \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
# Dependencies first, so code changes do not rebuild them.
COPY Cargo.toml Cargo.lock ./
RUN mkdir -p src/bin && echo 'fn main() {}' > src/main.rs && echo '' > src/lib.rs \
 && cargo build --release --locked --bin fanfare \
 && rm -rf src
COPY src ./src
COPY client ./client
COPY build.rs ./
# No .git in the build context: the commit `fanfare --version` names comes from here
# (docker build --build-arg FANFARE_COMMIT=$(git rev-parse --short=12 HEAD) .).
ARG FANFARE_COMMIT=unknown
RUN touch src/main.rs src/lib.rs && cargo build --release --locked --bin fanfare

# Runtime: glibc, CA certificates (JWKS over https), no shell, non-root.
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /src/target/release/fanfare /usr/local/bin/fanfare
COPY docker/fanfare.yaml /etc/fanfare/fanfare.yaml
USER 65532:65532
EXPOSE 8080 9090
ENTRYPOINT ["/usr/local/bin/fanfare"]
CMD ["--config", "/etc/fanfare/fanfare.yaml"]
