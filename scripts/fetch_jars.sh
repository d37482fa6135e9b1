#!/usr/bin/env bash
# Fetch the JVM jars pinned in jars/pom.xml into .jars/<group>/, once per group.
#   bash scripts/fetch_jars.sh spark broker s3
# Groups: spark (delta-spark, Kafka connector), broker (the Kafka broker `tessera up`
# runs), s3 (hadoop-aws + AWS SDK bundle, ~660 MB). A group is fetched again only when
# jars/pom.xml (or, for s3, the log store's source) changed since; afterwards everything
# runs offline from .jars/. The s3 group also builds the project's S3 log store
# (jars/logstore/, one Java class) against those jars.
set -euo pipefail
cd "$(dirname "$0")/.."

POM=jars/pom.xml
JARS=.jars
pom_hash=$(sha256sum "$POM" | cut -c1-16)
logstore_hash=$(cat "$POM" jars/logstore/pom.xml jars/logstore/src/main/java/dev/tessera/delta/*.java | sha256sum | cut -c1-16)

for group in "$@"; do
  case "$group" in spark|broker|s3) ;; *) echo "fetch_jars: unknown group '$group' (spark, broker, s3)" >&2; exit 2 ;; esac
  dir="$JARS/$group"
  want=$pom_hash
  [ "$group" = s3 ] && want=$logstore_hash
  if [ "$(cat "$dir/.fetched" 2>/dev/null)" = "$want" ]; then
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
  if [ "$group" = s3 ]; then
    if ! mvn -q -B -f jars/logstore/pom.xml package >>"$JARS/$group.log" 2>&1; then
      echo "fetch_jars: the S3 log store (jars/logstore) did not build; last lines of $JARS/$group.log:" >&2
      tail -n 15 "$JARS/$group.log" >&2
      exit 1
    fi
    # Beside, not among, the class-path jars: it extends delta-storage, which Spark loads
    # from spark.jars, so it must be loaded by the same class loader (plumbing/spark.py).
    mkdir -p "$dir.tmp/delta" && cp jars/logstore/target/tessera-s3-logstore-*.jar "$dir.tmp/delta/"
  fi
  rm -rf "$dir" && mv "$dir.tmp" "$dir"
  echo "$want" > "$dir/.fetched"
  echo "setup: $group jars: $(ls "$dir" | grep -c '\.jar$') files, $(du -sh "$dir" | cut -f1), $(( $(date +%s) - start )) s"
done
