"""What `feast apply` (run in this folder) registers: Feast's CLI collects the Feast
objects it finds among a module's globals, so this module puts the repository's objects
there, built for the profile named by $TESSERA_PROFILE (default: local)."""
from feature_repo import repo_objects
from plumbing.config import load_config

globals().update({f"_{type(obj).__name__}_{obj.name}": obj for obj in repo_objects(load_config())})
