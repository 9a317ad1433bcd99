"""The S3 emulator the object-landing, fleet and benchmark runs share: moto's server on 127.0.0.1.

The emulator is reached the way a real bucket is, through the cloud's own chain: the ``AWS_*``
variables, set in this process or handed to a child process's environment.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

SECRET = "s3cr3t-n0t-for-logs"  # the emulator's: it must never be printed


@dataclass
class S3:
    endpoint: str

    def env(self, **extra: str) -> dict[str, str]:
        """The variables that point a process (obstore, Polars' readers) at the emulator."""
        return {"AWS_ENDPOINT_URL": self.endpoint, "AWS_ACCESS_KEY_ID": "testing",
                "AWS_SECRET_ACCESS_KEY": SECRET, "AWS_REGION": "us-east-1",
                "AWS_ALLOW_HTTP": "true", **extra}

    def bucket(self, name: str) -> str:
        import boto3

        boto3.client("s3", endpoint_url=self.endpoint, aws_access_key_id="testing",
                     aws_secret_access_key=SECRET, region_name="us-east-1"
                     ).create_bucket(Bucket=name)
        return name


@contextmanager
def moto_server() -> Iterator[S3]:
    """moto's S3 server in a thread of this process, on 127.0.0.1 and a free port."""
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # a line per request otherwise
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        yield S3(f"http://{host}:{port}")
    finally:
        server.stop()


@contextmanager
def pointed_at(s3: S3) -> Iterator[None]:
    """This process's ``AWS_*`` variables set to the emulator's for the block, then restored."""
    saved = {k: os.environ.get(k) for k in s3.env()}
    os.environ.update(s3.env())
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
