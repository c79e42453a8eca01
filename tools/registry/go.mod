// Wrapper module that builds go-containerregistry's in-memory OCI registry (cmd/registry: the
// distribution API, pushes and pulls, no auth), the real registry the WasmPlugin oci:// tests push
// images to and meshway pulls from. Built by scripts/build-registry.
module meshway.local/tools/registry

go 1.26.0

require github.com/google/go-containerregistry v0.22.1 // indirect
