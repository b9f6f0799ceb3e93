"""A local S3-compatible server for the tests: moto's server mode on a free port, reached over HTTP
exactly as a real bucket is (AWS_ENDPOINT_URL, AWS_ALLOW_HTTP and keys in the environment).

It checks credentials (moto's IAM-backed authentication, switched on after the setup requests)
and counts the requests it answers, so tests can see each ranged GET. It can be stopped and
started again on the same port, its buckets kept (they live in this process).
"""
from __future__ import annotations

import collections
import json
import socket
import threading
from typing import Any, Callable

BUCKET = "ffcv-data"
REGION = "us-east-1"
ALL_ACTIONS = json.dumps({"Version": "2012-10-17",
                          "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]})


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class CountingApp:
    """The moto WSGI app, counting (method, path, has Range header) per request, and each ranged
    GET by (path, Range header)."""

    def __init__(self, app: Callable):
        self.app = app
        self.counts: collections.Counter = collections.Counter()
        self.ranges: collections.Counter = collections.Counter()
        self.lock = threading.Lock()

    def __call__(self, environ: dict, start_response: Callable) -> Any:
        with self.lock:
            self.counts[(environ["REQUEST_METHOD"], environ.get("PATH_INFO", ""), "HTTP_RANGE" in environ)] += 1
            if environ["REQUEST_METHOD"] == "GET" and "HTTP_RANGE" in environ:
                self.ranges[(environ.get("PATH_INFO", ""), environ["HTTP_RANGE"])] += 1
        return self.app(environ, start_response)


class S3Server:
    process_keys: dict[str, str] = {}  # the trainer user's keys, once this process has made them

    def __init__(self) -> None:
        from moto.server import DomainDispatcherApplication, create_backend_app

        self.port = free_port()
        self.app = CountingApp(DomainDispatcherApplication(create_backend_app))
        self.server: Any = None
        self.thread: threading.Thread | None = None
        self.keys: dict[str, str] = {}

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        from werkzeug.serving import make_server

        self.server = make_server("127.0.0.1", self.port, self.app, threaded=True)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join()

    def setup(self) -> None:
        """A user with every S3 right and its keys, the bucket, then authentication on for every request.
        moto's accounts, buckets and authentication switch live in the process, not in one server: a
        second server of the same pytest process (another test file's) finds them made, and reuses them."""
        import boto3
        from moto import settings
        from moto.core import authorization

        if S3Server.process_keys:
            self.keys = S3Server.process_keys
            return
        iam = boto3.client("iam", endpoint_url=self.endpoint, region_name=REGION, aws_access_key_id="setup",
                           aws_secret_access_key="setup")
        iam.create_user(UserName="trainer")
        iam.put_user_policy(UserName="trainer", PolicyName="all", PolicyDocument=ALL_ACTIONS)
        key = iam.create_access_key(UserName="trainer")["AccessKey"]
        self.keys = {"AWS_ACCESS_KEY_ID": key["AccessKeyId"], "AWS_SECRET_ACCESS_KEY": key["SecretAccessKey"]}
        self.client().create_bucket(Bucket=BUCKET)
        settings.INITIAL_NO_AUTH_ACTION_COUNT = authorization.ActionAuthenticatorMixin.request_count
        S3Server.process_keys = self.keys

    def environment(self) -> dict[str, str]:
        """What a process needs to reach this server through obstore, as a real bucket."""
        return {"AWS_ENDPOINT_URL": self.endpoint, "AWS_ALLOW_HTTP": "true", "AWS_REGION": REGION, **self.keys}

    def client(self) -> Any:
        import boto3

        return boto3.client("s3", endpoint_url=self.endpoint, region_name=REGION,
                            aws_access_key_id=self.keys["AWS_ACCESS_KEY_ID"],
                            aws_secret_access_key=self.keys["AWS_SECRET_ACCESS_KEY"])

    def ranged_gets(self, key: str) -> int:
        with self.app.lock:
            return sum(n for (method, path, ranged), n in self.app.counts.items()
                       if method == "GET" and ranged and path == f"/{BUCKET}/{key}")

    def gets_by_range(self, key: str) -> dict[str, int]:
        """Ranged GETs of ``key`` per Range header ("bytes=START-END", END inclusive)."""
        with self.app.lock:
            return {byte_range: n for (path, byte_range), n in self.app.ranges.items() if path == f"/{BUCKET}/{key}"}

    def reset_counts(self) -> None:
        with self.app.lock:
            self.app.counts.clear()
            self.app.ranges.clear()
