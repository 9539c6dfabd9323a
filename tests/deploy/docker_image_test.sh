#!/bin/sh
# Builds the ragserve image and runs a binary in it, when a Docker daemon is usable here;
# otherwise says why it skipped (exit 77 = skipped for ctest).
# Usage: docker_image_test.sh <repo root>
set -eu
ROOT="$1"
if ! command -v docker >/dev/null 2>&1; then
  echo "SKIPPED: no docker command on this machine"
  exit 77
fi
if ! err=$(docker version --format '{{.Server.Version}}' 2>&1); then
  echo "SKIPPED: no usable Docker daemon: $err"
  exit 77
fi
TAG="ragserve:test-$$"
docker build -f "$ROOT/deploy/docker/Dockerfile" -t "$TAG" "$ROOT"
trap 'docker image rm -f "$TAG" >/dev/null 2>&1 || true' EXIT
out=$(docker run --rm "$TAG" ragserve-router --help)
echo "$out" | grep -q "RAGSERVE_PORT" || { echo "FAIL: ragserve-router --help in the image: $out"; exit 1; }
uid=$(docker run --rm "$TAG" id -u)
[ "$uid" != "0" ] || { echo "FAIL: the image runs as root"; exit 1; }
echo "PASS: image builds, runs as uid $uid, ragserve-router --help works"
