#!/usr/bin/env python3
"""Packs the filter module as an OCI image layout in Istio's Wasm image format (the "compat" variant: one
gzip'd tar layer holding plugin.wasm), ready to push with any OCI client, e.g.
    oras cp --from-oci-layout target/oci/ksit-filter:0.1.0 registry.example.com/ksit/filter:0.1.0
    skopeo copy oci:target/oci/ksit-filter:0.1.0 docker://registry.example.com/ksit/filter:0.1.0
Deterministic: the same module gives the same digests.
usage: oci-pack.py MODULE.wasm OUT_DIR TAG"""
import gzip, hashlib, io, json, os, sys, tarfile


def blob(out, data):
    digest = hashlib.sha256(data).hexdigest()
    path = os.path.join(out, "blobs", "sha256", digest)
    with open(path, "wb") as f:
        f.write(data)
    return "sha256:" + digest, len(data)


def main():
    if len(sys.argv) != 4:
        sys.exit(__doc__)
    module, out, tag = sys.argv[1:]
    wasm = open(module, "rb").read()
    if not wasm.startswith(b"\0asm"):
        sys.exit(f"{module} is not a Wasm module")
    os.makedirs(os.path.join(out, "blobs", "sha256"), exist_ok=True)
    tar_bytes = io.BytesIO()
    with tarfile.open(fileobj=tar_bytes, mode="w", format=tarfile.USTAR_FORMAT) as t:
        info = tarfile.TarInfo("plugin.wasm")
        info.size, info.mtime, info.mode, info.uid, info.gid = len(wasm), 0, 0o644, 0, 0
        t.addfile(info, io.BytesIO(wasm))
    raw = tar_bytes.getvalue()
    gz = io.BytesIO()
    with gzip.GzipFile(fileobj=gz, mode="wb", mtime=0) as g:
        g.write(raw)
    layer_digest, layer_size = blob(out, gz.getvalue())
    config = {
        "architecture": "amd64",
        "os": "linux",
        "config": {},
        "rootfs": {"type": "layers", "diff_ids": ["sha256:" + hashlib.sha256(raw).hexdigest()]},
    }
    config_digest, config_size = blob(out, json.dumps(config, sort_keys=True, separators=(",", ":")).encode())
    manifest = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config_digest, "size": config_size},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": layer_digest, "size": layer_size,
                    "annotations": {"org.opencontainers.image.title": "plugin.wasm"}}],
        "annotations": {"org.opencontainers.image.title": "ksit-filter",
                        "io.ksit.module.sha256": hashlib.sha256(wasm).hexdigest()},
    }
    manifest_digest, manifest_size = blob(out, json.dumps(manifest, sort_keys=True, separators=(",", ":")).encode())
    index = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
             "manifests": [{"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": manifest_digest,
                            "size": manifest_size, "annotations": {"org.opencontainers.image.ref.name": tag}}]}
    with open(os.path.join(out, "index.json"), "w") as f:
        json.dump(index, f, sort_keys=True, separators=(",", ":"))
    with open(os.path.join(out, "oci-layout"), "w") as f:
        json.dump({"imageLayoutVersion": "1.0.0"}, f)
    print(f"{out}:{tag}  manifest {manifest_digest}  module sha256 {hashlib.sha256(wasm).hexdigest()}")


if __name__ == "__main__":
    main()
