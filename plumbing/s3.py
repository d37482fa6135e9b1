"""boto3 access to the profile's S3 endpoint (moto locally, S3 in production)."""
from __future__ import annotations

from plumbing.config import Config


def s3_client(cfg: Config):
    import boto3

    key, secret = cfg.s3_keys()
    return boto3.client("s3", endpoint_url=cfg.s3.endpoint_url, region_name=cfg.s3.region,
                        aws_access_key_id=key, aws_secret_access_key=secret)
