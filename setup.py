"""Tessera: a feature platform for machine learning (PySpark, Delta Lake, Feast, Redis, MLflow)."""
from setuptools import find_packages, setup

setup(
    name="tessera",
    version="0.1.0",
    description="Features computed once with PySpark, stored in Delta Lake and Redis, validated, versioned and served.",
    python_requires=">=3.10",
    packages=find_packages(include=["plumbing*", "jobs*", "transformations*", "expectations*", "serving*",
                                    "feature_repo*"]),
    package_data={"": ["*.yaml"]},
    install_requires=[
        "pyspark==4.2.0",
        "deltalake==1.6.6",
        # Its Maven artifact for Spark 4.2 exists at 4.4.0 (jars/pom.xml): wheel and jar match.
        "delta-spark==4.4.0",
        "pyarrow>=25,<26",
        "pandas==2.3.3",
        "numpy>=2.4,<2.5",
        # grpcio: `feast ui` imports Feast's registry server (feast 0.67 declares it in this extra).
        "feast[redis,duckdb,grpcio]==0.67.0",
        "great-expectations==1.24.1",
        "mlflow==3.17.2",
        "fastapi>=0.165,<0.166",
        "starlette>=1.10,<2",  # imported directly (requests, responses, routing); fastapi's pin decides the version
        "fastapi-offline==1.7.7",  # Swagger UI and ReDoc files for /docs and /redoc without a CDN (serving.docs_pages)
        "uvicorn[standard]>=0.54,<0.55",
        "redis>=7,<8",  # feast 0.67 requires redis-py < 8
        # The online store writes Feast's Redis layout itself: its key hash and value protos.
        "mmh3>=5.3,<6",
        "protobuf>=7.36,<8",
        "boto3>=1.44,<1.45",
        "confluent-kafka==2.16.1",  # live events to/from Kafka (the generator, the services' admin)
        "pydantic>=2.13",
        "pydantic-core>=2.50",  # to_json writes the API's responses (serving.dependencies)
        "pyyaml>=6",
        "tqdm>=4.66",
        # serving/scoring.py compiles the fitted model from scikit-learn internals (no public API
        # scores from its trees): capped to the minor version tests/test_scoring.py holds equal.
        "scikit-learn>=1.9,<1.10",
        "threadpoolctl>=3.8",  # BLAS threads of training and of the scorer (serving.model_registry)
        # The Delta offline store builds Feast's DuckDB queries (feast[duckdb] brings it too).
        "ibis-framework>=12,<13",
        "anyio>=4.16",  # request timeouts and worker threads in serving/
        "matplotlib>=3.10",
        "prometheus-client>=0.24,<0.25",
        "skops>=0.16,<0.17",
    ],
    extras_require={
        # The local services `tessera up` starts for a profile with an S3 endpoint of its own
        # (moto_server); a deployment against real S3 does without.
        "local": ["moto[server]==5.2.5"],
        # Tests, benchmarks, notebooks, page checks and linters (make setup installs them).
        "dev": ["pytest>=9", "pytest-timeout>=2.3", "chispa>=0.12", "duckdb>=2.0", "psutil>=7",
                "httpx>=0.28",  # FastAPI's TestClient
                "cryptography>=44",  # tests/test_redis_tls.py: a throwaway CA and server certificate
                "schemathesis==4.32.5", "hypothesis>=6.170", "nbclient>=0.11", "nbformat>=5.11", "ipykernel>=7.4",
                # Drives the OS's Chromium (jobs/screenshots.py, tests/test_pages.py); no browser download.
                "playwright==1.65.2",
                # The linters .ci/run runs (scripts/lint.sh; configuration in pyproject.toml).
                "ruff==0.17.6", "mypy==2.4.1",
                # The installer scripts/setup.sh runs: it installs this version first (with pip, from
                # requirements.lock's hashes), then the lock with it; it regenerates the lock too.
                "uv==0.13.9"],
    },
    entry_points={"console_scripts": ["tessera=jobs.cli:main"]},
)
