# The controller image: the `ksit` binary plus the filter module it serves.
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
RUN apt-get update -qq && apt-get install -y -qq binaryen \
 && rustup target add wasm32-wasip1 \
 && cargo build --release -p ksit-controller \
 && make wasm

FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /src/target/release/ksit /usr/bin/ksit
COPY --from=build /src/target/wasm32-wasip1/release/ksit_filter.wasm /usr/share/ksit/ksit_filter.wasm
USER 65532:65532
ENTRYPOINT ["/usr/bin/ksit"]
