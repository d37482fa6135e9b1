"""The FastAPI app: online features and model scores over HTTP (see serving.app)."""
