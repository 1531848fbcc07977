"""Size limits are counted while the body streams in, not taken from Content-Length.

Raw HTTP/1.1 over a socket against a real gateway (uvicorn with httptools, as `graft serve` runs
it), so the framing is exactly what the test writes: chunked bodies with no Content-Length, and
Content-Lengths that lie. Whatever the answer, nothing of a refused upload stays on disk or in SQL.

What the HTTP spec (RFC 9112 §6) makes of a lying length, and so what the gateway can answer:
- chunked, no Content-Length: the size is unknown until the end; the gateway counts what arrives
  and answers 413 once the limit is passed, while the client is still sending;
- Content-Length above the limit: 413 at once, from the header, before the body is read;
- Content-Length below the real size: the message *is* that many bytes (§6.3: the length frames
  the message); the rest is not this body but the start of a next request on the connection,
  which uvicorn refuses ("Invalid HTTP request", 400) and closes. The gateway sees a truncated
  upload and refuses it: 400, not 413 (it never sees more bytes than the limit);
- Content-Length above the real size (within the limit), then the client stops and closes: the
  gateway waits for the rest, and drops the upload when the client goes (no one to answer);
- Content-Length and Transfer-Encoding both: §6.3 says this "ought to be handled as an error"
  (request smuggling); uvicorn's parser answers 400 before the app sees it.
"""

import asyncio
import json
import time
from collections.abc import Iterable, Iterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import func, select

from adapters_store.db import make_engine
from adapters_store.models import Document, Job, JobItem
from tests.harness import client, free_port, running_gateway
from tests.service.test_corpora_api import wait_job

# Each test on SQLite and on a fresh PostgreSQL database (tests/conftest.py, `database_url`).
pytestmark = pytest.mark.databases("sqlite", "postgresql")

LIMIT = 100_000  # max_upload_bytes and max_adapter_bytes here
REQUEST_LIMIT = 20_000  # max_request_bytes: the JSON bodies of other routes
# What may be written past a limit before the 413 comes: the loopback socket's send and receive
# buffers (a few MiB with autotuning) and the server's read-ahead, never the body itself.
MARGIN = 16 * 1024 * 1024
BOUNDARY = "graft-limit-test"
MULTIPART = f"multipart/form-data; boundary={BOUNDARY}"
WAIT = 120.0  # generous: the machine may be busy
DOCUMENTS, ADAPTERS = "/v1/corpora/{name}/documents", "/v1/adapters/{name}/versions"  # route templates


def part_head(filename: str) -> bytes:
    return (f"--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"files\"; filename=\"{filename}\"\r\n"
            f"Content-Type: text/plain\r\n\r\n").encode()


def multipart(files: list[tuple[str, bytes]]) -> bytes:
    return b"".join(part_head(name) + data + b"\r\n" for name, data in files) + f"--{BOUNDARY}--\r\n".encode()


def pieces(body: bytes, size: int = 16_384) -> list[bytes]:
    return [body[i:i + size] for i in range(0, len(body), size)]


def endless(head: bytes, filler: bytes = b"Otters hold hands while they sleep. " * 1800) -> Iterator[bytes]:
    """A body that starts with `head` and never ends (it stops only when the test's wait is over):
    only a server that counts as it reads can answer at all."""
    yield head
    deadline = time.monotonic() + WAIT
    while time.monotonic() < deadline:
        yield filler


class Answer:
    def __init__(self, status: int | None, headers: dict[str, str], body: bytes):
        self.status, self.headers, self.body = status, headers, body

    def json(self) -> dict:
        return json.loads(self.body)

    def __repr__(self) -> str:
        return f"Answer({self.status}, {self.body[:300]!r})"


async def exchange(port: int, path: str, headers: dict[str, str], body: Iterable[bytes], *,
                   chunked: bool = False, then_close: bool = False) -> tuple[Answer, int]:
    """POST with the headers verbatim and the body pieces as raw or chunked data, reading the
    answer meanwhile; stop sending once it comes. Returns the first answer (status None if the
    server closed without one) and how many body bytes had been written when it came."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    head = f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
    writer.write((head + "".join(f"{k}: {v}\r\n" for k, v in headers.items()) + "\r\n").encode())
    sent = 0

    async def send() -> None:
        nonlocal sent
        try:
            for piece in body:
                writer.write(f"{len(piece):x}\r\n".encode() + piece + b"\r\n" if chunked else piece)
                await writer.drain()
                sent += len(piece)
            if chunked:
                writer.write(b"0\r\n\r\n")
            if then_close:
                writer.write_eof()
            await writer.drain()
        except OSError:
            pass  # the server answered and closed before taking the rest

    sender = asyncio.create_task(send())
    try:
        answer = await asyncio.wait_for(read_answer(reader), WAIT)
        answered_after = sent
    finally:
        sender.cancel()
        await asyncio.gather(sender, return_exceptions=True)
        writer.close()
    return answer, answered_after


async def read_answer(reader: asyncio.StreamReader) -> Answer:
    try:
        status_line = await reader.readline()
        if not status_line:
            return Answer(None, {}, b"")
        headers = {}
        while (line := await reader.readline()) not in (b"\r\n", b""):
            name, _, value = line.decode("latin-1").partition(":")
            headers[name.strip().lower()] = value.strip()
        body = await reader.readexactly(int(headers.get("content-length", "0")))
    except (ConnectionError, asyncio.IncompleteReadError):
        return Answer(None, {}, b"")
    return Answer(int(status_line.split()[1]), headers, body)


def assert_refused(answer: Answer, status: int, code: str) -> None:
    assert answer.status == status, answer
    error = answer.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["code"] == code, answer


class Gateway:
    def __init__(self, settings, http):
        self.settings, self.http = settings, http
        self.port = settings.port
        self.seen: dict[str, dict[str, int]] = {DOCUMENTS: {}, ADAPTERS: {}}  # statuses settled so far

    async def statuses(self, route: str) -> dict[str, int]:
        """What the gateway answered on `route` so far (its own metrics, counted once a request is
        done, whether or not the client was still there to read the answer)."""
        text = (await self.http.get("/metrics")).text
        return {s.labels["status"]: int(s.value) for family in text_string_to_metric_families(text)
                for s in family.samples if s.name == "graft_http_requests_total"
                and s.labels["method"] == "POST" and s.labels["route"] == route}

    async def settled(self, route: str) -> dict[str, int]:
        """Wait until the one upload sent to `route` since the last call is done; its status."""
        before = self.seen[route]
        for _ in range(int(WAIT * 10)):
            statuses = await self.statuses(route)
            if sum(statuses.values()) > sum(before.values()):
                self.seen[route] = statuses
                return {k: v - before.get(k, 0) for k, v in statuses.items() if v != before.get(k, 0)}
            await asyncio.sleep(0.1)
        raise AssertionError(f"{route}: the upload is not done after {WAIT} s: {statuses}")

    def assert_nothing_stored(self) -> None:
        db = make_engine(self.settings.resolved_database_url)
        try:
            with db.connect() as conn:
                rows = {model.__tablename__: conn.scalar(select(func.count()).select_from(model))
                        for model in (Job, JobItem, Document)}
        finally:
            db.dispose()
        assert rows == {"jobs": 0, "job_items": 0, "documents": 0}
        assert files_under(self.settings.uploads_dir) == []
        assert files_under(self.settings.adapters_dir) == []


def files_under(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if not p.is_dir()) if folder.exists() else []


@pytest.fixture
async def gateway(make_settings, fake_engine):
    settings = make_settings(engine_urls=[fake_engine.url], max_upload_bytes=LIMIT, max_adapter_bytes=LIMIT,
                             max_request_bytes=REQUEST_LIMIT)
    async with running_gateway(settings) as url:
        async with client(url) as http:
            assert (await http.post("/v1/corpora", json={"name": "docs"})).status_code == 201
            yield Gateway(settings, http)


async def test_chunked_bodies_over_the_limit_are_413_while_they_stream(gateway):
    chunked = {"Transfer-Encoding": "chunked"}
    json_text = b'{"documents": [{"id": "big", "text": "'
    cases = [  # (path, route, content type, endless body, error code)
        ("/v1/corpora/docs/documents", DOCUMENTS, MULTIPART, endless(part_head("big.txt")), "upload_too_large"),
        ("/v1/corpora/docs/documents", DOCUMENTS, "application/json", endless(json_text), "body_too_large"),
        ("/v1/adapters/tone/versions", ADAPTERS, MULTIPART, endless(part_head("adapter_model.safetensors")),
         "upload_too_large"),
        ("/v1/corpora", None, "application/json", endless(b'{"name": "x", "embedding_model": "'), "body_too_large"),
    ]
    for path, route, content_type, body, code in cases:
        answer, sent = await exchange(gateway.port, path, {"Content-Type": content_type, **chunked}, body,
                                      chunked=True)
        assert_refused(answer, 413, code)
        limit = REQUEST_LIMIT if content_type == "application/json" else LIMIT
        assert sent <= limit + MARGIN, f"{path}: answered only after {sent} bytes"
        if route is not None:
            assert await gateway.settled(route) == {"413": 1}
        gateway.assert_nothing_stored()
    assert (await gateway.http.get("/v1/corpora/x")).status_code == 404


async def test_chunked_bodies_within_the_limit_are_taken(gateway, good_lora):
    """The control: chunked bodies are not refused as such, so the 413s above are the limit's."""
    body = multipart([("otters.txt", b"Sea otters hold hands while they sleep so they do not drift apart.")])
    answer, _ = await exchange(gateway.port, "/v1/corpora/docs/documents",
                               {"Content-Type": MULTIPART, "Transfer-Encoding": "chunked"}, pieces(body, 7),
                               chunked=True)
    assert answer.status == 202, answer
    assert (await wait_job(gateway.http, answer.json()["job_id"]))["status"] == "succeeded"

    files = [(name, (good_lora / name).read_bytes()) for name in ("adapter_config.json", "adapter_model.safetensors")]
    size = sum(len(data) for _, data in files)
    settings = gateway.settings.model_copy(update={"max_adapter_bytes": size, "port": free_port()})
    async with running_gateway(settings):  # a gateway whose adapter limit is exactly this upload
        answer, _ = await exchange(settings.port, "/v1/adapters/tone/versions",
                                   {"Content-Type": MULTIPART, "Transfer-Encoding": "chunked"},
                                   pieces(multipart(files)), chunked=True)
    assert answer.status == 201 and answer.json()["version"] == 1, answer


async def test_lying_content_lengths_are_refused_and_store_nothing(gateway):
    big = multipart([("big.txt", b"Koalas sleep up to 22 hours a day. " * (3 * LIMIT // 35))])
    big_json = json.dumps({"documents": [{"text": big.decode()}]}).encode()
    small = multipart([("small.txt", b"Koalas sleep up to 22 hours a day.")])
    uploads = [("/v1/corpora/docs/documents", DOCUMENTS), ("/v1/adapters/tone/versions", ADAPTERS)]

    # Declared above the limit, the body small: refused from the header.
    for path, route in uploads:
        answer, _ = await exchange(gateway.port, path, {"Content-Type": MULTIPART,
                                                        "Content-Length": str(LIMIT + 1)}, [small])
        assert_refused(answer, 413, "upload_too_large")
        assert await gateway.settled(route) == {"413": 1}
        gateway.assert_nothing_stored()

    # Declared below the real size (and the limit), the real body over the limit: the gateway sees
    # a truncated upload (400); the bytes after it are a malformed next request (uvicorn's 400).
    for path, route, content_type, body, code in [*((p, r, MULTIPART, big, "invalid_multipart") for p, r in uploads),
                                                  (uploads[0][0], DOCUMENTS, "application/json", big_json,
                                                   "invalid_json")]:
        answer, _ = await exchange(gateway.port, path, {"Content-Type": content_type, "Content-Length": "1000"},
                                   pieces(body))
        assert answer.status == 400, answer  # the first answer on the connection, whichever it is
        assert await gateway.settled(route) == {"400": 1}  # the gateway's own, to the truncated upload
        gateway.assert_nothing_stored()
        if answer.headers.get("content-type") == "application/json":
            assert_refused(answer, 400, code)

    # Declared above the real size (within the limit), then the client stops and closes: the
    # gateway drops the upload; no answer reaches the client, and nothing is kept.
    for path, route in uploads:
        answer, _ = await exchange(gateway.port, path, {"Content-Type": MULTIPART, "Content-Length": str(LIMIT - 1)},
                                   [big[:LIMIT // 2]], then_close=True)
        assert answer.status in (None, 400), answer
        assert await gateway.settled(route) == {"400": 1}
        gateway.assert_nothing_stored()

    # Both framings at once: a smuggling attempt, refused by the HTTP parser.
    answer, _ = await exchange(gateway.port, uploads[0][0], {"Content-Type": MULTIPART, "Content-Length": "1000",
                                                             "Transfer-Encoding": "chunked"},
                               pieces(big), chunked=True)
    assert answer.status == 400, answer
    gateway.assert_nothing_stored()

    # The gateway is none the worse: a plain upload still works.
    ok = await gateway.http.post("/v1/corpora/docs/documents",
                                 files=[("files", ("ok.txt", b"Koalas sleep a lot.", "text/plain"))])
    assert ok.status_code == 202, ok.text
    assert (await wait_job(gateway.http, ok.json()["job_id"]))["status"] == "succeeded"
    assert [d["id"] for d in (await gateway.http.get("/v1/corpora/docs/documents")).json()["data"]] == ["ok.txt"]
