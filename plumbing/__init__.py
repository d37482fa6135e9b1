"""Shared plumbing: configuration, Spark sessions, local services, lake tables,
online store, tracking. Imported by jobs/ and serving/; imports transformations/ only."""
