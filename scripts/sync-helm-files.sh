#!/usr/bin/env bash
# Copy the rule files and dashboards into the Helm chart, which can only read files inside
# itself (.Files.Get). prometheus/rules/ and grafana/dashboards/ stay the one source:
# tests/test_helm.py fails when the chart's copy differs. Run after changing either.
set -euo pipefail
cd "$(dirname "$0")/.."
chart=deploy/helm/ollama-perf-exporter/files
rm -rf "$chart/rules" "$chart/dashboards"
mkdir -p "$chart/rules" "$chart/dashboards"
cp prometheus/rules/*.yml "$chart/rules/"
cp grafana/dashboards/*.json "$chart/dashboards/"
echo "synced $(ls "$chart/rules" | wc -l) rule file(s) and $(ls "$chart/dashboards" | wc -l) dashboard(s) into $chart" >&2
