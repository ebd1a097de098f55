"""Locust users for ``scripts/throughput.py``: authenticated list, create and upload.

Each user takes the next (key, training file) pair of ``BDS_LOAD_ACCOUNTS`` (a JSON list; one
tenant per user, so job creates never wait on another user's tenant lock) and sends the one
kind of request named by ``BDS_LOAD_SCENARIO`` (list, create or upload) back to back.
"""

from __future__ import annotations

import itertools
import json
import os
import uuid

from locust import FastHttpUser, constant, task

ACCOUNTS = json.loads(os.environ.get("BDS_LOAD_ACCOUNTS", "[]"))
SCENARIO = os.environ.get("BDS_LOAD_SCENARIO", "list")
_next_account = itertools.count()
UPLOAD = (
    "\n".join(
        json.dumps(
            {
                "messages": [
                    {"role": "user", "content": f"What is {i} plus {i}?"},
                    {"role": "assistant", "content": str(2 * i)},
                ]
            }
        )
        for i in range(20)
    )
    + "\n"
).encode()


class ApiUser(FastHttpUser):
    """One client with its own tenant and key."""

    wait_time = constant(0)

    def on_start(self) -> None:
        account = ACCOUNTS[next(_next_account) % len(ACCOUNTS)]
        self.headers = {"Authorization": f"Bearer {account['key']}"}
        self.training_file = account["file"]

    @task
    def request(self) -> None:
        if SCENARIO == "list":
            self.client.get("/v1/files?limit=20", headers=self.headers, name="list files")
        elif SCENARIO == "create":
            body = {
                "model": "tiny-random-llama",
                "training_file": self.training_file,
                "method": {"type": "supervised"},
            }
            headers = {**self.headers, "Idempotency-Key": uuid.uuid4().hex}
            self.client.post("/v1/fine_tuning/jobs", json=body, headers=headers, name="create job")
        else:
            boundary = uuid.uuid4().hex
            body = (
                (
                    f'--{boundary}\r\nContent-Disposition: form-data; name="purpose"\r\n\r\n'
                    f'fine-tune\r\n--{boundary}\r\nContent-Disposition: form-data; name="file"; '
                    f'filename="load.jsonl"\r\nContent-Type: application/jsonl\r\n\r\n'
                ).encode()
                + UPLOAD
                + f"\r\n--{boundary}--\r\n".encode()
            )
            headers = {
                **self.headers,
                "Content-Type": f"multipart/form-data; boundary={boundary}",
            }
            self.client.post("/v1/files", data=body, headers=headers, name="upload file")
