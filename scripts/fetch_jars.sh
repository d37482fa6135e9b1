#!/usr/bin/env bash
# Fetch the JVM jars pinned in jars/pom.xml into .jars/<group>/, once per group.
#   bash scripts/fetch_jars.sh spark broker s3
# Groups: spark (delta-spark, Kafka connector), broker (the Kafka broker `tessera up`
# runs), s3 (hadoop-aws + AWS SDK bundle, ~660 MB). A group is fetched again only when
# jars/pom.xml changed since; afterwards everything runs offline from .jars/.
set -euo pipefail
cd "$(dirname "$0")/.."

POM=jars/pom.xml
JARS=.jars
pom_hash=$(sha256sum "$POM" | cut -c1-16)

for group in "$@"; do
  case "$group" in spark|broker|s3) ;; *) echo "fetch_jars: unknown group '$group' (spark, broker, s3)" >&2; exit 2 ;; esac
  dir="$JARS/$group"
  if [ "$(cat "$dir/.fetched" 2>/dev/null)" = "$pom_hash" ]; then
    continue
  fi
  command -v mvn >/dev/null 2>&1 || { echo "fetch_jars: Maven (mvn) is missing; as root, make setup installs it (apt-get install maven)" >&2; exit 1; }
  echo "setup: fetching the '$group' jars from Maven Central into $dir (once)"
  start=$(date +%s)
  rm -rf "$dir.tmp" && mkdir -p "$dir.tmp"
  if ! mvn -q -B -f "$POM" -P "$group" dependency:copy-dependencies -DoutputDirectory="$PWD/$dir.tmp" >"$JARS/$group.log" 2>&1; then
    echo "fetch_jars: Maven could not fetch the '$group' jars; last lines of $JARS/$group.log:" >&2
    tail -n 15 "$JARS/$group.log" >&2
    exit 1
  fi
  rm -rf "$dir" && mv "$dir.tmp" "$dir"
  echo "$pom_hash" > "$dir/.fetched"
  echo "setup: $group jars: $(ls "$dir" | grep -c '\.jar$') files, $(du -sh "$dir" | cut -f1), $(( $(date +%s) - start )) s"
done
