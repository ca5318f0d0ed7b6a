# syntax=docker/dockerfile:1
# A static portcullis binary in a distroless, non-root image.
FROM docker.io/library/rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
# aws-lc-sys builds with gcc; +crt-static links glibc statically so the final image
# needs no libc at all.
RUN RUSTFLAGS="-C target-feature=+crt-static" \
    cargo build --release --locked -p portcullis --target x86_64-unknown-linux-gnu \
 && cp target/x86_64-unknown-linux-gnu/release/portcullis /portcullis

FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /portcullis /portcullis
USER 65532:65532
EXPOSE 8443 9090
ENTRYPOINT ["/portcullis"]
CMD ["run"]
