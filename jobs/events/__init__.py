"""The event generator's parts: the simulation (people and their events), their encoding
as Arrow tables and JSON lines (malformed records included), and where they are written.
The command and what the data looks like: ``jobs/generate_events.py``."""
