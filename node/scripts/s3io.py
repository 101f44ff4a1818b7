#!/usr/bin/python3
"""A real S3 client (boto3, Debian's python3-boto3) for the node's tests,
the demo and the benchmark: uploads and downloads with progress printed as
JSON lines on stdout, so the caller can act at a given fraction of the bytes
(power a node off at 30 %) and time what it asked for.

  s3io.py put FILE BUCKET KEY [--single] [--part-size BYTES] [--concurrency N]
  s3io.py get BUCKET KEY OUT [--range first-last]
  s3io.py mkbucket BUCKET

Connection: --endpoint URL, --access-key, --secret-key (or S3IO_ENDPOINT,
S3IO_ACCESS_KEY, S3IO_SECRET_KEY).

Lines printed: {"event": "progress", "bytes": n, "total": t, "t": seconds}
(at most every --every bytes), then {"event": "done", "seconds": s, ...} or
{"event": "error", "message": ...} with exit status 1.
"""

import argparse
import hashlib
import json
import os
import sys
import threading
import time

import boto3
from boto3.s3.transfer import TransferConfig
from botocore.config import Config


def emit(**fields):
    sys.stdout.write(json.dumps(fields) + "\n")
    sys.stdout.flush()


class Progress:
    """Counts bytes sent; thread-safe (boto3's transfer threads call it)."""

    def __init__(self, total, every):
        self.total, self.every = total, every
        self.sent, self.last = 0, 0
        self.lock = threading.Lock()
        self.start = time.monotonic()

    def __call__(self, n):
        with self.lock:
            self.sent += n
            if self.sent - self.last >= self.every or self.sent >= self.total:
                self.last = self.sent
                emit(event="progress", bytes=self.sent, total=self.total,
                     t=round(time.monotonic() - self.start, 3))

    def reset(self):
        with self.lock:
            self.sent, self.last = 0, 0


class CountingFile:
    """A file botocore reads for a single PUT: over plain HTTP it reads the
    body once to hash it (SigV4) and again to send it, seeking back to 0 in
    between; only the pass that sends is progress."""

    def __init__(self, path, progress):
        self.f = open(path, "rb")
        self.progress = progress

    def read(self, n=-1):
        b = self.f.read(n)
        self.progress(len(b))
        return b

    def seek(self, off, whence=0):
        if whence == 0 and off == 0:
            self.progress.reset()
        return self.f.seek(off, whence)

    def tell(self):
        return self.f.tell()

    def __len__(self):
        return os.fstat(self.f.fileno()).st_size


def client(args):
    cfg = Config(
        signature_version="s3v4",
        s3={"addressing_style": "path"},
        retries={"mode": "standard", "max_attempts": 5},
        connect_timeout=2,
        read_timeout=60,
    )
    return boto3.client(
        "s3",
        endpoint_url=args.endpoint or os.environ.get("S3IO_ENDPOINT"),
        aws_access_key_id=args.access_key or os.environ.get("S3IO_ACCESS_KEY"),
        aws_secret_access_key=args.secret_key or os.environ.get("S3IO_SECRET_KEY"),
        region_name="us-east-1",
        config=cfg,
    )


def put(args):
    s3 = client(args)
    total = os.path.getsize(args.file)
    progress = Progress(total, args.every)
    start = time.monotonic()
    if args.single:
        body = CountingFile(args.file, progress)
        r = s3.put_object(Bucket=args.bucket, Key=args.key, Body=body,
                          ContentLength=total)
        etag = r.get("ETag", "").strip('"')
    else:
        tc = TransferConfig(multipart_threshold=args.part_size,
                            multipart_chunksize=args.part_size,
                            max_concurrency=args.concurrency,
                            use_threads=args.concurrency > 1)
        s3.upload_file(args.file, args.bucket, args.key, Config=tc,
                       Callback=progress)
        etag = s3.head_object(Bucket=args.bucket, Key=args.key)["ETag"].strip('"')
    emit(event="done", seconds=round(time.monotonic() - start, 3), bytes=total,
         etag=etag)


def get(args):
    s3 = client(args)
    start = time.monotonic()
    kw = {"Bucket": args.bucket, "Key": args.key}
    if args.range:
        kw["Range"] = "bytes=" + args.range
    r = s3.get_object(**kw)
    first = None
    h = hashlib.sha256()
    n = 0
    with open(args.out, "wb") as out:
        for chunk in r["Body"].iter_chunks(1 << 20):
            if first is None:
                first = time.monotonic() - start
            h.update(chunk)
            out.write(chunk)
            n += len(chunk)
    emit(event="done", seconds=round(time.monotonic() - start, 3), bytes=n,
         first_byte=round(first or 0.0, 3), sha256=h.hexdigest())


def mkbucket(args):
    s3 = client(args)
    start = time.monotonic()
    s3.create_bucket(Bucket=args.bucket)
    emit(event="done", seconds=round(time.monotonic() - start, 3))


def main():
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--endpoint")
    p.add_argument("--access-key")
    p.add_argument("--secret-key")
    p.add_argument("--every", type=int, default=8 << 20,
                   help="bytes between progress lines")
    sub = p.add_subparsers(dest="cmd", required=True)
    a = sub.add_parser("put")
    a.add_argument("file")
    a.add_argument("bucket")
    a.add_argument("key")
    a.add_argument("--single", action="store_true",
                   help="one PutObject instead of a multipart upload")
    a.add_argument("--part-size", type=int, default=64 << 20)
    a.add_argument("--concurrency", type=int, default=4)
    a.set_defaults(fn=put)
    g = sub.add_parser("get")
    g.add_argument("bucket")
    g.add_argument("key")
    g.add_argument("out")
    g.add_argument("--range")
    g.set_defaults(fn=get)
    m = sub.add_parser("mkbucket")
    m.add_argument("bucket")
    m.set_defaults(fn=mkbucket)
    args = p.parse_args()
    try:
        args.fn(args)
    except Exception as e:  # reported to the caller, who decides
        emit(event="error", message="%s: %s" % (type(e).__name__, e))
        sys.exit(1)


if __name__ == "__main__":
    main()
