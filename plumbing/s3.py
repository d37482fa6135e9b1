"""boto3 access to the profile's S3 endpoint (moto locally, S3 in production)."""
from __future__ import annotations

import os

from plumbing.config import Config


def s3_client(cfg: Config):
    import boto3

    key = os.environ.get(cfg.s3.access_key_env)
    secret = os.environ.get(cfg.s3.secret_key_env)
    if cfg.s3.endpoint_url:  # a local endpoint accepts any key
        key, secret = key or "testing", secret or "testing"
    return boto3.client("s3", endpoint_url=cfg.s3.endpoint_url, region_name=cfg.s3.region,
                        aws_access_key_id=key, aws_secret_access_key=secret)
