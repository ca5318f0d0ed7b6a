# syntax=docker/dockerfile:1
# portcullis in a distroless, non-root image.
FROM docker.io/library/rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p portcullis && cp target/release/portcullis /portcullis

# distroless/cc rather than /static: a statically linked glibc cannot load the NSS
# modules getaddrinfo needs, and registry and scanner hosts are resolved by name.
# The image holds glibc and CA certificates, nothing else; no shell, no package manager.
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /portcullis /portcullis
USER 65532:65532
EXPOSE 8443 9090
ENTRYPOINT ["/portcullis"]
CMD ["run"]
