#!/usr/bin/env bash
# Builds the images ouroboros-agent:TAG and ouroboros-coordinator:TAG (TAG: first argument,
# default `dev`) for this machine's architecture, with no registry access: static musl
# binaries are compiled here, staged under dist/<arch>/ and copied into `FROM scratch` by the
# Dockerfiles' first stage (`docker build --target prebuilt`). Prints both images' sizes.
#
# Needs: cargo with the musl target (`rustup target add <arch>-unknown-linux-musl`), Debian's
# musl-tools (musl-gcc: ring compiles C), Debian's ca-certificates (the coordinator's registry
# roots) and a Docker engine. As root it installs what is missing (apt-get, rustup), as
# scripts/test does; otherwise it says what is missing and exits 1.
# Environment: CARGO_TARGET_DIR is honoured; SOURCE overrides the image's source label.
set -euo pipefail
cd "$(dirname "$0")/.."

tag="${1:-dev}"
log() { printf '[build-images] %s\n' "$*"; }

case "$(uname -m)" in
  x86_64) arch=amd64; triple=x86_64-unknown-linux-musl ;;
  aarch64) arch=arm64; triple=aarch64-unknown-linux-musl ;;
  armv7l) arch=arm; triple=armv7-unknown-linux-musleabihf ;;
  *) log "unsupported machine $(uname -m)"; exit 1 ;;
esac

# --- what the build needs -----------------------------------------------------------------
need=()
command -v musl-gcc >/dev/null 2>&1 || need+=(musl-tools)
[ -f /etc/ssl/certs/ca-certificates.crt ] || need+=(ca-certificates)
if [ ${#need[@]} -gt 0 ]; then
  if [ "$(id -u)" != 0 ]; then
    log "missing: ${need[*]}; install them (apt-get install ${need[*]}) or run this as root"
    exit 1
  fi
  log "installing: ${need[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
if ! rustup target list --installed 2>/dev/null | grep -qx "$triple"; then
  log "adding the Rust target $triple"
  rustup target add "$triple" >/dev/null
fi
command -v docker >/dev/null 2>&1 || { log "missing: docker"; exit 1; }

# --- one build at a time ------------------------------------------------------------------
# Builds share dist/<arch>/ (removed and restaged below), so two at once (two terminals, or
# tests building their own tags in parallel) would copy each other's half-staged files.
mkdir -p dist
exec 9>dist/.lock
flock 9

# --- binaries -------------------------------------------------------------------------------
var="${triple//-/_}"
export "CC_${var}=musl-gcc"
started=$SECONDS
log "cargo build --release --target $triple (agent, coordinator)"
cargo build --release --locked --target "$triple" -p ouroboros-agent -p ouroboros-coordinator
target_dir="${CARGO_TARGET_DIR:-target}"
dist="dist/$arch"
rm -rf "$dist"
mkdir -p "$dist/data"
cp "$target_dir/$triple/release/ouroboros-agent" "$target_dir/$triple/release/ouroboros-coordinator" "$dist/"
cp /etc/ssl/certs/ca-certificates.crt "$dist/"
log "binaries built in $((SECONDS - started)) s"

# --- images ---------------------------------------------------------------------------------
version="$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -n1)"
source="${SOURCE:-$(git remote get-url origin 2>/dev/null || echo unknown)}"
for name in agent coordinator; do
  image="ouroboros-$name:$tag"
  log "docker build $image"
  # --no-cache: the legacy builder reuses intermediate images of earlier builds, and removing
  # an earlier image (`docker rmi`) deletes those intermediates, under a build that is using
  # them ("unable to find image sha256:…"). The stage is only COPY steps: nothing to gain.
  docker build --quiet --no-cache --target prebuilt -f "Dockerfile.$name" \
    --build-arg "TARGETARCH=$arch" --build-arg "VERSION=$version" --build-arg "SOURCE=$source" \
    -t "$image" . >/dev/null
done
for name in agent coordinator; do
  image="ouroboros-$name:$tag"
  bytes="$(docker image inspect --format '{{.Size}}' "$image")"
  log "$image: $((bytes / 1000000)) MB ($bytes bytes)"
done
