"""An independent S3 client (boto3) for the compliance tests: creates buckets with
Object Lock, and reports what S3 itself says about each object, so the tests never
take flow-archiver's word for it.

    s3_lock.py ENDPOINT create-bucket BUCKET [--no-lock]
    s3_lock.py ENDPOINT inspect BUCKET PREFIX     -> one JSON object per line
    s3_lock.py ENDPOINT set-class BUCKET KEY CLASS
    s3_lock.py ENDPOINT set-hold BUCKET KEY ON|OFF
    s3_lock.py ENDPOINT put-rule BUCKET ID       (a rule of the bucket's own, on logs/)
    s3_lock.py ENDPOINT lifecycle BUCKET         -> the bucket's rules as JSON
"""
import json
import sys

import boto3


def client(endpoint):
    return boto3.client(
        "s3",
        endpoint_url=endpoint,
        region_name="us-east-1",
        aws_access_key_id="test-access",
        aws_secret_access_key="test-secret-key",
    )


def main(argv):
    endpoint, command, *args = argv
    s3 = client(endpoint)
    if command == "create-bucket":
        bucket = args[0]
        lock = "--no-lock" not in args
        s3.create_bucket(Bucket=bucket, ObjectLockEnabledForBucket=lock)
    elif command == "inspect":
        bucket, prefix = args
        for page in s3.get_paginator("list_object_versions").paginate(
            Bucket=bucket, Prefix=prefix
        ):
            for v in page.get("Versions", []):
                if not v.get("IsLatest"):
                    continue
                head = s3.head_object(Bucket=bucket, Key=v["Key"])
                until = head.get("ObjectLockRetainUntilDate")
                print(
                    json.dumps(
                        {
                            "key": v["Key"],
                            "mode": head.get("ObjectLockMode"),
                            "retain_until": until.strftime("%Y-%m-%dT%H:%M:%SZ")
                            if until
                            else None,
                            "legal_hold": head.get("ObjectLockLegalHoldStatus"),
                            "storage_class": head.get("StorageClass", "STANDARD"),
                            "versions": sum(
                                1
                                for w in page.get("Versions", [])
                                if w["Key"] == v["Key"]
                            ),
                        }
                    )
                )
    elif command == "set-class":
        bucket, key, storage_class = args
        s3.copy_object(
            Bucket=bucket,
            Key=key,
            CopySource={"Bucket": bucket, "Key": key},
            StorageClass=storage_class,
        )
    elif command == "set-hold":
        bucket, key, status = args
        s3.put_object_legal_hold(Bucket=bucket, Key=key, LegalHold={"Status": status})
    elif command == "put-rule":
        bucket, rule_id = args
        s3.put_bucket_lifecycle_configuration(
            Bucket=bucket,
            LifecycleConfiguration={
                "Rules": [
                    {
                        "ID": rule_id,
                        "Status": "Enabled",
                        "Filter": {"Prefix": "logs/"},
                        "Expiration": {"Days": 14},
                    }
                ]
            },
        )
    elif command == "lifecycle":
        (bucket,) = args
        rules = s3.get_bucket_lifecycle_configuration(Bucket=bucket)["Rules"]
        print(json.dumps(rules, default=str))
    else:
        raise SystemExit(f"unknown command {command}")


if __name__ == "__main__":
    main(sys.argv[1:])
