"""The S3 baseline: boto3's ``download_file`` (s3transfer defaults), no hashing.

Usage: ``boto3_get.py ENDPOINT_URL BUCKET KEY DEST``; path-style addressing, dummy credentials
from the environment.
"""

from __future__ import annotations

import sys

import boto3
from botocore.config import Config


def main() -> int:
    endpoint_url, bucket, key, dest = sys.argv[1:5]
    client = boto3.client(
        "s3",
        endpoint_url=endpoint_url,
        region_name="us-east-1",
        config=Config(s3={"addressing_style": "path"}),
    )
    client.download_file(bucket, key, dest)
    return 0


if __name__ == "__main__":
    sys.exit(main())
