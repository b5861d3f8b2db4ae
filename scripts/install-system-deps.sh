#!/usr/bin/env bash
# Debian packages the test suite and the local stack need: real servers on 127.0.0.1.
#   nginx            the HTTP mirror (Range requests) and a local PyPI index in tests
#   docker-registry  a real OCI distribution registry (Ollama-layout models)
#   prometheus       scrapes the serving gateway's /metrics in tests and the local stack
#   prometheus-pushgateway  receives pipeline, repository and graph metrics from batch jobs
#   chromium         headless browser tests of the Airflow and MLflow UIs (Playwright drives it)
#   postgresql redis-server  the production profile's shared databases and rate limits
# Installs only what is missing; never starts the packages' system services.
set -euo pipefail
packages=(nginx docker-registry prometheus prometheus-pushgateway chromium postgresql
  redis-server)
missing=()
for package in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" \
    || missing+=("$package")
done
[ ${#missing[@]} -eq 0 ] && exit 0
echo "installing system packages: ${missing[*]}"
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
# RUNLEVEL=1 keeps the packages' init scripts from starting system-wide services.
$SUDO env DEBIAN_FRONTEND=noninteractive RUNLEVEL=1 apt-get update -qq
$SUDO env DEBIAN_FRONTEND=noninteractive RUNLEVEL=1 \
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
