"""Shared by the tests that run the documented shell commands (test_docs_commands, test_docs_tutorial)."""

TINY_TRAIN = (
    "--set model.name=tiny_cnn --set model.pretrained=false --set train.strategy=scratch "
    "--set train.epochs=1 --set model.input_size=32 --quiet"
)
HEALTH = {"serve": "/health", "app": "/_stcore/health"}
PREAMBLE = """\
set -euo pipefail
trap 'kill $(jobs -p) 2>/dev/null || true' EXIT
wait_http() {
  for _ in $(seq 1 240); do curl -sf "$1" >/dev/null && return 0; sleep 0.5; done
  echo "nothing answered at $1" >&2; return 1
}
"""
