"""A private S3-compatible server for tests and benchmarks: moto's standalone server
(``moto[server]``, the real S3 REST API: ETags, ``If-Match`` / ``If-None-Match`` on PUT) on
127.0.0.1, a free port, one bucket; stopped (SIGTERM, then SIGKILL) on exit. Clients reach it
through the standard ``AWS_*`` variables of ``env()`` -- nothing in the repo holds a credential.

    with LocalS3() as s3:
        os.environ.update(s3.env())
        os.environ["NIGHTLY_TOPN_ROOT"] = s3.url("prefix")
"""
from __future__ import annotations

import secrets
import socket
import subprocess
import sys
import time

from tools.local_airflow import free_port
from tools.local_redis import stop_process


class LocalS3:
    def __init__(self, *, bucket: str = "nightly-topn", port: int | None = None):
        self.bucket = bucket
        self.port = port or free_port()
        # moto accepts any key pair; generated so that nothing looks like a committed secret
        self.access_key = "test" + secrets.token_hex(8)
        self.secret_key = secrets.token_urlsafe(30)
        self.proc: subprocess.Popen | None = None

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def url(self, prefix: str = "") -> str:
        """``s3://BUCKET/PREFIX`` (what ``NIGHTLY_TOPN_ROOT`` is set to)."""
        return f"s3://{self.bucket}/{prefix}".rstrip("/")

    def env(self) -> dict[str, str]:
        """The standard variables boto3, s3fs, pyarrow and Beam read to reach this server."""
        return {"AWS_ENDPOINT_URL": self.endpoint, "AWS_ACCESS_KEY_ID": self.access_key,
                "AWS_SECRET_ACCESS_KEY": self.secret_key, "AWS_DEFAULT_REGION": "us-east-1",
                "AWS_REGION": "us-east-1"}

    def client(self):
        import boto3

        return boto3.client("s3", endpoint_url=self.endpoint, aws_access_key_id=self.access_key,
                            aws_secret_access_key=self.secret_key, region_name="us-east-1")

    def start(self) -> "LocalS3":
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"moto server exited with {self.proc.returncode} at start-up "
                                   "(pip install 'moto[server]')")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                break
            except OSError:
                time.sleep(0.1)
        else:
            self.stop()
            raise RuntimeError(f"moto server did not listen on 127.0.0.1:{self.port} within 30 s")
        self.client().create_bucket(Bucket=self.bucket)
        return self

    def keys(self, prefix: str = "") -> list[str]:
        """Every object key under ``prefix`` in the bucket."""
        pages = self.client().get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=prefix)
        return [obj["Key"] for page in pages for obj in page.get("Contents", [])]

    def stop(self) -> None:
        stop_process(self.proc)

    def __enter__(self) -> "LocalS3":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def main() -> int:
    """``python -m tools.local_s3``: serve until Ctrl-C, printing the variables to export."""
    with LocalS3() as s3:
        for key, value in s3.env().items():
            print(f"export {key}={value}")
        print(f"export NIGHTLY_TOPN_ROOT={s3.url('root')}")
        try:
            s3.proc.wait()
        except KeyboardInterrupt:
            pass
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
